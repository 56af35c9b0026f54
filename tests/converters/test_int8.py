"""INT8: Q/DQ placement per target, calibration artefacts, and the accuracy gate with fallback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from calibration.cache import read_cache
from calibration.calibrators import CalibrationMethod, CalibratorOptions
from converters.convert import ConvertOptions, Precision, convert_model, summary_text, write_result
from converters.gate import SensitivityMethod
from converters.graph import ConversionError, consumers, initializers, producers
from converters.int8 import QuantTarget, calibrate, insert_qdq, quantizable_nodes
from converters.latency import profile_nodes
from converters.prepare import prepare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from make_models import silu_concat  # noqa: E402

DATA = "synthetic:clip=1,size=64x64"
# Small splits keep these tests fast; the tiny untrained models' drawn components are fragile, hence the tolerance.
SPLITS = {"search_samples": 32, "verify_samples": 64, "min_support": 4, "tolerance": 0.1}


def _quantized(path: Path, target: QuantTarget, shape: list[int]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    prepared, _ = prepare(onnx.load(str(path)))
    rng = np.random.default_rng(0)
    name = prepared.graph.input[0].name
    feeds = [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    cal = calibrate(prepared, feeds, CalibratorOptions(method=CalibrationMethod.MINMAX))
    return prepared, insert_qdq(prepared, cal.amax(), quantizable_nodes(prepared), target, cal.non_negative())


def _dq_weight_axes(model: onnx.ModelProto) -> dict[str, int]:
    """Weighted op -> axis of the DequantizeLinear feeding its weight (with INT8 per-channel values)."""
    made, inits = producers(model.graph), initializers(model.graph)
    axes = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and node.input[1] in made:
            dq = made[node.input[1]]
            assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == TensorProto.INT8
            assert numpy_helper.to_array(inits[dq.input[1]]).ndim == 1  # per-channel scales
            axes[node.op_type] = next(a.i for a in dq.attribute if a.name == "axis")
    return axes


def test_tensorrt_placement_on_a_residual_block(tiny_models: dict[str, Path]) -> None:
    prepared, q = _quantized(tiny_models["residual"], QuantTarget.TENSORRT, [1, 4, 16, 16])
    g = q.graph
    made, uses = producers(g), consumers(g)
    quantized = {n.input[0] for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in initializers(g)}
    # Activations are quantized where a weighted op (or the residual Add) reads them, never elsewhere.
    for tensor in quantized:
        dqs = [dq for q in uses[tensor] if q.op_type == "QuantizeLinear" for dq in uses[q.output[0]]]
        readers = {r.op_type for dq in dqs for r in uses[dq.output[0]]}
        assert readers and readers <= {"Conv", "Add"}, (tensor, readers)
    add = next(n for n in g.node if n.op_type == "Add")
    identity, branch = (
        (add.input[0], add.input[1])
        if made[add.input[0]].op_type == "DequantizeLinear"
        else (add.input[1], add.input[0])
    )
    assert made[identity].op_type == "DequantizeLinear"  # the skip connection is quantized ...
    assert made[branch].op_type == "Conv"  # ... the conv branch is not: TensorRT fuses conv + add
    zero_points = [initializers(g)[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear"]
    assert all(z.data_type == TensorProto.INT8 and not numpy_helper.to_array(z).any() for z in zero_points)  # symmetric
    assert _dq_weight_axes(q) == {"Conv": 0}
    assert all(n.op_type != "DequantizeLinear" or initializers(g).get(n.input[0]) is None or
               initializers(g)[n.input[0]].data_type != TensorProto.INT32 for n in g.node)  # float bias  # fmt: skip


def test_weights_of_conv_transpose_are_per_channel_on_axis_1(tiny_models: dict[str, Path]) -> None:
    _, q = _quantized(tiny_models["unet_bn"] / "model.onnx", QuantTarget.TENSORRT, [1, 1, 32, 32])
    assert _dq_weight_axes(q) == {"Conv": 0, "ConvTranspose": 1}


def test_onnxruntime_placement_uses_uint8_with_zero_point_0_after_relu(tiny_models: dict[str, Path]) -> None:
    _, q = _quantized(tiny_models["residual"], QuantTarget.ONNXRUNTIME, [1, 4, 16, 16])
    g = q.graph
    made, inits = producers(g), initializers(g)
    for node in g.node:
        if node.op_type == "QuantizeLinear":
            zp = inits[node.input[2]]
            assert zp.data_type == TensorProto.UINT8
            source = made.get(node.input[0])
            expected = 0 if source is not None and source.op_type == "Relu" else 128
            assert int(numpy_helper.to_array(zp)) == expected
    assert any(inits.get(n.input[0]) is not None and inits[n.input[0]].data_type == TensorProto.INT32
               for n in g.node if n.op_type == "DequantizeLinear")  # INT32 bias for QLinearConv  # fmt: skip


@pytest.mark.parametrize("target", list(QuantTarget))
def test_gate_keeps_the_sensitive_op_out_of_int8(tiny_models: dict[str, Path], target: QuantTarget) -> None:
    options = ConvertOptions(  # the accuracy search alone: timing would take this tiny model's layers out first
        precision=Precision.INT8, calib=DATA, samples=8, target=target, calib_method=CalibrationMethod.MINMAX,
        latency=False,
    )  # fmt: skip
    result = convert_model(tiny_models["int8_sensitive"], options)
    assert result.passed
    acc = result.report.accuracy
    assert acc.before_fallback < 0.5 and acc.metric >= 0.99
    kept = {k.node for k in result.report.int8.kept_higher_precision}
    assert "classify" in kept


def test_int8_package_with_cache_and_table(demo_model: Path, tmp_path: Path) -> None:
    options = ConvertOptions(precision=Precision.INT8, calib="synthetic:clip=1", samples=8, trt_version="8.6.1",
                             search_samples=24, verify_samples=120, min_support=5)  # fmt: skip
    result = convert_model(demo_model, options)
    assert result.passed and result.report.int8.method != "entropy" or result.report.accuracy.metric >= 0.99
    files = {f.name for f in write_result(result, tmp_path)}
    assert {"model.onnx", "model.json", "calibration.cache", "calibration.json", "prepared_fp32.onnx"} <= files
    cache = read_cache(tmp_path / "calibration.cache")
    assert cache.version == 8601
    table = json.loads((tmp_path / "calibration.json").read_text())["tensors"]
    assert set(cache.amax) == set(table)
    for name, row in table.items():
        assert cache.amax[name] == pytest.approx(row["amax"], rel=1e-6)
    prepared = onnx.load(str(tmp_path / "prepared_fp32.onnx"))
    names = {i.name for i in prepared.graph.input} | {o for n in prepared.graph.node for o in n.output}
    assert set(cache.amax) <= names  # the cache speaks the prepared graph's tensor names
    assert result.report.output.size_ratio < 0.4
    assert json.loads((tmp_path / "model.json").read_text())["conversion"]["precision"] == "int8"


def test_mixed_precision_int8_with_fp16_elsewhere(tiny_models: dict[str, Path]) -> None:
    options = ConvertOptions(precision=Precision.INT8, calib=DATA, samples=8, fallback=Precision.FP16, tolerance=0.02,
                             calib_method=CalibrationMethod.MINMAX, target=QuantTarget.TENSORRT)  # fmt: skip
    result = convert_model(tiny_models["unet_bn"], options)
    assert result.passed and result.model is not None
    assert result.report.int8.fallback_precision is Precision.FP16
    types = {t.data_type for t in result.model.graph.initializer}
    assert TensorProto.INT8 in types and TensorProto.FLOAT16 in types
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)


def test_int8_of_a_bare_onnx_needs_calibration_data(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ConversionError, match="without a model card needs --data SOURCE"):
        convert_model(tiny_models["residual"], ConvertOptions(precision=Precision.INT8))


def test_int8_of_a_package_defaults_to_diverse_synthetic_frames(tiny_models: dict[str, Path]) -> None:
    """Bug 4: the default source used to be one correlated cine clip. Calibration and evaluation now sample
    independent scenes, from different seeds, and the report says which data was used."""
    options = ConvertOptions(precision=Precision.INT8, samples=6, calib_method=CalibrationMethod.MINMAX, **SPLITS)
    result = convert_model(tiny_models["unet_bn"], options)
    assert result.passed
    calib, data, verify = result.report.calibration_data, result.report.data, result.report.verify_data
    assert calib is not None and data is not None and verify is not None
    assert "independent scenes (seed 0)" in calib.description and "independent scenes (seed 1)" in data.description
    assert "independent scenes (seed 2)" in verify.description and verify.samples == SPLITS["verify_samples"]


def test_the_search_ranks_by_sensitivity_and_keeps_only_fallbacks_that_help(tiny_models: dict[str, Path]) -> None:
    """The sensitive classifier sits at the end of the graph, after six harmless convs. With TensorRT placement
    (Q/DQ on the classifier's input) keeping it alone repairs the model: the ranking puts it first, it is the one
    fallback kept, and the search costs about one evaluation per unit."""
    options = ConvertOptions(precision=Precision.INT8, calib=DATA, samples=8, calib_method=CalibrationMethod.MINMAX,
                             target=QuantTarget.TENSORRT, **SPLITS)  # fmt: skip
    result = convert_model(tiny_models["int8_sensitive_late"], options)
    acc = result.report.accuracy
    assert result.passed and acc is not None and acc.before_fallback < acc.required <= acc.metric
    assert acc.sensitivity_method is SensitivityMethod.FALLBACK_ALONE
    assert acc.sensitivity[0].node == "classify" and acc.sensitivity[0].score > 0.3
    assert [f.node for f in result.report.fallback] == ["classify"]
    for f in result.report.fallback:  # never a fallback that does not help
        assert f.metric_before < acc.required <= f.metric_after
    units = result.report.int8.quantizable_ops
    assert units == 8 and acc.evaluations <= units + 8  # rank (8) + bisection + pruning, cached
    assert "sensitive  (fallback-alone) Conv 'classify'" in summary_text(result.report)
    ranked = result.report.to_json()["accuracy"]["sensitivity"]
    assert ranked[0]["node"] == "classify" and set(ranked[0]) == {"node", "op", "score"}


def test_when_no_single_fallback_helps_the_ranking_lowers_each_unit_alone(tiny_models: dict[str, Path]) -> None:
    """With ONNX Runtime placement the split conv's quantized output and the classifier both lose the small channel:
    keeping either alone repairs nothing, so the ranking orders units by what each breaks alone, and the two that
    matter, and only they, are kept."""
    options = ConvertOptions(precision=Precision.INT8, calib=DATA, samples=8, calib_method=CalibrationMethod.MINMAX,
                             target=QuantTarget.ONNXRUNTIME, latency=False, **SPLITS)  # fmt: skip  # the search alone
    result = convert_model(tiny_models["int8_sensitive_late"], options)
    acc = result.report.accuracy
    assert result.passed and acc is not None
    assert acc.sensitivity_method is SensitivityMethod.LOWER_ALONE
    assert {s.node for s in acc.sensitivity[:2]} == {"split_scales", "classify"}
    assert sorted(f.node for f in result.report.fallback) == ["classify", "split_scales"]
    assert acc.evaluations <= 2 * 8 + 8


def test_a_sensitive_first_layer_is_kept_and_nothing_else(tiny_models: dict[str, Path]) -> None:
    """The first conv reads an RGB input whose third channel the card scales x1000: per-tensor INT8 of that input
    rounds the channel the model uses away. Six harmless convs follow. The ranking puts the first layer on top and
    it is the only fallback."""
    options = ConvertOptions(precision=Precision.INT8, calib=DATA, samples=8, calib_method=CalibrationMethod.MINMAX,
                             latency=False, **SPLITS)  # fmt: skip
    result = convert_model(tiny_models["int8_sensitive_first"], options)
    acc = result.report.accuracy
    assert result.passed and acc is not None and acc.before_fallback < 0.5 < acc.required <= acc.metric
    assert acc.sensitivity[0].node == "first"
    assert [f.node for f in result.report.fallback] == ["first"]
    assert result.report.int8 is not None and result.report.int8.int8_ops == 7


def test_a_classification_package_is_judged_by_its_worst_class_and_top1(tiny_models: dict[str, Path]) -> None:
    options = ConvertOptions(precision=Precision.INT8, calib=DATA, samples=8, latency=False, **SPLITS)
    result = convert_model(tiny_models["cls_tiny"], options)
    assert result.passed and result.report.accuracy is not None and result.report.verify is not None
    verdict = result.report.verify.comparison.verdict
    assert verdict is not None and result.report.accuracy.metric_name.startswith("worst-class recall agreement")
    names = [c.name for c in verdict.classes]
    assert names[-1] == "top-1 (every frame)" and verdict.metric == min(c.metric for c in verdict.classes if c.judged)


def test_onnxruntime_int8_regions_pass_through_ops_with_integer_kernels() -> None:
    model = silu_concat()
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.standard_normal((1, 1, 16, 16)).astype(np.float32)} for _ in range(4)]
    cal = calibrate(model, feeds, CalibratorOptions(method=CalibrationMethod.MINMAX))
    int8 = insert_qdq(model, cal.amax(), quantizable_nodes(model), QuantTarget.ONNXRUNTIME, cal.non_negative())
    optimized, _ = profile_nodes(int8, feeds, runs=1)
    ops = [n.op_type for n in optimized.graph.node]
    # SiLU and the Concat run as ORT integer kernels; the Reshapes run on the integers (same scale: Q/DQ dropped)
    assert {"QLinearSigmoid", "QLinearMul", "QLinearConcat"} <= set(ops)
    assert "Sigmoid" not in ops and ops.count("QLinearConv") == 4 and "Reshape" in ops
    assert ops.count("QuantizeLinear") == 1  # the input only: no float round trip inside the network
    # a Mul by a constant has no integer kernel: its input is dequantized once and it runs in float
    assert ops.count("Mul") == 1 and ops.count("DequantizeLinear") == 1
    # the Concat's inputs share its output's quantization, so QLinearConcat copies bytes
    made, inits = producers(int8.graph), initializers(int8.graph)
    scales = {t: float(numpy_helper.to_array(inits[made[made[t].input[0]].input[1]]))
              for t in ("a_dequantized", "b_dequantized", "cat_dequantized")}  # fmt: skip
    assert len(set(scales.values())) == 1
