"""The FP16 accuracy gate: naive FP16 really breaks these models; the converter finds out and repairs it, or fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from converters.convert import ConvertOptions, Precision, convert_model, write_result
from converters.graph import ConversionError
from edge_runtime.core.package import load_package

DATA = "synthetic:clip=1,size=64x64"


def _fp16(**kw: object) -> ConvertOptions:
    return ConvertOptions(precision=Precision.FP16, data=DATA, samples=12, **kw)  # type: ignore[arg-type]


def test_naive_fp16_breaks_the_overflow_model(tiny_models: dict[str, Path]) -> None:
    result = convert_model(tiny_models["fp16_overflow"], _fp16(use_ranges=False, gate=False))
    assert result.passed  # nothing checked it...
    naive = convert_model(tiny_models["fp16_overflow"], _fp16(use_ranges=False, max_fallback=0))
    assert not naive.passed  # ...and the gate says how bad it is
    assert naive.report.accuracy.metric < 0.5
    assert naive.model is None


def test_ranges_catch_overflow_before_the_gate_has_to(tiny_models: dict[str, Path]) -> None:
    result = convert_model(tiny_models["fp16_overflow"], _fp16())
    assert result.passed and result.report.accuracy.before_fallback >= 0.99
    reasons = {n.node: n.reason for n in result.report.fp16.fp32_nodes}
    assert set(reasons) == {"amplify", "relu_big", "attenuate"}
    assert all("exceeds" in r for r in reasons.values())
    assert result.report.fallback == []


def test_gate_repairs_overflow_when_ranges_are_off(tiny_models: dict[str, Path]) -> None:
    result = convert_model(tiny_models["fp16_overflow"], _fp16(use_ranges=False))
    assert result.passed
    acc = result.report.accuracy
    assert acc.before_fallback < 0.5 <= 0.99 <= acc.metric
    assert {f.node for f in result.report.fallback} == {"amplify", "relu_big", "attenuate"}


def test_gate_finds_precision_loss_that_ranges_cannot_see(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = convert_model(tiny_models["fp16_cancellation"], _fp16())
    assert result.passed
    assert result.report.accuracy.before_fallback < 0.9  # (x + 1000) - 1000 in FP16 loses x's fraction
    blamed = {f.node: f for f in result.report.fallback}
    assert set(blamed) == {"add_offset", "sub_offset"}
    assert result.report.accuracy.metric >= 0.99
    files = write_result(result, tmp_path / "out")
    assert {f.name for f in files} == {"model.onnx", "model.json", "report.json", "summary.txt"}
    pkg = load_package(tmp_path / "out")
    assert pkg.card.onnx_sha256 == pkg.sha256
    assert json.loads((tmp_path / "out" / "model.json").read_text())["conversion"]["precision"] == "fp16"
    assert "add_offset" in (tmp_path / "out" / "summary.txt").read_text()


def test_gate_failure_names_the_nodes_and_writes_no_model(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = convert_model(tiny_models["fp16_cancellation"], _fp16(max_fallback=1))
    assert not result.passed and result.model is None
    failure = result.report.failure
    assert "FP16 accuracy gate failed" in failure and "after keeping 1 node(s) in higher precision" in failure
    assert "->" in failure  # by how much
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    files = write_result(result, out)
    assert {f.name for f in files} == {"report.json", "summary.txt"}
    assert not (out / "model.onnx").exists()  # no older model left beside a failed report


def test_demo_model_fp16_halves_and_keeps_its_segmentation(demo_model: Path) -> None:
    options = ConvertOptions(precision=Precision.FP16, data="synthetic:clip=1", samples=8, search_samples=16,
                             verify_samples=48, min_support=5)  # fmt: skip
    result = convert_model(demo_model, options)
    assert result.passed
    assert result.report.output.size_ratio < 0.55
    assert result.report.accuracy.metric >= 0.99


def test_fp32_conversion_of_a_bare_onnx_with_random_data(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = convert_model(
        tiny_models["old_dynamic"], ConvertOptions(data="random", samples=4, input_shape=[1, 3, 16, 16])
    )
    assert result.passed and result.card is None
    assert result.report.prepare_check.metric > 0.99999
    assert result.report.data.representative is False
    assert {f.name for f in write_result(result, tmp_path)} == {"model.onnx", "report.json", "summary.txt"}


def test_clear_errors(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="without a model card needs --data"):
        convert_model(tiny_models["residual"], ConvertOptions(precision=Precision.FP16))
    with pytest.raises(ConversionError, match="need a model card"):
        convert_model(tiny_models["residual"], ConvertOptions(precision=Precision.FP16, data="synthetic"))
    with pytest.raises(ConversionError, match="static input shapes"):
        convert_model(tiny_models["old_dynamic"], ConvertOptions(data="random"))
    with pytest.raises(ConversionError, match="no such ONNX file"):
        convert_model(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ConversionError, match="not an ONNX model"):
        convert_model(tmp_path / "junk.onnx")


def test_a_converted_package_carries_its_identity(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from converters.convert import derived_version

    assert derived_version("1.0.0", ("int8",)) == "1.0.0+int8"
    assert derived_version("1.0.0+pruned", ("fp16",)) == "1.0.0+pruned.fp16"  # converted again: tags add up
    result = convert_model(tiny_models["fp16_cancellation"], _fp16())
    write_result(result, tmp_path / "out")
    original = load_package(tiny_models["fp16_cancellation"]).card
    card = load_package(tmp_path / "out").card
    assert card.version == f"{original.version}+fp16" and card.precision == "fp16"
    assert card.conversion is not None and card.conversion.gate.startswith("passed: ")
    assert str(result.report.verify.comparison.samples) in card.conversion.gate  # the verify split's own frames
    assert card.metrics == {}  # the original's figures are never shown as this artifact's own
