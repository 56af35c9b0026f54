from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from calibration.preprocessing import Placement
from calibration.sources import Sampling
from converters.compare import compare_models
from converters.convert import ConvertOptions, Precision, convert_model, write_result
from converters.evaluate import compare
from converters.graph import ConversionError
from edge_runtime.core.package import Activation, Decode, OutputSpec
from edge_runtime.core.protocol import Task
from edge_runtime.core.tasks import SegmentationHead, default_head

SEG = SegmentationHead(OutputSpec("y", ("bg", "fg"), ((0, 0, 0), (255, 0, 0))))


def test_metrics_on_known_values() -> None:
    ref = [{"y": np.array([[[[0.0, 2.0], [0.0, 2.0]], [[1.0, 0.0], [1.0, 0.0]]]], np.float32)}]  # argmax [[1,0],[1,0]]
    same = compare(ref, ref, SEG)
    assert same.metric == 1.0 and same.pixel_agreement == 1.0 and same.outputs[0].max_abs == 0
    assert math.isinf(same.outputs[0].psnr_db)
    flipped = [{"y": ref[0]["y"][:, ::-1].copy()}]
    c = compare(ref, flipped, SEG)
    assert c.per_class["fg"].dice == 0.0 and c.pixel_agreement == 0.0 and c.metric == 0.0
    assert c.outputs[0].max_abs == 2.0 and c.outputs[0].cosine < 0.5


def test_nonfinite_candidate_fails_whatever_the_task() -> None:
    ref = [{"y": np.ones((1, 3), np.float32)}]
    cand = [{"y": np.array([[1.0, np.inf, 1.0]], np.float32)}]
    c = compare(ref, cand, default_head(Task.CLASSIFICATION, "y", 3))
    assert c.outputs[0].nonfinite == 1 and c.metric == 0.0


def test_classification_top1() -> None:
    ref = [{"p": np.array([[0.1, 0.9]])}, {"p": np.array([[0.8, 0.2]])}]
    cand = [{"p": np.array([[0.2, 0.8]])}, {"p": np.array([[0.4, 0.6]])}]
    assert compare(ref, cand, default_head(Task.CLASSIFICATION, "p", 2)).top1_agreement == 0.5


def test_the_gate_thresholds_as_the_daemon_does() -> None:
    """Bug 2: the gate used to threshold one-channel outputs at logit 0 whatever the card said, so a model whose
    card sets threshold 0.9 was judged at 0.5. The gate and compare now decode with the daemon's head."""
    logits = np.array([[[[-1.0, 1.0], [1.5, 3.0]]]], np.float32)  # sigmoid: 0.27, 0.73, 0.82, 0.95
    spec = OutputSpec("y", ("bg", "fg"), ((0, 0, 0), (255, 0, 0)), Activation.SIGMOID, Decode.THRESHOLD, 0.9)
    head = SegmentationHead(spec)
    daemon_mask = head.decode({"y": logits}, Placement(2, 2, 0, 0, 2, 2), None).mask  # what the daemon sends
    assert daemon_mask is not None
    assert daemon_mask.tolist() == head.class_map(logits)[0].tolist() == [[0, 0], [0, 1]]
    shifted = logits - 1.0  # sigmoid: 0.12, 0.5, 0.62, 0.88: at 0.9 nothing is foreground any more
    c = compare([{"y": logits}], [{"y": shifted}], head)
    assert c.per_class["fg"].dice == 0.0 and c.metric == 0.0  # at logit 0 this pair would have agreed on 2 pixels


def test_compare_fp16_package_is_emulated(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = convert_model(
        tiny_models["unet_bn"],
        ConvertOptions(
            precision=Precision.FP16, data="synthetic", samples=4, search_samples=8, verify_samples=24, min_support=4
        ),
    )
    write_result(result, tmp_path / "fp16")
    mc = compare_models(tiny_models["unet_bn"], tmp_path / "fp16", "synthetic", Sampling(4))
    assert mc.emulated_fp16 and mc.task is Task.SEGMENTATION
    assert 0 < mc.comparison.outputs[0].max_abs < 0.1 and mc.comparison.metric > 0.99
    assert set(mc.comparison.per_class) == {"background", "dark", "bright"}


def test_compare_bare_onnx_files_with_random_data(tiny_models: dict[str, Path]) -> None:
    mc = compare_models(tiny_models["old_dynamic"], tiny_models["old_dynamic"], "random", Sampling(3),
                        task=Task.CLASSIFICATION, input_shape=[2, 3, 8, 8])  # fmt: skip
    assert mc.comparison.top1_agreement == 1.0 and not mc.emulated_fp16
    with pytest.raises(ConversionError, match="box layout"):
        compare_models(tiny_models["residual"], tiny_models["residual"], "random", Sampling(1), task=Task.DETECTION)


def test_a_tiny_structure_cannot_swing_the_metric_and_absent_classes_say_so() -> None:
    """Intersections and unions are summed over the evaluation set: a 2-pixel structure missed in one frame costs
    what 2 pixels cost, not half the score as a mean of per-frame Dice would. A class absent from both is marked."""
    spec = OutputSpec("y", ("bg", "fg", "other"), ((0, 0, 0), (255, 0, 0), (0, 255, 0)))
    head = SegmentationHead(spec)

    def logits(mask: np.ndarray) -> np.ndarray:
        return np.stack([mask == k for k in range(3)]).astype(np.float32)[None]

    big, tiny = np.zeros((32, 32), int), np.zeros((32, 32), int)
    big[4:28, 4:28] = 1
    tiny[0, :2] = 1
    ref = [{"y": logits(big)}, {"y": logits(tiny)}]
    cand = [{"y": logits(big)}, {"y": logits(np.zeros((32, 32), int))}]  # the tiny structure is missed
    c = compare(ref, cand, head)
    assert c.metric == pytest.approx(2 * 576 / (578 + 576))  # ~0.998; a per-frame mean would say 0.5
    other = c.per_class["other"]
    assert other.reference_pixels == other.candidate_pixels == 0 and other.dice == 1.0
    assert c.per_class["fg"].reference_pixels == 578 and c.per_class["fg"].candidate_pixels == 576


def test_a_detection_package_is_compared_by_its_worst_class_f1_against_the_reference_boxes(
    tiny_models: dict[str, Path],
) -> None:
    """Detection is judged on decoded boxes (NMS and threshold as the daemon runs them), not raw tensors: the
    metric is the worst class's F1, with mAP kept as the whole-set figure."""
    mc = compare_models(
        tiny_models["det_dense"], tiny_models["det_dense"], "synthetic:frames=4,size=64x64", Sampling(4)
    )
    c = mc.comparison
    assert mc.task is Task.DETECTION and c.metric_name == "worst-class F1@0.5 vs reference boxes"
    assert c.summary_name == "mAP@0.5 vs reference boxes" and c.summary == 1.0
    assert c.metric == 1.0 and c.f1 == 1.0 and c.reference_boxes is not None and c.verdict is not None
    assert all(v.measures["f1"] == 1.0 for v in c.verdict.classes)
