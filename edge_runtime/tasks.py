"""What a task means: how a model's raw output becomes an answer, and how two models' answers are compared.

One head per task. The daemon's pipeline decodes with it, and the accuracy gate and `edgert compare` judge a
candidate with the same head, so a model is judged exactly as it will run (threshold, activation and all). A head
owns two things: its decoder (raw output -> class ids) and its agreement metric (candidate answers vs reference
answers, aggregated over the whole evaluation set, 1.0 meaning identical).

Adding a task means adding a head here and its card fields in `package.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edge_runtime.package import Activation, Decode, OutputSpec
from edge_runtime.protocol import Task


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


class TaskHead(Protocol):
    """A task's decoder and agreement metric for one model output."""

    @property
    def task(self) -> Task: ...

    @property
    def output(self) -> str: ...  # the model output this head reads

    @property
    def default_tolerance(self) -> float: ...  # allowed shortfall of the agreement metric below 1.0 by default

    def agreement(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> Agreement: ...


@dataclass(frozen=True)
class _Head:
    """What every head shares: the card's output it decodes, and the default tolerance of its metric."""

    spec: OutputSpec
    default_tolerance: float = 0.01

    @property
    def output(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class SegmentationHead(_Head):
    """[N, C, H, W] scores -> [N, H, W] class ids, as the card's `output.decode` says: argmax over C classes,
    or one foreground channel compared with `threshold` (a probability after a sigmoid, else a raw score)."""

    @property
    def task(self) -> Task:
        return Task.SEGMENTATION

    @property
    def channels(self) -> int:
        return len(self.spec.labels) if self.spec.decode is Decode.ARGMAX else 1

    def class_map(self, raw: np.ndarray) -> np.ndarray:
        if raw.ndim != 4 or raw.shape[1] != self.channels:
            raise ValueError(
                f"output '{self.spec.name}' has shape {list(raw.shape)}, expected [N, {self.channels}, H, W]"
            )
        if self.spec.decode is Decode.ARGMAX:  # softmax and sigmoid are monotonic: argmax of the scores is the same
            labels: np.ndarray = raw.argmax(axis=1).astype(np.uint8)
            return labels
        threshold = self.spec.threshold
        if self.spec.activation is Activation.SIGMOID:
            threshold = float(np.log(threshold / (1.0 - threshold)))  # compare logits, skip the exp
        mask: np.ndarray = (raw[:, 0] > threshold).astype(np.uint8)
        return mask

    def agreement(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> Agreement:
        """Dice and IoU per class from intersections and unions summed over every sample (a mean of per-frame
        Dice would let a few pixels of a small structure swing the figure); the metric is the mean foreground Dice
        over classes present in the reference or the candidate. Each class reports its pixel counts, so a class absent
        from the reference shows as such rather than as a perfect score."""
        ref = np.concatenate([self.class_map(r).ravel() for r in reference])
        cand = np.concatenate([self.class_map(c).ravel() for c in candidate])
        per_class: dict[str, ClassAgreement] = {}
        dice_fg: list[float] = []
        for k, name in enumerate(self.spec.labels):
            p, t = cand == k, ref == k
            inter, total, union = int((p & t).sum()), int(p.sum() + t.sum()), int((p | t).sum())
            per_class[name] = ClassAgreement(
                2 * inter / total if total else 1.0, inter / union if union else 1.0, int(t.sum()), int(p.sum())
            )
            if k and total:
                dice_fg.append(2 * inter / total)
        pixels = float((ref == cand).mean()) if ref.size else 1.0
        metric = float(np.mean(dice_fg)) if dice_fg else pixels
        return Agreement("mean foreground Dice vs reference", metric, per_class, pixel_agreement=pixels)


@dataclass(frozen=True)
class ClassificationHead(_Head):
    """[N, C] (or [N, C, 1, 1]) scores -> one class id per sample; agreement is top-1 agreement."""

    @property
    def task(self) -> Task:
        return Task.CLASSIFICATION

    def class_ids(self, raw: np.ndarray) -> np.ndarray:
        flat = raw.reshape(raw.shape[0], -1) if raw.ndim > 1 else raw.reshape(1, -1)
        ids: np.ndarray = flat.argmax(axis=1)
        return ids

    def agreement(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> Agreement:
        ref = np.concatenate([self.class_ids(r) for r in reference])
        cand = np.concatenate([self.class_ids(c) for c in candidate])
        top1 = float((ref == cand).mean()) if ref.size else 1.0
        return Agreement("top-1 agreement", top1, top1_agreement=top1)


DECODED_TASKS = frozenset({Task.SEGMENTATION, Task.CLASSIFICATION})  # detection's decoder is not written yet


def head_for(task: Task, spec: OutputSpec) -> TaskHead:
    """The head that decodes `spec` for `task`."""
    if task is Task.SEGMENTATION:
        return SegmentationHead(spec)
    if task is Task.CLASSIFICATION:
        return ClassificationHead(spec)
    raise ValueError(f"no decoder for {task.label} models yet")


def default_head(task: Task, output: str, channels: int) -> TaskHead:
    """A head for a model without a card: classes named by index; one channel means a foreground score read as a
    logit (threshold 0.5 after a sigmoid), as most binary segmentation models are trained."""
    if channels == 1 and task is Task.SEGMENTATION:
        spec = OutputSpec(output, ("0", "1"), ((0, 0, 0), (255, 0, 0)), Activation.SIGMOID, Decode.THRESHOLD, 0.5)
    else:
        n = max(2, channels)
        spec = OutputSpec(output, tuple(str(i) for i in range(n)), ((0, 0, 0),) * n)
    return head_for(task, spec)
