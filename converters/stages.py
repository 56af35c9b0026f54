"""The stages of one conversion (channel pruning, 2:4 sparsity, FP16, INT8), sharing one `Conversion` context.

Each stage judges its candidates with the gate on the search split, records every decision it takes in the
context's plan (`converters.plan`), and, replaying a plan, takes the plan's decisions instead of measuring. The
verdict on what the stages made is `convert.py`'s, on the verify split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import onnx

from calibration.cache import format_amax_json, format_cache
from calibration.calibrators import CalibrationMethod, CalibratorOptions
from converters.data import EvalData
from converters.evaluate import Comparison, Outputs, activation_ranges, compare, run_model
from converters.fp16 import Fp16Options, convert_fp16, emulate_fp16, plan_fp16
from converters.gate import Build, Fallback, Gate, SearchResult
from converters.graph import ConversionError
from converters.int8 import QuantTarget, calibrate, insert_qdq, quantizable_nodes
from converters.latency import LatencyReport, place_for_latency
from converters.options import ConvertOptions
from converters.plan import Int8Plan, Plan
from converters.progress import Progress
from converters.prune import (
    Budget,
    PruneOptions,
    conv_flops,
    cpu_channel_block,
    group_key,
    plan_pruning,
    prune_channels,
    prune_groups,
)
from converters.report import (
    AccuracyReport,
    ConversionReport,
    Fp16Report,
    Int8Report,
    KeptNode,
    Precision,
    PruneAttempt,
    PruneResult,
)
from converters.sparsity import (
    SparseLayer,
    SparsityOptions,
    SparsityReport,
    apply_sparse,
    eligible_layers,
    sparse_weights,
)
from converters.timing import time_models
from edge_runtime.core.tasks import TaskHead


@dataclass
class Conversion:
    """What every stage of one conversion shares."""

    prepared: onnx.ModelProto
    data: EvalData  # the search split: every choice is judged on it
    reference: list[Outputs]  # the original model's outputs on `data`
    head: TaskHead | None  # the card's task head: the gate judges the model as the daemon decodes it
    tolerance: float
    options: ConvertOptions
    report: ConversionReport
    say: Progress
    plan: Plan  # the decisions taken, recorded as they are taken
    replay: Plan | None = None  # a plan to follow instead of measuring

    def gate(self, build: Build, optimize: bool = True) -> Gate:
        return Gate(
            build, self.data, self.reference, self.head, self.tolerance, optimize=optimize, cpu=self.options.cpu
        )

    @property
    def ops(self) -> dict[str, str]:
        return {n.name: n.op_type for n in self.prepared.graph.node}

    def budget(self) -> int:
        o = self.options
        return o.max_fallback if o.max_fallback is not None else max(4, len(self.prepared.graph.node) // 4)


def prune_stage(ctx: Conversion, calib: EvalData) -> onnx.ModelProto:
    """Channel pruning at the requested budget (a fraction of the layers' time or FLOPs, or a latency to reach),
    judged by the gate against the original; on failure the budget backs off by 0.1 at a time. Returns the pruned
    FP32 model (the prepared one if nothing passed)."""
    options, say = ctx.options, ctx.say
    assert options.prune is not None
    gate = ctx.gate(lambda _units: ctx.prepared)
    result = PruneResult(options.prune, options.prune_budget, 0.0, options.prune_repair, "")
    ctx.report.prune = result
    frames = calib.feeds[: max(1, options.prune_frames)]
    budget = options.prune_by or (Budget.LATENCY if options.target is QuantTarget.ONNXRUNTIME else Budget.FLOPS)
    if options.prune_target_ms is not None and budget is not Budget.LATENCY:
        raise ConversionError("--prune-budget as a latency (ms) needs --prune-by latency")
    measure = "time" if budget is Budget.LATENCY else "FLOPs"
    multiple = options.prune_multiple or (cpu_channel_block() if budget is Budget.LATENCY else 8)
    prune_options = PruneOptions(
        budget=budget, repair=options.prune_repair, channel_multiple=max(multiple, 1), cpu=options.cpu,
        time_budget_s=options.prune_time_budget_s,
    )  # fmt: skip
    if ctx.replay is not None:
        say(f"pruning channels as the plan says: {len(ctx.replay.pruned)} channel groups")
        pruned, details = prune_groups(ctx.prepared, frames, ctx.replay.pruned, prune_options, say)
        result.used, result.details = (options.prune_budget if ctx.replay.pruned else 0.0), details
        ctx.plan.pruned = list(ctx.replay.pruned)
        return pruned
    fp32_ms = None
    if options.prune_target_ms is not None:
        fp32_ms = time_models([ctx.prepared], frames[:2], rounds=3, runs=10, cpu=options.cpu)[0]
        result.target_ms, result.fp32_ms = options.prune_target_ms, round(fp32_ms, 3)
        if fp32_ms <= options.prune_target_ms:
            result.note = f"the model already runs in {fp32_ms:.2f} ms <= {options.prune_target_ms:.2f} ms here"
            say(f"  {result.note}")
            return ctx.prepared
    say(f"planning channel pruning by the weighted layers' {measure}")
    plan = plan_pruning(ctx.prepared, frames, prune_options, ctx.head, say)  # once: it does not depend on the ratio
    if not plan.order:
        result.note = (
            f"no prunable channel groups ({'; '.join(plan.blocked) or 'no weighted layers'})"
            if not plan.groups
            else f"no kept channel count that is a multiple of {multiple} saves {measure} in any layer family"
        )
        say(f"  {result.note}")
        return ctx.prepared
    ratio = options.prune_budget
    if options.prune_target_ms is not None and fp32_ms is not None:
        ratio = (fp32_ms - options.prune_target_ms) * 1000.0 / max(plan.measured_us, 1e-9)
        say(
            f"  {fp32_ms:.2f} ms per run here, {options.prune_target_ms:.2f} ms wanted: {ratio:.2f} of the layers' time"
        )
        ratio = result.requested = round(min(ratio, 0.95), 3)
    seen: list[int] = []
    while ratio > 0.05:
        chosen, _ = plan.selection(ratio)
        if len(chosen) in seen:  # a smaller ratio that selects the same steps: nothing new to judge
            ratio = round(ratio - 0.1, 3)
            continue
        seen.append(len(chosen))
        say(f"pruning channels: {ratio:.2f} of the weighted layers' {measure}")
        pruned, details = prune_channels(ctx.prepared, frames, replace(prune_options, ratio=ratio), say, plan)
        check = gate.evaluate_model(pruned)
        result.metric_name = check.metric_name
        result.attempts.append(PruneAttempt(round(ratio, 3), round(check.metric, 6), round(check.lower_bound, 6)))
        say(
            f"  FLOPs x{details.flops_ratio:.2f}: {check.metric_name} {check.metric:.4f}, lower bound "
            f"{check.lower_bound:.4f} (required >= {gate.required:.4f})"
        )
        if gate.passes(check):
            result.used, result.details = round(ratio, 3), details
            ctx.plan.pruned = [group_key(g) for g in chosen]
            fp32_ms, pruned_ms = time_models([ctx.prepared, pruned], frames[:2], rounds=5, runs=10, cpu=options.cpu)
            result.fp32_ms, result.pruned_ms = round(fp32_ms, 3), round(pruned_ms, 3)
            say(f"  timed here: {fp32_ms:.2f} ms -> {pruned_ms:.2f} ms per run ({fp32_ms / pruned_ms:.2f}x)")
            return pruned
        ratio = round(ratio - 0.1, 3)
    say("  no pruning ratio passes the gate: the model is not pruned")
    return ctx.prepared


def sparsity_stage(ctx: Conversion, calib: EvalData) -> onnx.ModelProto:
    """2:4 on every eligible layer if the gate allows; else on the layers that cost least alone, as many as the
    gate allows (binary search over that order). Returns the model with the sparse layers (or unchanged)."""
    options, say = ctx.options, ctx.say
    report = ctx.report.sparsity = SparsityReport()
    eligible, report.skipped = eligible_layers(ctx.prepared)
    report.weights_total = conv_flops(ctx.prepared)[1]
    if not eligible:
        say("2:4 sparsity: no eligible layer")
        return ctx.prepared
    frames = calib.feeds[: max(1, options.prune_frames)]
    say(f"2:4 sparsity ({options.sparse_saliency.value}) on {len(eligible)} eligible layers")
    weights = sparse_weights(
        ctx.prepared, [e.node for e in eligible], frames, SparsityOptions(options.sparse_saliency), say
    )
    if ctx.replay is not None:
        report.eligible = eligible
        report.applied = ctx.plan.sparse_layers = [n for n in ctx.replay.sparse_layers if n in weights]
        return apply_sparse(ctx.prepared, {n: weights[n] for n in report.applied}) if report.applied else ctx.prepared
    gate = ctx.gate(lambda names: apply_sparse(ctx.prepared, {n: weights[n] for n in names}))

    def passes(names: Sequence[str]) -> bool:
        check = gate.evaluate(list(names))
        say(f"  {len(names)} layer(s) 2:4: {check.metric_name} {check.metric:.4f} (required >= {gate.required:.4f})")
        return gate.passes(check)

    names = [e.node for e in eligible]
    if passes(names):
        chosen = names
    else:
        say("  measuring each layer alone")
        reference = run_model(ctx.prepared, frames)
        losses = {}
        for n in names:
            alone = run_model(apply_sparse(ctx.prepared, {n: weights[n]}), frames)
            losses[n] = 1.0 - compare(reference, alone, ctx.head).metric
        eligible = [SparseLayer(e.node, e.op, e.weights, round(losses[e.node], 6)) for e in eligible]
        order = sorted(names, key=lambda n: losses[n])
        lo, hi = 0, len(order) - 1  # order[:lo] passes; order[:hi + 1] fails
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if passes(order[:mid]):
                lo = mid
            else:
                hi = mid - 1
        chosen = order[:lo]
    report.eligible, report.applied = eligible, list(chosen)
    ctx.plan.sparse_layers = list(chosen)
    if not chosen:
        say("  no layer keeps the gate in 2:4: none made sparse")
        return ctx.prepared
    return apply_sparse(ctx.prepared, {n: weights[n] for n in chosen})


def fp16_stage(ctx: Conversion) -> onnx.ModelProto | None:
    prepared, options, report, say = ctx.prepared, ctx.options, ctx.report, ctx.say
    ranges = None
    if options.use_ranges:
        say("measuring activation ranges")
        ranges = activation_ranges(prepared, ctx.data.feeds)
    plan = plan_fp16(prepared, ranges, Fp16Options(range_margin=options.range_margin))
    say(f"planned {len(plan.fp16_nodes)} of {len(prepared.graph.node)} nodes in FP16")
    ops = ctx.ops
    fp16 = list(plan.fp16_nodes)
    passed = True
    if ctx.replay is not None:
        fp16 = list(ctx.replay.fp16_nodes or [])
    elif options.gate:
        say("accuracy gate: FP16 emulation vs the FP32 original")
        gate = ctx.gate(lambda nodes: emulate_fp16(convert_fp16(prepared, nodes)), optimize=False)
        found = gate.search(fp16, ctx.budget(), ops, say)
        fp16, passed = found.lowered, found.passed
        for f in found.fallbacks:
            plan.fp32_nodes[f.node] = (
                f"accuracy: {found.final.metric_name} {f.metric_before:.4f} without it, {f.metric_after:.4f} with this node in FP32"
            )
        report.accuracy = _accuracy(found, gate)
        report.fallback = found.fallbacks
    report.fp16 = Fp16Report(
        nodes=len(prepared.graph.node),
        fp16_nodes=len(fp16),
        fp32_nodes=[KeptNode(n, ops.get(n, "?"), r) for n, r in plan.fp32_nodes.items()],
        range_margin=options.range_margin,
        ranges_measured=options.use_ranges,
    )
    ctx.plan.fp16_nodes = fp16
    if not passed:
        report.failure = _failure("FP16", report.accuracy, report.fallback)
        return None
    return convert_fp16(prepared, fp16)


def int8_stage(ctx: Conversion, calib: EvalData, extra: dict[str, str | bytes]) -> onnx.ModelProto | None:
    prepared, options, report, say = ctx.prepared, ctx.options, ctx.report, ctx.say
    units = quantizable_nodes(prepared)
    if not units:
        raise ConversionError("the model has no Conv/ConvTranspose/Gemm/MatMul with constant weights to quantize")
    if ctx.replay is not None:
        return _replay_int8(ctx, units, extra)
    methods = list(CalibrationMethod) if options.calib_method is None else [options.calib_method]
    say(f"calibrating on {calib.description}")
    calibrator = calibrate(prepared, calib.feeds, CalibratorOptions(percentile=options.percentile), say)
    positive = calibrator.non_negative()

    def build_with(amax: dict[str, float]) -> Build:
        return lambda on: insert_qdq(prepared, amax, on, options.target, positive)

    # Speed first: a layer slower in INT8 on the target is never worth its accuracy cost, so the accuracy search
    # only covers the layers that pay. Speed does not depend on the calibrated ranges (minmax stands in).
    kept: list[KeptNode] = []
    candidates = list(units)
    timing = options.latency and options.target is QuantTarget.ONNXRUNTIME
    if timing:
        say("latency: per-layer cost of INT8 vs FP32 on ONNX Runtime's CPU provider")
        minmax = build_with(calibrator.amax(CalibrationMethod.MINMAX))
        candidates, report.latency = place_for_latency(prepared, minmax, units, ctx.data.feeds, say, cpu=options.cpu)
        kept += _speed_reasons(report.latency, candidates)
        if report.latency.kept_fp32_for_speed:
            say(
                f"  {len(report.latency.kept_fp32_for_speed)} layer(s) stay FP32 for speed: "
                f"{report.latency.int8_ms:.2f} -> {report.latency.chosen_ms:.2f} ms per run"
            )
        if not candidates:
            say("  the model is not faster with any layer in INT8 on this machine: it stays FP32")

    scores: dict[str, float] = {}
    best: tuple[Comparison, CalibrationMethod, dict[str, float]] | None = None
    for method in methods if candidates else methods[:1]:
        amax = calibrator.amax(method)
        result = ctx.gate(build_with(amax)).evaluate(candidates)
        scores[method.value] = round(result.metric, 6)
        say(f"  {method.value:<10} {len(candidates)} ops INT8: {result.metric_name} {result.metric:.4f}")
        if best is None or result.metric > best[0].metric:  # ties keep the earlier method: a fixed order
            best = (result, method, amax)
    assert best is not None
    first, method, amax = best
    say(f"calibration: {method.value}, {options.target.value} placement; accuracy gate on the search split")
    gate = ctx.gate(build_with(amax))
    found = gate.search(candidates, ctx.budget(), ctx.ops, say, first=first)  # already measured
    report.accuracy = _accuracy(found, gate)
    report.accuracy.evaluations += len(scores)  # each calibration method was judged once before the search
    report.fallback = found.fallbacks
    kept += [
        KeptNode(f.node, f.op, f"accuracy: {f.metric_before:.4f} without it, {f.metric_after:.4f} with it")
        for f in found.fallbacks
    ]
    lowered = found.lowered
    report.int8 = Int8Report(
        target=options.target.value,
        method=method.value,
        method_scores=scores,
        quantizable_ops=len(units),
        int8_ops=len(lowered),
        kept_higher_precision=kept,
        fallback_precision=Precision.FP32,
        trt_version=options.trt_version,
    )
    ctx.plan.int8 = Int8Plan(method.value, dict(sorted(amax.items())), list(lowered), sorted(positive))
    if not found.passed:
        report.failure = _failure("INT8", report.accuracy, found.fallbacks)
        return None
    model = insert_qdq(prepared, amax, lowered, options.target, positive)
    if options.fallback is Precision.FP16:
        model = _int8_with_fp16(ctx, model, lowered, report.int8)
    if timing and report.latency is not None:  # time what ships, beside FP32
        fp32_ms, final_ms = time_models([prepared, model], ctx.data.feeds[:4], rounds=5, runs=10, cpu=options.cpu)
        report.latency.fp32_ms, report.latency.final_ms = round(fp32_ms, 3), round(final_ms, 3)
    _int8_files(extra, amax, method.value, options.trt_version, prepared)
    return model


def _int8_files(
    extra: dict[str, str | bytes], amax: dict[str, float], method: str, trt: str, prepared: onnx.ModelProto
) -> None:
    extra["calibration.cache"] = format_cache(amax, trt)
    extra["calibration.json"] = format_amax_json(amax, method)
    extra["prepared_fp32.onnx"] = prepared.SerializeToString()  # the graph whose tensor names the cache uses


def _replay_int8(ctx: Conversion, units: Sequence[str], extra: dict[str, str | bytes]) -> onnx.ModelProto:
    """INT8 exactly as the plan says: its ranges, its ops, its mixed-precision nodes; nothing measured."""
    assert ctx.replay is not None and ctx.replay.int8 is not None
    q, options = ctx.replay.int8, ctx.options
    unknown = sorted(set(q.nodes) - set(units))
    if unknown:
        raise ConversionError(f"the plan quantizes ops this model does not have or cannot quantize: {unknown[:5]}")
    ctx.say(f"INT8 as the plan says: {len(q.nodes)} ops, {q.method} ranges of {len(q.amax)} tensors")
    model = insert_qdq(ctx.prepared, q.amax, q.nodes, options.target, set(q.non_negative))
    ctx.report.int8 = Int8Report(
        target=options.target.value, method=q.method, method_scores={}, quantizable_ops=len(units),
        int8_ops=len(q.nodes), kept_higher_precision=[], fallback_precision=Precision.FP32,
        trt_version=options.trt_version,
    )  # fmt: skip
    if q.fp16_nodes:
        model = convert_fp16(model, q.fp16_nodes)
        ctx.report.int8.fallback_precision, ctx.report.int8.fp16_nodes = Precision.FP16, len(q.fp16_nodes)
    ctx.plan.int8 = q
    _int8_files(extra, q.amax, q.method, options.trt_version, ctx.prepared)
    return model


def _speed_reasons(lat: LatencyReport, keep: Sequence[str]) -> list[KeptNode]:
    """Why each layer left INT8 for speed, comparing the two models the decision compared."""
    costs = {c.node: c for c in lat.layers}
    fp32_decision = next((d for d in reversed(lat.decisions) if d.against_layers == 0), None)
    out = []
    for node in lat.kept_fp32_for_speed:
        c = costs[node]
        if c.pays is False:
            reason = f"speed: {_us(c.int8_us)} in INT8 vs {_us(c.fp32_us)} in FP32"
            if c.speed is not None:
                reason += f" ({c.speed.describe()})"
            reason += f" (not fused: {c.reason})" if not c.fused else ""
        elif not keep and fp32_decision is not None:
            reason = (
                f"speed: INT8 does not pay for the whole model here: with {fp32_decision.int8_layers} INT8 layers it "
                f"runs {fp32_decision.speed.describe()} the FP32 model's time, not {1 - fp32_decision.speed.gain:.2f}x "
                "or less"
            )
        else:
            leave = next((d for d in lat.decisions if d.int8_layers == len(keep) and d.against_layers > 0), None)
            reason = (
                f"speed: the model without it in INT8 ({len(keep)} INT8 layers) runs "
                f"{leave.speed.describe() if leave else 'faster'} the time of the one with it "
                f"({leave.against_layers if leave else '?'} INT8 layers)"
            )
        out.append(KeptNode(node, c.op, reason))
    return out


def _us(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.0f} us"


def _int8_with_fp16(ctx: Conversion, int8: onnx.ModelProto, quantized: Sequence[str], q: Int8Report) -> onnx.ModelProto:
    """Mixed precision: what is not INT8 runs in FP16 where the gate allows; quantized ops keep their DQ inputs."""
    ctx.say("mixed precision: layers outside INT8 in FP16")
    ranges = activation_ranges(ctx.prepared, ctx.data.feeds)
    plan = plan_fp16(int8, ranges, Fp16Options(force_fp32=frozenset(quantized)))
    gate = ctx.gate(lambda nodes: emulate_fp16(convert_fp16(int8, nodes)), optimize=False)
    result = gate.evaluate(plan.fp16_nodes)
    mixed = gate.passes(result)
    q.fallback_precision = Precision.FP16 if mixed else Precision.FP32
    q.fp16_nodes = len(plan.fp16_nodes) if mixed else 0
    q.mixed_metric = result.metric
    if mixed and ctx.plan.int8 is not None:
        ctx.plan.int8.fp16_nodes = list(plan.fp16_nodes)
    if not mixed:
        ctx.say(f"  FP16 for the rest fails the gate ({result.metric:.4f}); it stays FP32")
        return int8
    assert ctx.report.accuracy is not None
    ctx.report.accuracy.metric = result.metric
    ctx.report.accuracy.comparison = result
    ctx.report.accuracy.lower_bound = result.lower_bound
    return convert_fp16(int8, plan.fp16_nodes)


def _accuracy(found: SearchResult, gate: Gate) -> AccuracyReport:
    return AccuracyReport(
        metric_name=found.final.metric_name,
        metric=found.final.metric,
        required=gate.required,
        before_fallback=found.first.metric,
        passed=found.passed,
        evaluations=found.evaluations,
        comparison=found.final,
        lower_bound=found.final.lower_bound,
        sensitivity=found.ranking,
        sensitivity_method=found.ranking_method,
    )


def _failure(precision: str, accuracy: AccuracyReport | None, fallbacks: Sequence[Fallback]) -> str:
    assert accuracy is not None
    culprits = (
        ", ".join(f"{f.op} '{f.node}' ({f.metric_before:.4f} -> {f.metric_after:.4f})" for f in fallbacks)
        or "none found"
    )
    return (
        f"{precision} accuracy gate failed on the search split: {accuracy.metric_name} {accuracy.metric:.4f}, lower "
        f"bound {accuracy.lower_bound:.4f} < required {accuracy.required:.4f} after keeping {len(fallbacks)} node(s) "
        f"in higher precision: {culprits}"
    )


__all__ = ["Conversion", "fp16_stage", "int8_stage", "prune_stage", "sparsity_stage"]
