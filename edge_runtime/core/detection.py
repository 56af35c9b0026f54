"""The detection head: boxes from a detector's outputs (YOLO, anchor-free and NMS-ending layouts), NMS, box IoU,
and the agreement of two detectors (per-class F1 at an IoU, and average precision)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from calibration.preprocessing import Placement
from edge_runtime.core.heads import Agreement, Decoded, OutputError, Outputs, _get, _Head, _sigmoid
from edge_runtime.core.package import (
    Activation,
    BoxFormat,
    BoxLayout,
    DetectionSpec,
)
from edge_runtime.core.protocol import Box, Task


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
        raise OutputError(f"output '{name}' has shape {list(array.shape)}: expected a batch of 1")
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
                raise OutputError(
                    f"nms outputs disagree: boxes {list(boxes.shape)}, scores {list(scores.shape)}, "
                    f"classes {list(classes.shape)}"
                )
            if opt.count:
                count = int(np.asarray(_get(outputs, opt.count)).reshape(-1)[0])
                boxes, scores, classes = boxes[:count], scores[:count], classes[:count]
            if not np.isfinite(boxes).all() or not np.isfinite(scores).all():
                raise OutputError(f"output '{self.spec.name}' or '{opt.scores}' has non-finite values")
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
                raise OutputError(
                    f"output '{self.spec.name}' has shape {list(raw.shape)}, expected [1, {4 + n_labels}, N]"
                )
            dense = dense.T
            class_scores = self._scores(dense[:, 4:])
        else:
            if dense.shape[1] != 5 + n_labels:
                raise OutputError(
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
            raise OutputError(f"output '{self.spec.name}' has non-finite boxes or scores")
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
                raise OutputError(
                    f"output '{self.spec.name}' has {joined.shape[1]} values per anchor, expected {n + 4 * bins}"
                )
            parts = np.split(joined, np.cumsum(cells)[:-1]) if len(joined) == sum(cells) else [joined]
            scores, dists = [p[:, :n] for p in parts], [p[:, n:] for p in parts]
        for s, d, count, stride in zip(scores, dists, cells, opt.strides):
            if s.shape != (count, n) or d.shape != (count, 4 * bins):
                raise OutputError(
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
