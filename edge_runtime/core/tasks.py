"""What a task means: how a model's raw outputs become an answer, and how two models' answers are compared.

One head per task: `SegmentationHead`, `ClassificationHead`, `DetectionHead`. A head owns two things:

- its decoder, `decode(outputs, place, spacing_mm) -> Decoded`: the model's named outputs for one frame become
  the payload of a `Result` (mask, areas and contours; top-k classes and a saliency map; boxes), in frame pixels;
- its agreement metric, `agreement(reference, candidate) -> Agreement`: a candidate's answers against a
  reference's over a whole evaluation set, 1.0 meaning identical.

The daemon's pipeline decodes with the head, and the accuracy gate, `edgert compare` and `edgert bench` judge a
candidate with the same head, so a model is judged exactly as it runs (threshold, activation, NMS and all).
Adding a task means adding a head (here, or in its own module as `detection.py` holds the detection head, on the
base in `heads.py`) and its card fields in `package.py`; `head_for` is the one place that maps a task to its head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calibration.preprocessing import Placement, crop_labels, label_areas
from edge_runtime.core.contours import outer_contours
from edge_runtime.core.detection import DetectionHead, Detections, average_precision, box_iou, nms, to_frame
from edge_runtime.core.heads import (
    Agreement,
    ClassAgreement,
    Decoded,
    OutputError,
    Outputs,
    TaskHead,
    _get,
    _Head,
    _sigmoid,
    _softmax,
)
from edge_runtime.core.package import (
    Activation,
    CamWeights,
    ClassificationSpec,
    Decode,
    ModelCard,
    OutputSpec,
    PackageError,
    TrackerSpec,
)
from edge_runtime.core.protocol import ClassScore, Heatmap, Polygon, Task

# --- segmentation -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentationHead(_Head):
    """[N, C, H, W] scores -> [N, H, W] class ids, as the card's `output.decode` says: argmax over C classes,
    or one foreground channel compared with `threshold` (a probability after a sigmoid, else a raw score).
    Decoded: the class mask covering the frame at model resolution, per-class areas in frame pixels (exactly those
    of the mask scaled to the frame) and outer contour polygons in frame pixels."""

    min_contour_px: int = 12
    max_contours: int = 16

    @property
    def task(self) -> Task:
        return Task.SEGMENTATION

    @property
    def channels(self) -> int:
        return len(self.spec.labels) if self.spec.decode is Decode.ARGMAX else 1

    def class_map(self, raw: np.ndarray) -> np.ndarray:
        if raw.ndim != 4 or raw.shape[1] != self.channels:
            raise OutputError(
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

    def decode(self, outputs: Outputs, place: Placement, spacing_mm: tuple[float, float] | None) -> Decoded:
        raw = _get(outputs, self.spec.name)
        if raw.shape[:1] != (1,):
            raise OutputError(f"output '{self.spec.name}' has shape {list(raw.shape)}, expected a batch of 1")
        labels = self.class_map(raw)[0]
        if self.input_hw != (0, 0) and labels.shape != self.input_hw:  # stride > 1: labels to input resolution
            rows = (np.arange(self.input_hw[0]) * labels.shape[0] // self.input_hw[0])[:, None]
            cols = (np.arange(self.input_hw[1]) * labels.shape[1] // self.input_hw[1])[None, :]
            labels = labels[rows, cols]
        mask = crop_labels(labels, place)
        names = self.spec.labels
        counts = label_areas(mask, place.frame_height, place.frame_width, len(names))
        areas_px = {names[i]: int(counts[i]) for i in range(1, len(names))}
        areas_mm2 = None
        if spacing_mm is not None:
            px_mm2 = spacing_mm[0] * spacing_mm[1]
            areas_mm2 = {k: round(v * px_mm2, 3) for k, v in areas_px.items()}
        sx, sy = place.frame_width / place.width, place.frame_height / place.height
        contours: dict[str, list[Polygon]] = {}
        for cls in range(1, len(names)):
            if not counts[cls]:
                continue
            polys = outer_contours(labels == cls, min_area=self.min_contour_px, max_count=self.max_contours)
            contours[names[cls]] = [
                [
                    (
                        min(place.frame_width - 1, max(0, round((x - place.left + 0.5) * sx - 0.5))),
                        min(place.frame_height - 1, max(0, round((y - place.top + 0.5) * sy - 0.5))),
                    )
                    for x, y in poly
                ]
                for poly in polys
            ]
        return Decoded(mask=mask, areas_px=areas_px, areas_mm2=areas_mm2, contours=contours)

    def agreement(self, reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> Agreement:
        """Dice and IoU per class from intersections and unions summed over every sample (a mean of per-frame
        Dice would let a few pixels of a small structure swing the figure); the metric is the mean foreground Dice
        over classes present in the reference or the candidate. Each class reports its pixel counts, so a class absent
        from the reference shows as such rather than as a perfect score."""
        ref = np.concatenate([self.class_map(_get(r, self.output)).ravel() for r in reference])
        cand = np.concatenate([self.class_map(_get(c, self.output)).ravel() for c in candidate])
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


# --- classification -----------------------------------------------------------------------------------------------


SALIENCY_SIDE = 32  # the heatmap's longer side, in cells; the overlay upsamples it smoothly


@dataclass(frozen=True)
class ClassificationHead(_Head):
    """[N, C] (or [N, C, 1, 1]) scores -> probabilities (softmax for one label, a sigmoid per class for
    multi-label, or as the model already applied) -> the top-k classes. With `cam` (the linear head after global
    average pooling, read from the graph) and the card's feature map output, each result also carries the class
    activation map of its top class, resampled onto the frame."""

    cam: CamWeights | None = None

    @property
    def task(self) -> Task:
        return Task.CLASSIFICATION

    @property
    def options(self) -> ClassificationSpec:
        return self.spec.classification or ClassificationSpec()

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        flat = raw.reshape(raw.shape[0], -1).astype(np.float64) if raw.ndim > 1 else raw.reshape(1, -1)
        if flat.shape[1] != len(self.spec.labels):
            raise OutputError(
                f"output '{self.spec.name}' has {flat.shape[1]} scores per sample for {len(self.spec.labels)} labels"
            )
        if self.spec.activation is not Activation.NONE:
            return flat
        return _sigmoid(flat) if self.options.multi_label else _softmax(flat)

    def class_ids(self, raw: np.ndarray) -> np.ndarray:
        ids: np.ndarray = self.probabilities(raw).argmax(axis=1)
        return ids

    def saliency(self, features: np.ndarray, class_id: int, place: Placement) -> Heatmap:
        """CAM of `class_id` from features [1, C, h, w], as a heatmap over the frame (letterbox undone)."""
        assert self.cam is not None
        if features.ndim != 4 or features.shape[:2] != (1, self.cam.weights.shape[1]):
            raise OutputError(
                f"saliency features have shape {list(features.shape)}, expected [1, {self.cam.weights.shape[1]}, h, w]"
            )
        if not np.isfinite(features).all():
            raise OutputError("saliency features have non-finite values")
        _, channels, fh, fw = features.shape
        cam = (self.cam.weights[class_id] @ features[0].reshape(channels, -1).astype(np.float32)).reshape(fh, fw)
        cam = np.maximum(cam, 0.0)  # where the evidence for the class is, not against it
        peak = float(cam.max())
        cam = cam / peak if peak > 0 else cam
        scale = SALIENCY_SIDE / max(place.frame_height, place.frame_width)
        gh, gw = max(1, round(place.frame_height * scale)), max(1, round(place.frame_width * scale))
        in_h, in_w = self.input_hw
        # Cell centres in frame pixels -> model input pixels -> feature map cells (centre-aligned), bilinear.
        ys = place.top + (np.arange(gh) + 0.5) * place.frame_height / gh * (place.height / place.frame_height)
        xs = place.left + (np.arange(gw) + 0.5) * place.frame_width / gw * (place.width / place.frame_width)
        fy = np.clip(ys * fh / in_h - 0.5, 0, fh - 1)
        fx = np.clip(xs * fw / in_w - 0.5, 0, fw - 1)
        y0, x0 = np.floor(fy).astype(np.intp), np.floor(fx).astype(np.intp)
        y1, x1 = np.minimum(y0 + 1, fh - 1), np.minimum(x0 + 1, fw - 1)
        wy, wx = (fy - y0)[:, None], (fx - x0)[None, :]
        top = cam[y0][:, x0] * (1 - wx) + cam[y0][:, x1] * wx
        bottom = cam[y1][:, x0] * (1 - wx) + cam[y1][:, x1] * wx
        values = np.clip((top * (1 - wy) + bottom * wy) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Heatmap(class_id, values)

    def decode(self, outputs: Outputs, place: Placement, spacing_mm: tuple[float, float] | None) -> Decoded:
        probs = self.probabilities(_get(outputs, self.spec.name))
        if probs.shape[0] != 1:
            raise OutputError(f"output '{self.spec.name}' has a batch of {probs.shape[0]}, expected 1")
        p = probs[0]
        if not np.isfinite(p).all():
            raise OutputError(f"output '{self.spec.name}' has non-finite scores")
        order = np.argsort(-p, kind="stable")[: self.options.top_k]
        classes = tuple(ClassScore(int(k), float(np.clip(p[k], 0.0, 1.0))) for k in order)
        saliency = None
        if self.cam is not None and self.options.saliency:
            saliency = self.saliency(_get(outputs, self.options.saliency), int(order[0]), place)
        return Decoded(classes=classes, saliency=saliency)

    def agreement(self, reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> Agreement:
        """Top-1 agreement (the metric) and the mean KL divergence of the candidate's probabilities from the
        reference's (per class as Bernoulli variables for multi-label heads)."""
        ref = np.concatenate([self.probabilities(_get(r, self.output)) for r in reference])
        cand = np.concatenate([self.probabilities(_get(c, self.output)) for c in candidate])
        top1 = float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean()) if ref.size else 1.0
        eps = 1e-7
        r, c = np.clip(ref, eps, 1.0), np.clip(cand, eps, 1.0)
        if self.options.multi_label:
            r1, c1 = np.clip(1.0 - ref, eps, 1.0), np.clip(1.0 - cand, eps, 1.0)
            kl = float(np.mean((r * np.log(r / c) + r1 * np.log(r1 / c1)).sum(axis=1)))
        else:
            kl = float(np.mean((r * np.log(r / c)).sum(axis=1)))
        return Agreement("top-1 agreement", top1, top1_agreement=top1, kl_divergence=max(0.0, kl))


# --- detection ----------------------------------------------------------------------------------------------------


# --- one place that maps a task to its head -----------------------------------------------------------------------


def head_for(
    task: Task, spec: OutputSpec, input_hw: tuple[int, int] = (0, 0), cam: CamWeights | None = None
) -> TaskHead:
    """The head that decodes `spec` for `task`."""
    if task is Task.SEGMENTATION:
        return SegmentationHead(spec, input_hw)
    if task is Task.CLASSIFICATION:
        return ClassificationHead(spec, input_hw, cam=cam)
    if spec.detection is None:
        raise PackageError("a detection head needs the card's box layout (output.layout)")
    return DetectionHead(spec, input_hw)


def card_head(card: ModelCard, cam: CamWeights | None = None) -> TaskHead:
    """The head a model card describes (with the package's CAM weights for saliency)."""
    return head_for(card.task, card.output, (card.preprocess.height, card.preprocess.width), cam)


def default_head(task: Task, output: str, channels: int) -> TaskHead:
    """A head for a model without a card: classes named by index; one channel means a foreground score read as a
    logit (threshold 0.5 after a sigmoid), as most binary segmentation models are trained. Detection needs a card
    (its box layout cannot be guessed)."""
    if channels == 1 and task is Task.SEGMENTATION:
        spec = OutputSpec(output, ("0", "1"), ((0, 0, 0), (255, 0, 0)), Activation.SIGMOID, Decode.THRESHOLD, 0.5)
    else:
        n = max(2, channels)
        spec = OutputSpec(output, tuple(str(i) for i in range(n)), ((0, 0, 0),) * n)
    return head_for(task, spec)


__all__ = [
    "Agreement",
    "ClassAgreement",
    "ClassificationHead",
    "Decoded",
    "DetectionHead",
    "Detections",
    "SegmentationHead",
    "TaskHead",
    "TrackerSpec",
    "average_precision",
    "box_iou",
    "card_head",
    "default_head",
    "head_for",
    "nms",
    "to_frame",
]
