from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from converters.evaluate import activation_ranges, run_model
from converters.fp16 import FP16_MAX, Fp16Options, convert_fp16, emulate_fp16, plan_fp16
from converters.prepare import prepare
from tests.models.make_models import onnx_model


def _prepared(path: Path) -> onnx.ModelProto:
    return prepare(onnx.load(str(path)))[0]


def test_typed_model_halves_the_size_and_keeps_fp32_io(tiny_models: dict[str, Path]) -> None:
    model = _prepared(tiny_models["unet_bn"] / "model.onnx")
    plan = plan_fp16(model, None)
    typed = convert_fp16(model, plan.fp16_nodes)
    assert {t.data_type for t in typed.graph.initializer if t.name != "scales"} == {TensorProto.FLOAT16}
    scales = next(t for t in typed.graph.initializer if t.name == "scales")
    assert scales.data_type == TensorProto.FLOAT  # Resize scales keep their type
    assert typed.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert typed.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert [i.name for i in typed.graph.input] == ["image"] and [o.name for o in typed.graph.output] == ["logits"]
    assert typed.ByteSize() < 0.6 * model.ByteSize()
    x = {"image": np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)}
    (ref,), (half,) = run_model(model, [x]), run_model(typed, [x])
    np.testing.assert_allclose(half["logits"], ref["logits"], atol=0.05)  # runs, close to FP32


def test_emulation_overflows_exactly_where_fp16_does(tiny_models: dict[str, Path]) -> None:
    model = _prepared(tiny_models["fp16_overflow"] / "model.onnx")
    naive = emulate_fp16(convert_fp16(model, [n.name for n in model.graph.node]))
    x = {"image": np.ones((1, 1, 16, 16), np.float32)}
    (out,) = run_model(naive, [x], optimize=False)
    assert not np.isfinite(out["logits"]).all()  # FP32 is finite; FP16 cannot hold the amplified activations
    (ref,) = run_model(model, [x])
    assert np.isfinite(ref["logits"]).all()


def test_ranges_keep_overflowing_nodes_and_their_readers_in_fp32(tiny_models: dict[str, Path]) -> None:
    model = _prepared(tiny_models["fp16_overflow"] / "model.onnx")
    x = [{"image": np.ones((1, 1, 16, 16), np.float32)}]
    ranges = activation_ranges(model, x)
    assert ranges["big"] > FP16_MAX
    plan = plan_fp16(model, ranges)
    assert plan.fp16_nodes == []
    assert all(reason.startswith("range: max |") for reason in plan.fp32_nodes.values())
    lenient = plan_fp16(model, {k: v / 10 for k, v in ranges.items()}, Fp16Options(range_margin=1.0))
    assert lenient.fp16_nodes  # the margin is what decides, not a hard-coded list


def test_mixed_precision_inserts_casts_and_validates(tiny_models: dict[str, Path]) -> None:
    model = _prepared(tiny_models["residual"])
    names = [n.name for n in model.graph.node]
    keep = {n.name for n in model.graph.node if n.op_type == "Add"}
    typed = convert_fp16(model, [n for n in names if n not in keep])
    casts = [n for n in typed.graph.node if n.op_type == "Cast"]
    assert len(casts) >= 3  # into the FP32 Add (both branches), back to FP16 after it, and the output
    onnx.checker.check_model(typed, full_check=True)


def test_unknown_ops_stay_fp32_with_a_reason() -> None:
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["e"], name="erf"), helper.make_node("Relu", ["e"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )  # fmt: skip
    model = onnx_model(graph)
    plan = plan_fp16(model, None)
    assert plan.fp16_nodes == ["relu"]
    assert "not in the FP16 op registry" in plan.fp32_nodes["erf"]
