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
from converters.graph import ConversionError
from converters.prepare import prepare
from converters.prune import Budget, PruneOptions, channel_groups, conv_flops, plan_pruning, prune_channels
from converters.report import PruneMethod

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from make_models import exported_elementwise, onnx_model, residual, se_block, silu_concat, unet_bn  # noqa: E402


def _feeds(model: onnx.ModelProto, n: int = 8) -> list[dict[str, np.ndarray]]:
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    return [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _error(a: onnx.ModelProto, b: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> float:
    return max(float(np.abs(x[k] - y[k]).max()) for x, y in zip(run_model(a, feeds), run_model(b, feeds)) for k in x)


# residual Add, Concat + ConvTranspose + Resize + MaxPool, SiLU + Concat, depthwise + per-channel constants, SE
MODELS = {"residual": residual, "unet_bn": unet_bn, "silu_concat": silu_concat, "elementwise": exported_elementwise,
          "se_block": se_block}  # fmt: skip


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
    model = onnx_model(graph)
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
                             samples=8, tolerance=0.5, min_support=2, prune_multiple=1, prune_by=Budget.FLOPS)  # fmt: skip
    result = convert_model(tiny_models["unet_bn"], options)
    pr = result.report.prune
    assert result.passed and pr is not None and pr.attempts and pr.attempts[0].ratio == 0.3
    assert 0 < pr.used <= 0.3 and pr.details is not None and pr.details.flops_ratio < 0.95
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
                             data="synthetic:frames=8,size=32x32", samples=8, tolerance=0.5, min_support=2, latency=False,
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


def _chain(weights: dict[str, np.ndarray], relu: bool, concat: bool = False) -> onnx.ModelProto:
    """x -> c1 -> (Relu) -> c2 -> (Relu) -> c3, 1x1 convs; or with `concat`, x -> cA and x -> cB, concatenated,
    -> head."""
    F = TensorProto.FLOAT
    inits = [numpy_helper.from_array(w.astype(np.float32), k) for k, w in weights.items()]
    cin = next(iter(weights.values())).shape[1]
    if concat:
        nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="cA"),
                 helper.make_node("Conv", ["x", "wb"], ["b"], name="cB"),
                 helper.make_node("Concat", ["a", "b"], ["ab"], name="cat", axis=1),
                 helper.make_node("Conv", ["ab", "wh"], ["y"], name="head")]  # fmt: skip
    else:
        act = "Relu" if relu else "Identity"
        nodes = [helper.make_node("Conv", ["x", "w1"], ["h1"], name="c1"),
                 helper.make_node(act, ["h1"], ["r1"], name="a1"),
                 helper.make_node("Conv", ["r1", "w2"], ["h2"], name="c2"),
                 helper.make_node(act, ["h2"], ["r2"], name="a2"),
                 helper.make_node("Conv", ["r2", "w3"], ["y"], name="c3")]  # fmt: skip
    out = list(weights.values())[-1].shape[0]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", F, [1, cin, 8, 8])],
                              [helper.make_tensor_value_info("y", F, [1, out, 8, 8])], inits)  # fmt: skip
    return onnx_model(graph)


def test_the_refit_follows_a_change_downstream_on_the_pruned_models_own_inputs() -> None:
    """Pruning c1 changes c2's input and, through c2 and a Relu, c3's: both are refitted, in order, each on what
    the pruned model feeds it, so c3 also compensates what c2 could not restore."""
    rng = np.random.default_rng(3)
    w1 = np.concatenate([np.eye(3), [[1.0, 1.0, 0.0]]]).reshape(4, 3, 1, 1)  # a fourth, nearly redundant channel
    model = _chain({"w1": w1, "w2": rng.standard_normal((2, 4, 1, 1)), "w3": rng.standard_normal((2, 2, 1, 1))},
                   relu=True)  # fmt: skip
    feeds = _feeds(model, 16)
    options = PruneOptions(ratio=0.1, budget=Budget.FLOPS, channel_multiple=1, ridge=1e-6, max_layer_ratio=0.3)
    repaired, report = prune_channels(model, feeds, options)  # c2's two channels stay: the 0.3 cap keeps them
    assert report.repaired == ["c2", "c3"] and report.layers[0].node == "c1"
    plain, _ = prune_channels(model, feeds, PruneOptions(**{**options.__dict__, "repair": False}))
    assert _error(model, repaired, feeds) < 0.5 * _error(model, plain, feeds)


def test_allocation_takes_the_redundant_family_first() -> None:
    """Two branches of equal cost: cA writes x0, x1 and x0 + x1 (one channel is redundant), cB three independent
    mixtures of x2, x3 and x4. The measured sensitivity makes the first step cA's; any step of cB loses a
    dimension nothing else carries."""
    rng = np.random.default_rng(4)
    wa = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 1, 0, 0, 0]], np.float64).reshape(3, 5, 1, 1)
    wb = np.concatenate([np.zeros((3, 2)), np.eye(3) + 0.3 * rng.standard_normal((3, 3))], axis=1).reshape(3, 5, 1, 1)
    model = _chain({"wa": wa, "wb": wb, "wh": rng.standard_normal((2, 6, 1, 1))}, relu=False, concat=True)
    feeds = _feeds(model, 16)
    options = PruneOptions(ratio=0.1, budget=Budget.FLOPS, channel_multiple=1, max_layer_ratio=0.34, ridge=1e-9)
    plan = plan_pruning(model, feeds, options)
    losses = {f.producers: f.losses[0] for f in plan.families}
    assert losses[("cA",)] < 1e-6 < losses[("cB",)]
    pruned, report = prune_channels(model, feeds, options, plan=plan)
    assert [s.producers for s in report.steps] == [("cA",)] and report.steps[0].after == 2
    assert _error(model, pruned, feeds) < 1e-3


def test_the_latency_cost_model_counts_channel_blocks() -> None:
    """A conv in blocks of 16: 24 -> 17 output channels saves nothing, 24 -> 16 halves it; FLOPs are linear."""
    from converters.pruning.cost import CostModel, CostOp

    blocked = CostModel([CostOp("c", 100.0, "x", "y", 24, 24, 16)])
    assert blocked.total({"y": 7}) == 100.0 and blocked.total({"y": 8}) == 50.0
    assert blocked.total({"x": 8, "y": 8}) == 25.0
    linear = CostModel([CostOp("c", 100.0, "x", "y", 24, 24, 1)])
    assert linear.total({"y": 6}) == 75.0


def test_families_step_in_whole_blocks_within_the_layer_cap() -> None:
    model, _ = prepare(silu_concat())  # 16-channel layers
    plan = plan_pruning(model, _feeds(model), PruneOptions(budget=Budget.FLOPS, channel_multiple=4))
    assert plan.families and all(f.kept == [12, 8, 4] for f in plan.families)  # 0.75 cap: never below 4 of 16
    assert all(len(f.losses) == len(f.kept) for f in plan.families)
    fewer = plan_pruning(model, _feeds(model), PruneOptions(budget=Budget.FLOPS, channel_multiple=1, max_steps=3))
    assert all(len(f.kept) == 3 and f.kept[0] == 15 and f.kept[-1] == 4 for f in fewer.families)


def test_squeeze_and_excitation_prunes_the_gate_with_its_features() -> None:
    model, _ = prepare(se_block())
    groups, _ = channel_groups(model)
    assert {tuple(sorted({u.node for u in g.uses if u.role == "producer"})) for g in groups} >= {("excite", "features")}
    feeds = _feeds(model)
    _, report = prune_channels(model, feeds, PruneOptions(ratio=0.4, budget=Budget.FLOPS, channel_multiple=4))
    after = {c.node: c.after for c in report.layers}
    assert "features" in after and after["features"] == after["excite"] < 16


def test_a_latency_target_in_milliseconds(tiny_models: dict[str, Path]) -> None:
    from edge_runtime.cli.convert import _prune_budget

    assert _prune_budget("6ms") == (0.3, 6.0) and _prune_budget("0.25") == (0.25, None)
    options = ConvertOptions(prune=PruneMethod.CHANNELS, prune_target_ms=1e6, data="synthetic:frames=4,size=32x32",
                             samples=4, tolerance=0.5, prune_multiple=1, min_support=2)  # fmt: skip
    result = convert_model(tiny_models["unet_bn"], options)
    pr = result.report.prune
    assert pr is not None and pr.used == 0.0 and pr.fp32_ms is not None and "already runs" in pr.note
    with pytest.raises(ConversionError, match="needs --prune-by latency"):
        convert_model(tiny_models["unet_bn"], ConvertOptions(**{**options.__dict__, "prune_by": Budget.FLOPS}))


def test_a_local_error_from_the_sums_equals_the_error_on_the_samples() -> None:
    from converters.pruning.repair import NormalEquations, local_error

    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 12))
    y = x @ rng.standard_normal((12, 5)) + 0.1 * rng.standard_normal((300, 5)) + 2.0
    eq = NormalEquations(12, 5)
    eq.add(x[:100], y[:100])
    eq.add(x[100:], y[100:])  # accumulated over two frames
    keep = np.array([0, 2, 3, 5, 7, 8, 11])
    w, b = eq.solve(keep, np.zeros((5, len(keep))), ridge=1e-3)
    direct = float(np.sum((y - (x[:, keep] @ w.T + b)) ** 2))
    assert local_error(eq, keep, w, b) == pytest.approx(direct, rel=1e-6)
    assert eq.energy() == pytest.approx(float(np.sum((y - y.mean(axis=0)) ** 2)), rel=1e-9)


def test_interpolated_losses_pass_through_the_anchors_and_never_fall() -> None:
    from converters.pruning.sensitivity import anchors, interpolate

    assert anchors(8, 2) == [0, 7] and anchors(1, 2) == [0] and anchors(8, 3) == [0, 4, 7] and anchors(5, 1) == [4]
    losses = interpolate([0.01, 0.02, 0.05, 0.04, 0.2], {2: 0.1, 4: 0.5})
    assert losses[2] == 0.1 and losses[4] == 0.5
    assert losses[0] == pytest.approx(0.02) and losses[1] == pytest.approx(0.04)  # on the line through (0, 0)
    assert losses == sorted(losses)  # step 3's smaller proxy does not make it cheaper than step 2


def test_sensitivity_costs_anchors_per_family_not_steps_times_frames() -> None:
    model, _ = prepare(unet_bn())
    few = plan_pruning(model, _feeds(model, 4), PruneOptions(budget=Budget.FLOPS, channel_multiple=1, max_steps=3))
    many = plan_pruning(model, _feeds(model, 8), PruneOptions(budget=Budget.FLOPS, channel_multiple=1, max_steps=8))
    assert few.sensitivity.families == many.sensitivity.families == len(many.families) > 1
    assert many.sensitivity.steps > few.sensitivity.steps
    assert many.sensitivity.whole_model_runs == few.sensitivity.whole_model_runs <= 2 * len(many.families)
    assert many.sensitivity.activation_passes == 1  # the families' normal equations fit in one pass together
    for fam in many.families:  # every step has a loss, and removing more never costs less
        assert len(fam.losses) == len(fam.kept) and fam.losses == sorted(fam.losses)
    _, report = prune_channels(model, _feeds(model, 8), PruneOptions(ratio=0.3, budget=Budget.FLOPS, channel_multiple=1,
                                                                      max_steps=8), plan=many)  # fmt: skip
    assert report.sensitivity is not None and report.sensitivity.frames == 8


def test_a_sensitivity_pass_over_its_time_budget_is_refused_before_it_starts() -> None:
    model, _ = prepare(unet_bn())
    options = PruneOptions(budget=Budget.FLOPS, channel_multiple=1, time_budget_s=1e-6)
    said: list[str] = []
    with pytest.raises(ConversionError, match=r"over its budget of .* raise --prune-time-budget or give fewer"):
        plan_pruning(model, _feeds(model), options, say=said.append)
    assert any("whole-model runs" in line and "about" in line for line in said)  # the estimate was said first
