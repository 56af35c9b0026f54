"""Preparation keeps every model's results: the prepared FP32 graph matches the original within float rounding."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from converters.evaluate import run_model
from converters.graph import ConversionError
from converters.prepare import PrepareOptions, opset_of, prepare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from make_models import exported_elementwise, onnx_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _feeds(model: onnx.ModelProto, shape: list[int], n: int = 4) -> list[dict[str, np.ndarray]]:
    name = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    rng = np.random.default_rng(0)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _assert_same(original: onnx.ModelProto, prepared: onnx.ModelProto, shape: list[int]) -> None:
    feeds = _feeds(original, shape)
    for a, b in zip(run_model(original, feeds), run_model(prepared, feeds)):
        assert a.keys() == b.keys()  # output names are kept
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name, shape, folded_bn",
    [("unet_bn/model.onnx", [1, 1, 32, 32], 3), ("residual.onnx", [1, 4, 16, 16], 2)],
)
def test_prepared_models_give_the_same_outputs(
    tiny_models: dict[str, Path], name: str, shape: list[int], folded_bn: int
) -> None:
    root = tiny_models["residual"].parent
    original = onnx.load(str(root / name))
    prepared, report = prepare(original)
    assert report.batchnorms_folded == folded_bn
    assert not [n for n in prepared.graph.node if n.op_type == "BatchNormalization"]
    _assert_same(original, prepared, shape)


def test_old_opset_dynamic_model_is_upgraded_fixed_and_folded(tiny_models: dict[str, Path]) -> None:
    original = onnx.load(str(tiny_models["old_dynamic"]))
    prepared, report = prepare(original, PrepareOptions(input_shapes={"x": [2, 3, 24, 24]}))
    assert (report.opset_before, report.opset_after, opset_of(prepared)) == (11, 17, 17)
    assert report.initializer_inputs_dropped == 9
    assert report.identities_removed == 4  # Identity, inference Dropout, and the no-op Flatten/Reshape pair
    # that the opset 11 -> 13 Softmax adaptation adds around a 2-D input
    assert report.batchnorms_folded == 1
    assert report.constants_folded >= 4  # Shape -> Gather -> Unsqueeze -> Concat became one constant
    ops = [n.op_type for n in prepared.graph.node]
    assert ops == ["Conv", "Relu", "GlobalAveragePool", "Reshape", "Gemm", "Softmax"]
    dims = [d.dim_value for d in prepared.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 24, 24] and [i.name for i in prepared.graph.input] == ["x"]
    assert [o.name for o in prepared.graph.output] == ["probs"]
    _assert_same(original, prepared, [2, 3, 24, 24])


def test_demo_model_prepares_to_the_same_outputs(demo_model: Path) -> None:
    original = onnx.load(str(demo_model / "model.onnx"))
    prepared, _ = prepare(original)
    _assert_same(original, prepared, [1, 1, 192, 256])


def test_identity_feeding_a_graph_output_keeps_the_output_name() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )  # fmt: skip
    model = onnx_model(graph)
    prepared, report = prepare(model)
    assert report.identities_removed == 1
    assert [(n.op_type, list(n.output)) for n in prepared.graph.node] == [("Relu", ["y"])]


def test_bad_requests_are_explained(tiny_models: dict[str, Path]) -> None:
    original = onnx.load(str(tiny_models["old_dynamic"]))
    with pytest.raises(ConversionError, match="graph inputs are"):
        prepare(original, PrepareOptions(input_shapes={"image": [1, 3, 8, 8]}))
    with pytest.raises(ConversionError, match="rank 4"):
        prepare(original, PrepareOptions(input_shapes={"x": [1, 3]}))
    with pytest.raises(ValueError, match="below the minimum 13"):
        PrepareOptions(target_opset=11)


def test_a_minus_one_dim_from_an_exporter_reads_as_unknown(tiny_models: dict[str, Path]) -> None:
    """Paddle2ONNX writes -1 for dynamic dims; strict shape inference would refuse the inferred 1 against it."""
    original = onnx.load(str(tiny_models["old_dynamic"]))
    x = original.graph.input[0]
    for v in (x, original.graph.output[0]):
        v.type.tensor_type.shape.dim[0].Clear()
        v.type.tensor_type.shape.dim[0].dim_value = -1
    shape = [1] + [d.dim_value or 8 for d in x.type.tensor_type.shape.dim][1:]
    prepared, _ = prepare(original, PrepareOptions(input_shapes={x.name: shape}))
    assert prepared.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_exported_hardswish_and_affine_ops_fold_into_fewer_nodes_with_the_same_outputs() -> None:
    original = exported_elementwise()
    prepared, report = prepare(original)
    assert report.hardswish_fused == 2  # both spellings; the Clip 0..5 look-alike is left alone
    ops = [n.op_type for n in prepared.graph.node]
    assert ops.count("HardSwish") == 2 and ops.count("Clip") == 1
    # folded: Mul+Add after `pw`, Mul+Add after `dw`, Mul+Sub before `grp`, Div+Mul after `grp` = 8;
    # stays: the Mul+Add before the padded depthwise conv, the Add whose input has a second reader
    assert report.affine_folded == 8
    inputs_of = {n.name: n.input[0] for n in prepared.graph.node if n.op_type == "Conv"}
    made_by = {o: n.op_type for n in prepared.graph.node for o in n.output}
    assert made_by[inputs_of["dw"]] == "Add" and made_by[inputs_of["grp"]] == "HardSwish"
    _assert_same(original, prepared, [1, 4, 16, 16])


def test_hardswish_needs_opset_14_and_the_stages_can_be_switched_off() -> None:
    _, old = prepare(exported_elementwise(opset=13), PrepareOptions(target_opset=13))
    assert old.hardswish_fused == 0 and old.affine_folded == 8
    off, report = prepare(exported_elementwise(), PrepareOptions(fuse_activations=False, fold_affine=False))
    assert (report.hardswish_fused, report.affine_folded) == (0, 0)
    assert len(off.graph.node) == len(exported_elementwise().graph.node)
