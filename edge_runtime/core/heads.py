"""What every task head shares: the `TaskHead` protocol (decode one frame, compare two models' answers), the
`Decoded` payload and the `Agreement` it is judged by, and the small numeric helpers the heads use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from calibration.errors import EdgertError
from calibration.preprocessing import Placement
from edge_runtime.core.package import (
    OutputSpec,
)
from edge_runtime.core.protocol import Box, ClassScore, Heatmap, Polygon, Task

Outputs = Mapping[str, np.ndarray]  # one run of a model: output name -> array (batch of 1 in the daemon)


class OutputError(EdgertError, ValueError):
    """A model's outputs that do not fit its card: a missing output, a wrong shape or batch, non-finite values."""


@dataclass(frozen=True)
class ClassAgreement:
    dice: float  # 1.0 when the class is absent from both
    iou: float
    reference_pixels: int  # 0: the class is absent from the reference, and its Dice says nothing
    candidate_pixels: int


@dataclass(frozen=True)
class Agreement:
    """A candidate's answers against the reference's, over every sample of an evaluation set."""

    metric_name: str
    metric: float  # 1.0 = the candidate answers exactly as the reference does
    per_class: dict[str, ClassAgreement] = field(default_factory=dict)
    pixel_agreement: float | None = None  # segmentation: share of pixels with the same class
    top1_agreement: float | None = None  # classification: share of samples with the same top class
    kl_divergence: float | None = None  # classification: mean KL(reference || candidate) of the probabilities
    f1: float | None = None  # detection: F1 at IoU 0.5 against the reference's boxes, at the card's threshold
    reference_boxes: int | None = None  # detection: boxes the reference found over the set


@dataclass(frozen=True)
class Decoded:
    """A head's answer for one frame, in frame pixels: the task's fields of a `Result`. A segmentation mask is the
    one exception: it covers the whole frame at the model's resolution (the padding cut away), and
    `calibration.preprocessing.scale_labels` maps it to frame pixels, the rule the wire protocol shares."""

    mask: np.ndarray | None = None
    areas_px: dict[str, int] = field(default_factory=dict)
    areas_mm2: dict[str, float] | None = None
    contours: dict[str, list[Polygon]] = field(default_factory=dict)
    boxes: tuple[Box, ...] = ()
    classes: tuple[ClassScore, ...] = ()
    saliency: Heatmap | None = None


class TaskHead(Protocol):
    """A task's decoder and agreement metric."""

    @property
    def task(self) -> Task: ...

    @property
    def outputs(self) -> tuple[str, ...]: ...  # the model outputs this head reads

    @property
    def default_tolerance(self) -> float: ...  # allowed shortfall of the agreement metric below 1.0 by default

    def decode(self, outputs: Outputs, place: Placement, spacing_mm: tuple[float, float] | None) -> Decoded: ...

    def agreement(self, reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> Agreement: ...


def _get(outputs: Outputs, name: str) -> np.ndarray:
    if name not in outputs:
        raise OutputError(f"the model has no output '{name}' (it has {sorted(outputs)})")
    return outputs[name]


@dataclass(frozen=True)
class _Head:
    """What every head shares: the card's output spec, the model input size, the default tolerance."""

    spec: OutputSpec
    input_hw: tuple[int, int] = (0, 0)
    default_tolerance: float = 0.01

    @property
    def output(self) -> str:
        return self.spec.name

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.spec.names


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warning for large |x|
    return out
