"""2:4 sparsity: the pattern, its checker on good and bad weights, OBS against magnitude, and the gate in convert."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.convert import ConvertOptions, Precision, convert_model, summary_text
from converters.evaluate import run_model
from converters.prepare import prepare
from converters.report import PruneMethod
from converters.sparsity import (
    Saliency,
    SparsityOptions,
    apply_sparse,
    check_2_4,
    eligible_layers,
    prune_2_4,
    sparse_weights,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from make_models import exported_elementwise, onnx_model  # noqa: E402

# The tiny untrained model draws fragile components: enough search and verify frames for a verdict, kept small.
SPLITS = {"search_samples": 16, "verify_samples": 32, "min_support": 4}


def _conv(w: np.ndarray, dequantized: bool = False) -> onnx.ModelProto:
    F = TensorProto.FLOAT
    c = w.shape[1]
    if dequantized:  # INT8 form: the weight reaches the conv through DequantizeLinear
        scale = np.abs(w).max(axis=(1, 2, 3)) / 127 + 1e-12
        q = np.round(w / scale[:, None, None, None]).astype(np.int8)
        inits = [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale.astype(np.float32), "ws")]
        nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="dq", axis=0),
                 helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]  # fmt: skip
    else:
        inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", F, [1, c, 8, 8])],
                              [helper.make_tensor_value_info("y", F, [1, w.shape[0], 8, 8])], inits)  # fmt: skip
    return onnx_model(graph)


def test_the_checker_accepts_the_pattern_and_names_what_breaks_it() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8, 3, 3))
    w[:, [0, 3, 5, 6]] = 0.0  # channels 1, 2 of the first group and 4, 7 of the second stay
    assert check_2_4(_conv(w), ["conv"]) == []
    assert check_2_4(_conv(w, dequantized=True), ["conv"]) == []  # as an INT8 graph stores it
    bad = w.copy()
    bad[2, 0, 1, 1] = 0.5  # a third nonzero weight in one group of one output channel at one tap
    assert check_2_4(_conv(bad), ["conv"]) == ["'conv': 1 of 72 groups of 4 have more than 2 nonzero weights"]
    odd = np.zeros((4, 6, 3, 3))
    assert "not a multiple of 4" in check_2_4(_conv(odd), ["conv"])[0]
    assert check_2_4(_conv(w), ["missing"]) == ["'missing': no such node"]


def test_magnitude_keeps_the_two_largest_of_each_group_of_four() -> None:
    w = np.array([[0.1, -3.0, 2.0, 0.2, 5.0, 4.0, -6.0, 0.0]])
    out = prune_2_4(w, None)
    assert out.tolist() == [[0.0, -3.0, 2.0, 0.0, 5.0, 0.0, -6.0, 0.0]]


def test_obs_compensates_where_inputs_are_correlated() -> None:
    """Inputs x1 = x0 + noise: when x0's weight goes, OBS moves it onto x1, so the output barely changes, while
    magnitude pruning loses it. With uncorrelated inputs of equal scale OBS picks what magnitude picks."""
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal(4000)
    x = np.stack([x0, x0 + 0.05 * rng.standard_normal(4000), rng.standard_normal(4000), rng.standard_normal(4000)], 1)
    w = np.array([[1.0, 0.2, 0.9, 0.1]])
    h = x.T @ x
    obs, mag = prune_2_4(w, h, damp=1e-6), prune_2_4(w, None)
    err = lambda v: float(np.linalg.norm(x @ (w - v).T))  # noqa: E731
    assert (obs != 0).tolist() == [[False, True, True, False]] and abs(obs[0, 1] - 1.2) < 0.05  # x0's weight moved
    assert err(obs) < 0.6 * err(mag)  # what is left is x3's small weight, which nothing else can carry
    iid = rng.standard_normal((4000, 4))
    assert (prune_2_4(w, iid.T @ iid, damp=1e-6) != 0).tolist() == (mag != 0).tolist()


def test_eligible_layers_and_the_reasons_for_the_others() -> None:
    model, _ = prepare(exported_elementwise())
    ok, skipped = eligible_layers(model)
    assert set(skipped) == {"dw", "grp"} and all("grouped" in why for why in skipped.values())
    names = [e.node for e in ok]
    feeds = [{"image": np.random.default_rng(2).standard_normal((1, 4, 16, 16)).astype(np.float32)} for _ in range(4)]
    weights = sparse_weights(model, names, feeds, SparsityOptions(Saliency.OBS))
    sparse = apply_sparse(model, weights)
    assert check_2_4(sparse, names) == [] and check_2_4(model, names)  # the original is dense
    assert run_model(sparse, feeds[:1])[0].keys() == run_model(model, feeds[:1])[0].keys()


def test_convert_applies_2_4_behind_the_gate_and_records_it(tiny_models: dict[str, Path]) -> None:
    options = ConvertOptions(prune=PruneMethod.SPARSE_2_4, data="synthetic:size=32x32", samples=8,
                             tolerance=0.5, **SPLITS)  # fmt: skip
    result = convert_model(tiny_models["unet_bn"], options)
    sp = result.report.sparsity
    assert result.passed and sp is not None and sp.applied and sp.verified and 0 < sp.fraction <= 1
    assert result.card is not None and result.card["conversion"]["sparse_2_4"]["layers"] == sp.applied
    assert result.model is not None and check_2_4(result.model, sp.applied) == []
    assert "2:4        " in summary_text(result.report) and "no speed on this CPU" in summary_text(result.report)
    strict = convert_model(tiny_models["unet_bn"], ConvertOptions(**{**options.__dict__, "tolerance": 0.0}))
    assert strict.report.sparsity is not None and strict.report.sparsity.applied == []  # nothing passes exactly
    assert all(e.loss is not None for e in strict.report.sparsity.eligible)  # each layer was measured alone


def test_channels_then_2_4_then_int8_keeps_the_pattern(tiny_models: dict[str, Path]) -> None:
    options = ConvertOptions(precision=Precision.INT8, prune=PruneMethod.CHANNELS_2_4, prune_budget=0.3,
                             data="synthetic:size=32x32", samples=8, tolerance=0.5, latency=False, **SPLITS,
                             prune_multiple=4)  # fmt: skip
    result = convert_model(tiny_models["unet_bn"], options)
    assert result.passed and result.report.prune is not None and result.report.sparsity is not None
    sp = result.report.sparsity
    assert sp.applied and sp.verified and result.model is not None
    assert any(n.op_type == "DequantizeLinear" for n in result.model.graph.node)
    assert check_2_4(result.model, sp.applied) == []  # read through the INT8 weights' DequantizeLinear
