"""Task heads against hand-built outputs with known answers, for every layout."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from calibration.preprocessing import Placement
from edge_runtime.core.package import (
    Activation,
    BoxFormat,
    BoxLayout,
    ClassificationSpec,
    DetectionSpec,
    OutputSpec,
    load_package,
)
from edge_runtime.core.protocol import Box, ClassScore, Task
from edge_runtime.core.tasks import (
    ClassificationHead,
    DetectionHead,
    Detections,
    average_precision,
    box_iou,
    card_head,
    nms,
    to_frame,
)

IDENTITY = Placement(64, 64, 0, 0, 64, 64)  # a 64x64 frame stretched onto a 64x64 input


def _det_head(layout: BoxLayout, labels: tuple[str, ...] = ("polyp", "tool"), **kw: object) -> DetectionHead:
    fmt = BoxFormat.XYXY if layout is BoxLayout.NMS else BoxFormat.CXCYWH
    names = {"scores": "scores", "classes": "classes"} if layout is BoxLayout.NMS else {}
    activation = Activation(str(kw.pop("activation"))) if "activation" in kw else Activation.SIGMOID
    spec = DetectionSpec(layout, fmt, **{**names, **kw})  # type: ignore[arg-type]
    colors = ((255, 0, 0),) * len(labels)
    return DetectionHead(OutputSpec("out", labels, colors, activation, detection=spec), (64, 64))


def _boxes(decoded: tuple[Box, ...]) -> list[tuple[float, float, float, float, int, float]]:
    return [(b.x1, b.y1, b.x2, b.y2, b.class_id, round(b.score, 4)) for b in decoded]


def test_yolo_with_objectness_multiplies_scores_and_suppresses_within_a_class_only() -> None:
    # rows: cx, cy, w, h, objectness, p(polyp), p(tool)
    rows = np.array(
        [
            [20, 20, 20, 20, 0.9, 0.9, 0.1],  # polyp 0.81
            [21, 21, 20, 20, 0.9, 0.8, 0.1],  # polyp 0.72, IoU 0.82 with the first: suppressed
            [21, 21, 20, 20, 0.9, 0.1, 0.7],  # tool 0.63 on the same place: another class, kept
            [50, 50, 10, 10, 0.2, 0.9, 0.0],  # polyp 0.18: under the 0.25 threshold
        ],
        np.float32,
    )
    head = _det_head(BoxLayout.YOLO)
    out = head.decode({"out": rows[None]}, IDENTITY, None)
    assert _boxes(out.boxes) == [(10.0, 10.0, 30.0, 30.0, 0, 0.81), (11.0, 11.0, 31.0, 31.0, 1, 0.63)]


def test_anchor_free_layout_is_channels_first_and_logits_go_through_a_sigmoid() -> None:
    preds = np.zeros((1, 6, 3), np.float32)  # [1, 4 + C, N]
    preds[0, :4, 0] = [32, 16, 8, 4]
    preds[0, 4:, 0] = [3.0, -3.0]  # logits: polyp 0.953
    preds[0, :4, 1] = [10, 10, 4, 4]
    preds[0, 4:, 1] = [-5.0, -5.0]  # column 2 stays all zero: score 0.5, but an empty box, so nothing
    head = _det_head(BoxLayout.YOLO_ANCHOR_FREE, activation="none")
    out = head.decode({"out": preds}, IDENTITY, None)
    assert _boxes(out.boxes) == [(28.0, 14.0, 36.0, 18.0, 0, 0.9526)]
    with pytest.raises(ValueError, match=r"expected \[1, 6, N\]"):
        head.decode({"out": preds[:, :5]}, IDENTITY, None)


def test_nms_ending_outputs_are_cut_at_their_count_and_normalized_boxes_scaled() -> None:
    """EfficientNMS-style: fixed-size arrays padded after `count`, boxes in 0..1 of the input."""
    boxes = np.array([[[0.5, 0.25, 0.75, 0.5], [0.0, 0.0, 0.25, 0.25], [0.1, 0.1, 0.2, 0.2]]], np.float32)
    scores = np.array([[0.9, 0.3, 0.99]], np.float32)  # the third is padding past the count
    classes = np.array([[1, 0, 0]], np.int32)
    head = _det_head(BoxLayout.NMS, normalized=True, count="count")
    out = head.decode({"out": boxes, "scores": scores, "classes": classes, "count": np.array([[2]])}, IDENTITY, None)
    assert _boxes(out.boxes) == [(32.0, 16.0, 48.0, 32.0, 1, 0.9), (0.0, 0.0, 16.0, 16.0, 0, 0.3)]


def test_nms_matches_a_brute_force_reference_on_random_boxes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        xy = rng.uniform(0, 100, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], axis=1)
        scores = rng.uniform(0, 1, n)
        classes = rng.integers(0, 3, n)
        kept = nms(boxes, scores, classes, 0.45, 100)
        expected: list[int] = []  # the textbook loop: best first, drop what overlaps a kept box of its class
        for i in sorted(range(n), key=lambda i: -scores[i]):
            if all(classes[j] != classes[i] or box_iou(boxes[[i]], boxes[[j]])[0, 0] <= 0.45 for j in expected):
                expected.append(i)
        assert kept.tolist() == expected


def test_letterbox_is_undone_exactly() -> None:
    """A 480x640 frame letterboxed into 64x64: scale 0.1, 8 rows of padding on top. A box drawn on the input
    round the frame's top-left 100x50 block must come back as exactly that block."""
    place = Placement(frame_height=480, frame_width=640, top=8, left=0, height=48, width=64)
    assert to_frame(np.array([0.0, 8.0, 10.0, 13.0]), place) == (0.0, 0.0, 100.0, 50.0)
    assert to_frame(np.array([-5.0, 0.0, 70.0, 60.0]), place) == (0.0, 0.0, 640.0, 480.0)  # clipped to the frame


def test_map_and_f1_against_reference_boxes() -> None:
    a, b = [0, 0, 10, 10], [20, 20, 30, 30]

    def det(boxes: list[list[int]], scores: list[float], classes: list[int] | None = None) -> Detections:
        return Detections(
            np.array(boxes, np.float32).reshape(-1, 4), np.array(scores), np.array(classes or [0] * len(boxes))
        )

    ref = [det([a, b], [0.9, 0.8])]
    assert average_precision(ref, ref, 1) == (1.0, 1.0, 2)
    half = average_precision(ref, [det([a], [0.9])], 1)  # one of two found: AP 0.5, F1 2/3
    assert half[0] == pytest.approx(0.5) and half[1] == pytest.approx(2 / 3)
    extra = average_precision(ref, [det([a, b, [50, 50, 60, 60]], [0.9, 0.8, 0.3])], 1)
    assert extra[0] == pytest.approx(1.0) and extra[1] == pytest.approx(0.8)  # ranked last: AP keeps, F1 pays
    shifted = average_precision(ref, [det([[5, 5, 15, 15], b], [0.9, 0.8])], 1)  # IoU 0.14 < 0.5: a miss and an FP
    assert shifted[0] == pytest.approx(0.25)  # the FP ranks first: precision 1/2 at recall 1/2
    wrong_class = average_precision(ref, [det([a, b], [0.9, 0.8], [1, 1])], 2)
    assert wrong_class[0] == 0.0 and wrong_class[1] == 0.0
    assert average_precision([det([], [])], [det([], [])], 1) == (1.0, 1.0, 0)


def _cls_head(activation: Activation, multi_label: bool = False, top_k: int = 2) -> ClassificationHead:
    spec = OutputSpec("p", ("a", "b", "c"), ((0, 0, 0),) * 3, activation,
                      classification=ClassificationSpec(multi_label, top_k))  # fmt: skip
    return ClassificationHead(spec, (8, 8))


def test_classification_softmax_sigmoid_and_top_k() -> None:
    logits = np.array([[1.0, 3.0, 2.0]], np.float32)
    soft = _cls_head(Activation.NONE).decode({"p": logits}, IDENTITY, None)
    e = np.exp([1.0, 3.0, 2.0])
    assert [c.class_id for c in soft.classes] == [1, 2]
    assert soft.classes[0].score == pytest.approx(e[1] / e.sum())
    multi = _cls_head(Activation.NONE, multi_label=True, top_k=3).decode({"p": logits}, IDENTITY, None)
    assert [round(c.score, 4) for c in multi.classes] == [0.9526, 0.8808, 0.7311]  # independent sigmoids
    probs = _cls_head(Activation.SOFTMAX).decode({"p": np.array([[0.2, 0.5, 0.3]])}, IDENTITY, None)
    assert probs.classes == (ClassScore(1, 0.5), ClassScore(2, 0.3))
    assert probs.saliency is None


def test_classification_agreement_reports_kl_divergence() -> None:
    head = _cls_head(Activation.SOFTMAX)
    ref = [{"p": np.array([[0.5, 0.25, 0.25]])}]
    same = head.agreement(ref, ref)
    assert same.metric == 1.0 and same.kl_divergence == pytest.approx(0.0)
    other = head.agreement(ref, [{"p": np.array([[0.25, 0.5, 0.25]])}])
    assert other.top1_agreement == 0.0
    assert other.kl_divergence == pytest.approx(0.5 * np.log(2) + 0.25 * np.log(0.5))


def test_cam_saliency_shows_where_the_class_evidence_is_with_the_letterbox_undone(tiny_models: dict[str, Path]) -> None:
    """cls_cam's "bright" feature map is the image itself. A frame twice as wide as high, bright on its left
    half, letterboxed into 16x16 (rows 4..11): the heatmap covers the frame only and is hot on the left."""
    pkg = load_package(tiny_models["cls_cam"])
    assert pkg.cam is not None and pkg.cam.weights.shape == (2, 2)
    head = card_head(pkg.card, pkg.cam)
    assert isinstance(head, ClassificationHead)
    feat = np.zeros((1, 2, 16, 16), np.float32)
    feat[0, 0, 4:12, :8] = 1.0  # "bright" evidence: the left half of the letterboxed frame
    feat[0, 1, :4] = feat[0, 1, 12:] = 1.0  # "dark" evidence in the padding only
    place = Placement(frame_height=100, frame_width=200, top=4, left=0, height=8, width=16)
    decoded = head.decode({"logits": np.array([[2.0, 0.0]], np.float32), "feat": feat}, place, None)
    heat = decoded.saliency
    assert heat is not None and heat.class_id == 0 and (heat.height, heat.width) == (16, 32)
    assert heat.values[1:-1, :14].min() == 255 and heat.values[:, :14].min() > 128  # edge rows blend with the pad
    assert heat.values[:, 18:].max() == 0


def test_every_task_has_a_head_and_detection_needs_its_layout() -> None:
    spec = OutputSpec("y", ("a", "b"), ((0, 0, 0),) * 2)
    from edge_runtime.core.tasks import head_for

    assert {head_for(t, spec).task for t in (Task.SEGMENTATION, Task.CLASSIFICATION)} == {
        Task.SEGMENTATION,
        Task.CLASSIFICATION,
    }
    with pytest.raises(ValueError, match="box layout"):
        head_for(Task.DETECTION, spec)


@pytest.mark.parametrize("name", ["det_dense", "det_nms"])
def test_detection_models_decode_the_same_boxes_in_both_layouts(tiny_models: dict[str, Path], name: str) -> None:
    """The dense model and the one ending in ONNX NonMaxSuppression give the same boxes, in frame pixels."""
    from edge_runtime.core.protocol import Frame, PixelFormat
    from edge_runtime.inference.pipeline import InferencePipeline

    frame = np.zeros((64, 96), np.uint8)  # stretched onto 32x32: x scale 3, y scale 2
    frame[16:32, 48:72] = 255  # cell (1, 2)
    with InferencePipeline(load_package(tiny_models[name])) as pipe:
        result = pipe.run(Frame(0, 0, 0, 0, PixelFormat.GRAY8, frame), 0)
    assert result.error is None
    assert [(b.x1, b.y1, b.x2, b.y2, b.class_id) for b in result.boxes] == [(48.0, 16.0, 72.0, 32.0, 0)]
    assert result.boxes[0].score == pytest.approx(1.0, abs=0.07)  # the resize blurs the cell's edge a little


def test_iou_of_disjoint_and_identical_boxes() -> None:
    b = np.array([[0, 0, 10, 10], [10, 10, 20, 20]], np.float32)
    iou = box_iou(b, b)
    assert iou.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert list(itertools.chain.from_iterable(box_iou(b, np.zeros((0, 4))).tolist())) == []


def test_non_finite_boxes_are_an_error_for_the_frame_in_every_layout() -> None:
    """A NaN box must become an ERROR result, never a box on the display (nor a JSON encoder failure)."""
    nan_boxes = np.array([[[np.nan, 0.0, 10.0, 10.0]]], np.float32)
    nms_head = _det_head(BoxLayout.NMS)
    with pytest.raises(ValueError, match="non-finite"):
        nms_head.decode({"out": nan_boxes, "scores": np.array([[0.9]]), "classes": np.array([[0]])}, IDENTITY, None)
    dense = np.array([[[np.nan, 20, 20, 20, 0.9, 0.9, 0.1]]], np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        _det_head(BoxLayout.YOLO).decode({"out": dense}, IDENTITY, None)
