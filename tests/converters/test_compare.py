from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from converters.compare import compare_models
from converters.convert import ConvertOptions, Precision, convert_model, write_result
from converters.evaluate import compare
from converters.graph import ConversionError


def test_metrics_on_known_values() -> None:
    ref = [{"y": np.array([[[[0.0, 2.0], [0.0, 2.0]], [[1.0, 0.0], [1.0, 0.0]]]], np.float32)}]  # argmax [[1,0],[1,0]]
    same = compare(ref, ref, "segmentation", labels=("bg", "fg"))
    assert same.metric == 1.0 and same.argmax_agreement == 1.0 and same.outputs[0].max_abs == 0
    assert math.isinf(same.outputs[0].psnr_db)
    flipped = [{"y": ref[0]["y"][:, ::-1].copy()}]
    c = compare(ref, flipped, "segmentation", labels=("bg", "fg"))
    assert c.per_class["fg"].dice == 0.0 and c.argmax_agreement == 0.0 and c.metric == 0.0
    assert c.outputs[0].max_abs == 2.0 and c.outputs[0].cosine < 0.5


def test_nonfinite_candidate_fails_whatever_the_task() -> None:
    ref = [{"y": np.ones((1, 3), np.float32)}]
    cand = [{"y": np.array([[1.0, np.inf, 1.0]], np.float32)}]
    c = compare(ref, cand, "classification")
    assert c.outputs[0].nonfinite == 1 and c.metric == 0.0


def test_classification_top1() -> None:
    ref = [{"p": np.array([[0.1, 0.9]])}, {"p": np.array([[0.8, 0.2]])}]
    cand = [{"p": np.array([[0.2, 0.8]])}, {"p": np.array([[0.4, 0.6]])}]
    assert compare(ref, cand, "classification").top1_agreement == 0.5


def test_compare_fp16_package_is_emulated(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = convert_model(
        tiny_models["unet_bn"], ConvertOptions(precision=Precision.FP16, data="synthetic:clip=1", samples=4)
    )
    write_result(result, tmp_path / "fp16")
    mc = compare_models(tiny_models["unet_bn"], tmp_path / "fp16", "synthetic:clip=1", samples=4)
    assert mc.emulated_fp16 and mc.task == "segmentation"
    assert 0 < mc.comparison.outputs[0].max_abs < 0.1 and mc.comparison.metric > 0.99
    assert set(mc.comparison.per_class) == {"background", "dark", "bright"}


def test_compare_bare_onnx_files_with_random_data(tiny_models: dict[str, Path]) -> None:
    mc = compare_models(tiny_models["old_dynamic"], tiny_models["old_dynamic"], "random", samples=3, task="classification",
                        input_shape=[2, 3, 8, 8])  # fmt: skip
    assert mc.comparison.top1_agreement == 1.0 and not mc.emulated_fp16
    with pytest.raises(ConversionError, match="unknown task"):
        compare_models(tiny_models["residual"], tiny_models["residual"], "random", samples=1, task="detection")
