"""Channel pruning: dependency groups keep graphs valid, nothing pruned is bit-identical, repair is least squares."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.convert import ConvertOptions, Precision, convert_model, summary_text
from converters.evaluate import run_model
from converters.prepare import prepare
from converters.prune import Budget, PruneOptions, channel_groups, conv_flops, plan_pruning, prune_channels
from converters.report import PruneMethod

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from make_models import exported_elementwise, residual, silu_concat, unet_bn  # noqa: E402


def _feeds(model: onnx.ModelProto, n: int = 8) -> list[dict[str, np.ndarray]]:
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    return [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _error(a: onnx.ModelProto, b: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> float:
    return max(float(np.abs(x[k] - y[k]).max()) for x, y in zip(run_model(a, feeds), run_model(b, feeds)) for k in x)


# residual Add, Concat + ConvTranspose + Resize + MaxPool, SiLU + Concat, depthwise + per-channel constants
MODELS = {"residual": residual, "unet_bn": unet_bn, "silu_concat": silu_concat, "elementwise": exported_elementwise}


@pytest.mark.parametrize("name", list(MODELS))
def test_pruning_keeps_the_graph_valid_and_nothing_pruned_is_bit_identical(name: str) -> None:
    model, _ = prepare(MODELS[name]())
    feeds = _feeds(model)
    same, report = prune_channels(model, feeds, PruneOptions(ratio=0.0, channel_multiple=1))
    assert _error(model, same, feeds) == 0.0 and report.flops_after == report.flops_before
    pruned, report = prune_channels(
        model, feeds, PruneOptions(ratio=0.3, budget=Budget.FLOPS, channel_multiple=1)
    )  # checked, shapes inferred
    assert report.groups_removed > 0 and report.flops_after < 0.8 * report.flops_before
    assert report.params_after < report.params_before and report.layers
    assert conv_flops(pruned) == (report.flops_after, report.params_after)
    outputs = run_model(pruned, feeds[:1])[0]
    assert {k: v.shape for k, v in outputs.items()} == {k: v.shape for k, v in run_model(model, feeds[:1])[0].items()}


def test_repair_recovers_a_channel_that_the_others_explain() -> None:
    """conv1 writes x0, x1 and x0 + x1; whichever one goes, least squares on the other two gives it back exactly,
    while bias correction alone cannot."""
    F = TensorProto.FLOAT
    w1 = np.array([[1, 0], [0, 1], [1, 1]], np.float32).reshape(3, 2, 1, 1)
    w2 = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], np.float32).reshape(2, 3, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], name="produce"),
         helper.make_node("Conv", ["h", "w2"], ["y"], name="consume")],  # fmt: skip
        "ls", [helper.make_tensor_value_info("x", F, [1, 2, 8, 8])], [helper.make_tensor_value_info("y", F, [1, 2, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = _feeds(model)
    repaired, report = prune_channels(
        model, feeds, PruneOptions(ratio=0.1, budget=Budget.FLOPS, ridge=1e-9, channel_multiple=1)
    )
    assert report.groups_removed == 1 and report.repaired == ["consume"]
    assert [(c.node, c.before, c.after) for c in report.layers] == [("produce", 3, 2)]
    assert _error(model, repaired, feeds) < 1e-3
    plain, _ = prune_channels(
        model, feeds, PruneOptions(ratio=0.1, budget=Budget.FLOPS, repair=False, channel_multiple=1)
    )
    assert _error(model, plain, feeds) > 0.1


def test_what_cannot_be_pruned_is_reported() -> None:
    model, _ = prepare(exported_elementwise())
    groups, blocked = channel_groups(model)
    assert groups and any("graph inputs" in b for b in blocked) and any("graph outputs" in b for b in blocked)
    assert any("grouped Conv 'grp'" in b for b in blocked)
    members = {t for g in groups for t, _ in g.members}
    assert "image" not in members and "logits" not in members


def test_convert_prunes_behind_the_gate_and_records_it(tiny_models: dict[str, Path]) -> None:
    options = ConvertOptions(prune=PruneMethod.CHANNELS, prune_budget=0.3, data="synthetic:frames=8,size=32x32",
                             samples=8, tolerance=0.5, prune_multiple=1, prune_by=Budget.FLOPS)  # fmt: skip
    result = convert_model(tiny_models["unet_bn"], options)
    pr = result.report.prune
    assert result.passed and pr is not None and pr.attempts and pr.attempts[0].ratio == 0.3
    assert pr.used == 0.3 and pr.details is not None and pr.details.flops_ratio < 0.8
    assert result.card is not None and result.card["conversion"]["pruned"]["method"] == "channels"
    assert "prune      channels" in summary_text(result.report)
    strict = convert_model(tiny_models["unet_bn"], ConvertOptions(**{**options.__dict__, "tolerance": 0.0}))
    assert strict.report.prune is not None and strict.report.prune.used == 0.0  # every ratio fails a perfect gate
    ratios = [a.ratio for a in strict.report.prune.attempts]  # backing off by 0.1, skipping repeated selections
    assert ratios[0] == 0.3 and ratios[-1] == 0.1 and ratios == sorted(set(ratios), reverse=True)
    with pytest.raises(ValueError, match="prune-budget"):
        ConvertOptions(prune=PruneMethod.CHANNELS, prune_budget=1.5)


def test_int8_runs_on_the_pruned_graph(tiny_models: dict[str, Path]) -> None:
    options = ConvertOptions(precision=Precision.INT8, prune=PruneMethod.CHANNELS, prune_budget=0.3,
                             data="synthetic:frames=8,size=32x32", samples=8, tolerance=0.5, latency=False,
                             prune_multiple=1, prune_by=Budget.FLOPS)  # fmt: skip
    result = convert_model(tiny_models["unet_bn"], options)
    assert result.passed and result.report.int8 is not None and result.report.prune is not None
    assert result.report.prune.used > 0 and result.model is not None
    pruned_weights = [i for i in result.model.graph.initializer if "_pruned_" in i.name or "_refit_" in i.name]
    assert pruned_weights  # the INT8 model was built on the pruned graph


def test_kept_channel_counts_are_multiples_of_the_block_or_unchanged() -> None:
    """CPU convolutions run in blocks of channels: 44 of 48 channels cost what 48 do. With a multiple of 8, every
    pruned tensor keeps 8, 16, 24... channels (or all of them)."""
    model, _ = prepare(silu_concat())  # 16- and 32-channel tensors
    feeds = _feeds(model)
    pruned, report = prune_channels(model, feeds, PruneOptions(ratio=0.3, budget=Budget.FLOPS, channel_multiple=8))
    assert report.layers and all(c.after % 8 == 0 for c in report.layers)
    loose, _ = prune_channels(model, feeds, PruneOptions(ratio=0.3, budget=Budget.FLOPS, channel_multiple=1))
    assert conv_flops(loose) != conv_flops(pruned)  # the rounding changed the selection
    nothing, report = prune_channels(model, feeds, PruneOptions(ratio=0.05, budget=Budget.FLOPS, channel_multiple=64))
    assert report.groups_removed == 0 and _error(model, nothing, feeds) == 0.0  # no multiple fits: nothing goes


def test_a_latency_budget_profiles_the_layers() -> None:
    model, _ = prepare(unet_bn())
    _, report = prune_channels(model, _feeds(model), PruneOptions(ratio=0.3, channel_multiple=1, block=1))
    assert report.budget is Budget.LATENCY and report.layer_us_before > 0
    assert 0 < report.layer_us_removed and report.groups_removed > 0


def test_one_plan_serves_every_ratio() -> None:
    model, _ = prepare(unet_bn())
    feeds = _feeds(model)
    plan = plan_pruning(model, feeds, PruneOptions(budget=Budget.FLOPS, channel_multiple=1))
    for ratio in (0.3, 0.1):
        options = PruneOptions(ratio=ratio, budget=Budget.FLOPS, channel_multiple=1)
        with_plan, a = prune_channels(model, feeds, options, plan=plan)
        fresh, b = prune_channels(model, feeds, options)
        assert a == b and with_plan.SerializeToString() == fresh.SerializeToString()
    with pytest.raises(ValueError, match="made with other options"):
        prune_channels(model, feeds, PruneOptions(ratio=0.3, budget=Budget.LATENCY), plan=plan)
