"""What a task means: how a model's raw outputs become an answer, and how two models' answers are compared.

One head per task: `SegmentationHead`, `ClassificationHead`, `DetectionHead`. A head owns two things:

- its decoder, `decode(outputs, place, spacing_mm) -> Decoded`: the model's named outputs for one frame become
  the payload of a `Result` (mask, areas and contours; top-k classes and a saliency map; boxes), in frame pixels;
- its agreement metric, `agreement(reference, candidate) -> Agreement`: a candidate's answers against a
  reference's over a whole evaluation set, 1.0 meaning identical.

The daemon's pipeline decodes with the head, and the accuracy gate, `edgert compare` and `edgert bench` judge a
candidate with the same head, so a model is judged exactly as it runs (threshold, activation, NMS and all).
Adding a task means adding a head here and its card fields in `package.py`; `head_for` is the one place that maps
a task to its head.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from calibration.preprocessing import Placement, crop_labels, label_areas
from edge_runtime.core.contours import outer_contours
from edge_runtime.core.package import (
    Activation,
    BoxFormat,
    BoxLayout,
    CamWeights,
    ClassificationSpec,
    Decode,
    DetectionSpec,
    ModelCard,
    OutputSpec,
    TrackerSpec,
)
from edge_runtime.core.protocol import Box, ClassScore, Heatmap, Polygon, Task

Outputs = Mapping[str, np.ndarray]  # one run of a model: output name -> array (batch of 1 in the daemon)


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
        raise ValueError(f"the model has no output '{name}' (it has {sorted(outputs)})")
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

    def decode(self, outputs: Outputs, place: Placement, spacing_mm: tuple[float, float] | None) -> Decoded:
        raw = _get(outputs, self.spec.name)
        if raw.shape[:1] != (1,):
            raise ValueError(f"output '{self.spec.name}' has shape {list(raw.shape)}, expected a batch of 1")
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


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warning for large |x|
    return out


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
            raise ValueError(
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
            raise ValueError(
                f"saliency features have shape {list(features.shape)}, expected [1, {self.cam.weights.shape[1]}, h, w]"
            )
        if not np.isfinite(features).all():
            raise ValueError("saliency features have non-finite values")
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
            raise ValueError(f"output '{self.spec.name}' has a batch of {probs.shape[0]}, expected 1")
        p = probs[0]
        if not np.isfinite(p).all():
            raise ValueError(f"output '{self.spec.name}' has non-finite scores")
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


@dataclass(frozen=True)
class Detections:
    """One image's boxes in model input pixels (x1, y1, x2, y2), best score first."""

    boxes: np.ndarray  # [K, 4] float32
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K] int


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [A, 4] with every box in b [B, 4] (x1, y1, x2, y2): [A, B]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    out: np.ndarray = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Class-aware greedy non-maximum suppression; returns kept indices, best score first. Boxes of different
    classes never suppress each other: each class is shifted by more than the extent of all boxes, so one pass
    over one IoU matrix does every class at once."""
    if not len(boxes):
        return np.zeros(0, np.intp)
    order = np.argsort(-scores, kind="stable")
    span = float(np.abs(boxes).max()) + 1.0
    shifted = boxes[order] + (classes[order].astype(np.float64) * 2 * span)[:, None]
    iou = box_iou(shifted, shifted)
    suppressed = np.zeros(len(order), bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= limit:
            break
        suppressed |= iou[i] > iou_threshold
    kept: np.ndarray = order[np.asarray(keep, np.intp)]
    return kept


def _xyxy(boxes: np.ndarray, fmt: BoxFormat) -> np.ndarray:
    if fmt is BoxFormat.XYXY:
        return boxes.astype(np.float32)
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def _batch_of_one(array: np.ndarray, name: str, trailing: int) -> np.ndarray:
    """Drop a leading batch dimension of 1, leaving `trailing` dimensions."""
    while array.ndim > trailing and array.shape[0] == 1:
        array = array[0]
    if array.ndim != trailing:
        raise ValueError(f"output '{name}' has shape {list(array.shape)}: expected a batch of 1")
    return array


@dataclass(frozen=True)
class DetectionHead(_Head):
    """Boxes from the card's layout (see `BoxLayout`): dense YOLO predictions are thresholded and suppressed by
    class-aware NMS; NMS-ending models (ONNX NonMaxSuppression graphs, EfficientNMS-style outputs) are read as
    they are, truncated at their count. Decoded boxes are in frame pixels with the letterbox or stretch undone."""

    @property
    def task(self) -> Task:
        return Task.DETECTION

    @property
    def options(self) -> DetectionSpec:
        assert self.spec.detection is not None, "a detection head needs the card's detection fields"
        return self.spec.detection

    def _scores(self, raw: np.ndarray) -> np.ndarray:
        raw = raw.astype(np.float32)
        return _sigmoid(raw) if self.spec.activation is Activation.NONE else raw

    def detect(self, outputs: Outputs) -> Detections:
        """One image's boxes in model input pixels, after thresholds and NMS."""
        opt = self.options
        n_labels = len(self.spec.labels)
        if opt.layout is BoxLayout.NMS:
            boxes = _batch_of_one(np.asarray(_get(outputs, self.spec.name)), self.spec.name, 2)
            assert opt.scores is not None and opt.classes is not None
            scores = self._scores(_batch_of_one(np.asarray(_get(outputs, opt.scores)), opt.scores, 1))
            classes = _batch_of_one(np.asarray(_get(outputs, opt.classes)), opt.classes, 1)
            if boxes.shape[1] != 4 or not len(boxes) == len(scores) == len(classes):
                raise ValueError(
                    f"nms outputs disagree: boxes {list(boxes.shape)}, scores {list(scores.shape)}, "
                    f"classes {list(classes.shape)}"
                )
            if opt.count:
                count = int(np.asarray(_get(outputs, opt.count)).reshape(-1)[0])
                boxes, scores, classes = boxes[:count], scores[:count], classes[:count]
            if not np.isfinite(boxes).all() or not np.isfinite(scores).all():
                raise ValueError(f"output '{self.spec.name}' or '{opt.scores}' has non-finite values")
            classes = classes.astype(np.int64)
            keep = (scores >= opt.score_threshold) & (classes >= 0) & (classes < n_labels)
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
            order = np.argsort(-scores, kind="stable")[: opt.max_detections]
            xyxy = self._to_input_pixels(_xyxy(boxes[order], opt.box_format))
            return Detections(xyxy, scores[order].astype(np.float32), classes[order])
        if opt.layout is BoxLayout.GFL:
            class_scores, all_boxes = self._gfl(outputs)
            return self._suppress(class_scores, lambda picked: all_boxes[picked])
        raw = np.asarray(_get(outputs, self.spec.name))
        dense = _batch_of_one(raw, self.spec.name, 2)
        if opt.layout is BoxLayout.YOLO_ANCHOR_FREE:
            if dense.shape[0] != 4 + n_labels:
                raise ValueError(
                    f"output '{self.spec.name}' has shape {list(raw.shape)}, expected [1, {4 + n_labels}, N]"
                )
            dense = dense.T
            class_scores = self._scores(dense[:, 4:])
        else:
            if dense.shape[1] != 5 + n_labels:
                raise ValueError(
                    f"output '{self.spec.name}' has shape {list(raw.shape)}, expected [1, N, {5 + n_labels}]"
                )
            class_scores = self._scores(dense[:, 5:]) * self._scores(dense[:, 4:5])
        return self._suppress(
            class_scores, lambda picked: self._to_input_pixels(_xyxy(dense[picked, :4], opt.box_format))
        )

    def _suppress(self, class_scores: np.ndarray, boxes_of: Callable[[np.ndarray], np.ndarray]) -> Detections:
        """Dense candidates to detections: best class per anchor, the card's threshold and candidate cap,
        class-aware NMS. `boxes_of(anchors)` gives those anchors' boxes in input pixels (xyxy)."""
        opt = self.options
        classes = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(classes)), classes]
        candidates = np.flatnonzero(scores >= opt.score_threshold)
        if len(candidates) > opt.candidates:
            candidates = candidates[np.argsort(-scores[candidates], kind="stable")[: opt.candidates]]
        boxes = boxes_of(candidates)
        scores, classes = scores[candidates], classes[candidates]
        if not np.isfinite(boxes).all() or not np.isfinite(scores).all():
            raise ValueError(f"output '{self.spec.name}' has non-finite boxes or scores")
        real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # an empty box is nothing to show
        boxes, scores, classes = boxes[real], scores[real], classes[real]
        kept = nms(boxes, scores, classes, opt.iou_threshold, opt.max_detections)
        return Detections(boxes[kept], scores[kept].astype(np.float32), classes[kept].astype(np.int64))

    def _gfl(self, outputs: Outputs) -> tuple[np.ndarray, np.ndarray]:
        """(class scores [N, C], boxes [N, 4] xyxy in input pixels) of a GFL head: each side's distance is the
        expectation of its softmax over 0..reg_max cells, times the stride, from the anchor's centre."""
        opt = self.options
        n, bins = len(self.spec.labels), opt.reg_max + 1
        h, w = self.input_hw
        cells = [-(-h // s) * -(-w // s) for s in opt.strides]
        if opt.score_outputs:
            scores = [_batch_of_one(np.asarray(_get(outputs, k)), k, 2) for k in opt.score_outputs]
            dists = [_batch_of_one(np.asarray(_get(outputs, k)), k, 2) for k in opt.box_outputs]
        else:
            joined = _batch_of_one(np.asarray(_get(outputs, self.spec.name)), self.spec.name, 2)
            if joined.shape[1] != n + 4 * bins:
                raise ValueError(
                    f"output '{self.spec.name}' has {joined.shape[1]} values per anchor, expected {n + 4 * bins}"
                )
            parts = np.split(joined, np.cumsum(cells)[:-1]) if len(joined) == sum(cells) else [joined]
            scores, dists = [p[:, :n] for p in parts], [p[:, n:] for p in parts]
        for s, d, count, stride in zip(scores, dists, cells, opt.strides):
            if s.shape != (count, n) or d.shape != (count, 4 * bins):
                raise ValueError(
                    f"stride {stride}: scores {list(s.shape)} and boxes {list(d.shape)}, expected [{count}, {n}] and "
                    f"[{count}, {4 * bins}] for a {h}x{w} input"
                )
        centres = []
        for stride in opt.strides:
            ys, xs = np.mgrid[0 : -(-h // stride), 0 : -(-w // stride)]
            centres.append((np.stack([xs.ravel(), ys.ravel()], axis=1) + opt.cell_offset) * stride)
        centre = np.concatenate(centres).astype(np.float32)
        step = np.concatenate([np.full(c, s, np.float32) for c, s in zip(cells, opt.strides)])
        logits = np.concatenate(dists).astype(np.float32).reshape(-1, 4, bins)
        e = np.exp(logits - logits.max(axis=2, keepdims=True))
        dist = (e / e.sum(axis=2, keepdims=True)) @ np.arange(bins, dtype=np.float32) * step[:, None]
        boxes = np.concatenate([centre - dist[:, :2], centre + dist[:, 2:]], axis=1)
        class_scores = self._scores(np.concatenate(scores))
        return class_scores, boxes

    def _to_input_pixels(self, xyxy: np.ndarray) -> np.ndarray:
        if not self.options.normalized:
            return xyxy
        h, w = self.input_hw
        out: np.ndarray = xyxy * np.asarray([w, h, w, h], np.float32)
        return out

    def decode(self, outputs: Outputs, place: Placement, spacing_mm: tuple[float, float] | None) -> Decoded:
        found = self.detect(outputs)
        return Decoded(
            boxes=tuple(
                Box(*to_frame(b, place), int(c), float(np.clip(s, 0.0, 1.0)))
                for b, s, c in zip(found.boxes, found.scores, found.classes)
            )
        )

    def agreement(self, reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> Agreement:
        """mAP@0.5 (the metric) and F1 at IoU 0.5, taking the reference's boxes as ground truth: what the daemon
        would show with each model, at the card's score threshold."""
        ref = [self.detect(r) for r in reference]
        cand = [self.detect(c) for c in candidate]
        ap, f1, n_ref = average_precision(ref, cand, len(self.spec.labels))
        return Agreement("mAP@0.5 vs reference boxes", ap, f1=f1, reference_boxes=n_ref)


def to_frame(box: np.ndarray, place: Placement) -> tuple[float, float, float, float]:
    """A box in model input pixels -> frame pixels: undo the placement (letterbox offset and scale, or stretch),
    edges to edges, clipped to the frame."""
    sx, sy = place.frame_width / place.width, place.frame_height / place.height
    x1 = min(max((float(box[0]) - place.left) * sx, 0.0), float(place.frame_width))
    y1 = min(max((float(box[1]) - place.top) * sy, 0.0), float(place.frame_height))
    x2 = min(max((float(box[2]) - place.left) * sx, x1), float(place.frame_width))
    y2 = min(max((float(box[3]) - place.top) * sy, y1), float(place.frame_height))
    return x1, y1, x2, y2


def average_precision(
    reference: Sequence[Detections], candidate: Sequence[Detections], n_classes: int, iou: float = 0.5
) -> tuple[float, float, int]:
    """(mAP, F1, reference box count) of `candidate` against `reference` as ground truth, over images.

    Per class, candidate boxes are ranked by score and matched greedily to the unmatched reference box of the same
    class and image with the highest IoU (at least `iou`); AP is the area under the precision envelope (all
    points, as VOC 2010+ and COCO). Classes present in neither model are skipped; a class only the candidate
    finds scores 0. With no boxes on either side, both are 1.0."""
    aps: list[float] = []
    tp_total = fp_total = 0
    n_ref = sum(len(r.boxes) for r in reference)
    for k in range(n_classes):
        gts = [r.boxes[r.classes == k] for r in reference]
        n_gt = sum(len(g) for g in gts)
        dets = [
            (float(s), i, b)
            for i, c in enumerate(candidate)
            for b, s in zip(c.boxes[c.classes == k], c.scores[c.classes == k])
        ]
        if not n_gt and not dets:
            continue
        dets.sort(key=lambda d: -d[0])
        used = [np.zeros(len(g), bool) for g in gts]
        hits = np.zeros(len(dets), bool)
        for j, (_, i, b) in enumerate(dets):
            if not len(gts[i]):
                continue
            ious = box_iou(b[None, :], gts[i])[0]
            ious[used[i]] = -1.0
            best = int(ious.argmax())
            if ious[best] >= iou:
                used[i][best] = True
                hits[j] = True
        tp_total += int(hits.sum())
        fp_total += int((~hits).sum())
        if not n_gt:
            aps.append(0.0)
            continue
        tp = np.cumsum(hits)
        precision = tp / np.arange(1, len(hits) + 1)
        recall = tp / n_gt
        envelope = np.maximum.accumulate(np.concatenate([precision, [0.0]])[::-1])[::-1]
        steps = np.diff(np.concatenate([[0.0], recall]))
        aps.append(float((steps * envelope[:-1]).sum()))
    if not aps:
        return 1.0, 1.0, 0
    fn_total = n_ref - tp_total
    denom = 2 * tp_total + fp_total + fn_total
    return float(np.mean(aps)), (2 * tp_total / denom if denom else 1.0), n_ref


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
        raise ValueError("a detection head needs the card's box layout (output.layout)")
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
