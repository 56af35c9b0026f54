"""Typed results per task, for display code: `typed(result)` gives the one view that fits the result's task, with
class ids already resolved to the names and colors the result itself carries (never another model's legend).

    match typed(result):
        case DetectionResult(detections=found): ...
        case ClassificationResult(top=top, saliency=heat): ...
        case SegmentationResult(mask=mask): ...
        case FailedResult(error=why): ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.core.protocol import Heatmap, Polygon, Result, ResultStatus, Task

Color = tuple[int, int, int]


@dataclass(frozen=True)
class Detection:
    label: str
    color: Color
    x1: float  # frame pixels, box edges
    y1: float
    x2: float
    y2: float
    score: float
    track_id: int  # 0: untracked


@dataclass(frozen=True)
class ClassProbability:
    label: str
    color: Color
    probability: float


@dataclass(frozen=True)
class SegmentationResult:
    result: Result
    mask: np.ndarray  # class ids at frame resolution
    areas_px: dict[str, int]
    areas_mm2: dict[str, float] | None
    contours: dict[str, list[Polygon]]


@dataclass(frozen=True)
class DetectionResult:
    result: Result
    detections: tuple[Detection, ...]  # best score first


@dataclass(frozen=True)
class ClassificationResult:
    result: Result
    top: tuple[ClassProbability, ...]  # best first
    saliency: Heatmap | None  # the class activation map of top[0], over the whole frame

    @property
    def saliency_label(self) -> str | None:
        return self.result.label(self.saliency.class_id) if self.saliency is not None else None


@dataclass(frozen=True)
class FailedResult:
    result: Result
    error: str


TaskResult = SegmentationResult | DetectionResult | ClassificationResult | FailedResult


def typed(result: Result) -> TaskResult:
    """The typed view of a result for its task."""
    if result.status is not ResultStatus.OK:
        return FailedResult(result, result.error or "inference failed")
    if result.task is Task.DETECTION:
        return DetectionResult(
            result,
            tuple(
                Detection(
                    result.label(b.class_id), result.colors[b.class_id], b.x1, b.y1, b.x2, b.y2, b.score, b.track_id
                )  # fmt: skip
                for b in result.boxes
            ),
        )
    if result.task is Task.CLASSIFICATION:
        top = tuple(
            ClassProbability(result.label(c.class_id), result.colors[c.class_id], c.score) for c in result.classes
        )
        return ClassificationResult(result, top, result.saliency)
    mask = result.frame_mask()
    if mask is None:
        return FailedResult(result, "a segmentation result without a mask")
    return SegmentationResult(
        result, mask, dict(result.areas_px), dict(result.areas_mm2) if result.areas_mm2 else None,
        dict(result.contours),
    )  # fmt: skip
