"""`edgert convert`: prepare a model, convert its precision, and refuse to hand over a model that lost accuracy.

Stages: load (an ONNX file, or a model package with its card) -> prepare (`converters.prepare`) -> check that the
prepared FP32 model still matches the original -> FP16 (activation ranges, plan, convert) or INT8 (calibrate,
choose the range method, insert Q/DQ) -> the accuracy gate (`converters.gate`) against the original, judged with
the card's task head (the daemon's decoder). If the gate fails, the gate's search finds the nodes to keep in higher
precision. A model that fails its gate is not written; the typed report (`converters.report`) says which nodes
were tried and by how much.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from calibration.cache import format_amax_json, format_cache
from calibration.calibrators import CalibrationMethod, CalibratorOptions
from calibration.sources import SampleOrder, Sampling
from converters.data import EvalData, load_feeds
from converters.evaluate import (
    Comparison,
    Outputs,
    activation_ranges,
    compare,
    default_tolerance,
    head_of,
    run_model,
)
from converters.fp16 import Fp16Options, convert_fp16, emulate_fp16, plan_fp16
from converters.gate import Build, Fallback, Gate, SearchResult
from converters.graph import ConversionError, model_size, real_inputs
from converters.int8 import QuantTarget, calibrate, insert_qdq, quantizable_nodes
from converters.latency import place_for_latency, time_models
from converters.prepare import DEFAULT_OPSET, PrepareOptions, prepare
from converters.progress import Progress
from converters.prune import Budget, PruneOptions, conv_flops, cpu_channel_block, plan_pruning, prune_channels
from converters.report import (
    AccuracyReport,
    ConversionReport,
    DataInfo,
    Fp16Report,
    Int8Report,
    KeptNode,
    ModelFile,
    OutputFile,
    Precision,
    PruneAttempt,
    PruneMethod,
    PruneResult,
    card_note,
    summary_text,
)
from converters.sparsity import (
    Saliency,
    SparseLayer,
    SparsityOptions,
    SparsityReport,
    apply_sparse,
    check_2_4,
    eligible_layers,
    sparse_weights,
)
from edge_runtime import __version__
from edge_runtime.package import CARD_FILE, ONNX_FILE, ModelCard, PackageError, load_package, parse_card
from edge_runtime.tasks import TaskHead

INT8_FILES = ("calibration.cache", "calibration.json", "prepared_fp32.onnx")
PREPARE_MIN_COSINE = 0.99999  # preparation must not change results beyond float rounding


@dataclass(frozen=True)
class ConvertOptions:
    precision: Precision = Precision.FP32
    data: str | None = None
    samples: int = 32
    tolerance: float | None = None  # allowed shortfall of the task metric below 1.0; default per task
    target_opset: int = DEFAULT_OPSET
    input_shape: Sequence[int] | None = None  # fix the model input's dims to this shape
    fix_shapes: bool = False  # fix dynamic dims to the card's input shape
    range_margin: float = 2.0
    use_ranges: bool = True  # False: convert every registry op (naive), for comparison and tests
    gate: bool = True
    max_fallback: int | None = None  # fallbacks the gate may add; default max(4, 25% of nodes)
    calib: str | None = None  # INT8 calibration source (default: `data`); evaluation stays on `data`
    calib_method: CalibrationMethod | None = None  # None: try each method and keep the one the gate scores best
    percentile: float = 99.99
    target: QuantTarget = QuantTarget.ONNXRUNTIME
    fallback: Precision = Precision.FP32  # precision of INT8 layers the gate sends back (fp32 or fp16)
    trt_version: str = "10.3.0"  # version written into calibration.cache
    stride: int = 1
    sample_order: SampleOrder = SampleOrder.SPREAD
    seed: int = 0
    latency: bool = True  # onnxruntime target: profile per-layer cost and keep layers out of INT8 that do not pay
    prune: PruneMethod | None = None  # prune before the precision stages
    prune_budget: float = 0.3  # fraction of the layers' time (or FLOPs) to remove; backs off while the gate fails
    prune_repair: bool = True  # least-squares refit of every conv after a pruned channel (else bias correction)
    prune_by: Budget | None = None  # what the budget is a fraction of; None: latency for onnxruntime, else FLOPs
    prune_multiple: int = 0  # kept channel counts are multiples of this (1: any count; 0: this CPU's channel
    # block for a latency budget, 8 for FLOPs, the tensor cores' multiple)
    prune_target_ms: float | None = None  # --prune-budget as a latency: the FP32 model's time per run to reach
    prune_frames: int = 16  # calibration frames that measure sensitivity and refit the layers
    sparse_saliency: Saliency = Saliency.OBS  # --prune 2:4: which two of four weights go

    def __post_init__(self) -> None:
        if not 0.0 < self.prune_budget < 1.0:
            raise ValueError(f"--prune-budget must be a fraction in (0, 1), got {self.prune_budget}")
        if self.prune_target_ms is not None and not self.prune_target_ms > 0.0:
            raise ValueError(f"--prune-budget as a latency must be > 0 ms, got {self.prune_target_ms}")
        if self.prune_multiple < 0 or self.prune_frames < 1:
            raise ValueError("--prune-multiple must be >= 0 (0: automatic) and the pruning frames >= 1")


@dataclass
class ConversionResult:
    passed: bool
    model: onnx.ModelProto | None  # None when the accuracy gate failed
    card: dict[str, Any] | None
    report: ConversionReport
    extra_files: dict[str, str | bytes] = field(default_factory=dict)  # calibration cache, amax table, ...


def load_model(
    path: Path, card_path: Path | None
) -> tuple[onnx.ModelProto, ModelCard | None, dict[str, Any] | None, Path]:
    """(model, parsed card, raw card JSON, onnx path) from an ONNX file or a package."""
    if path.is_dir() or path.suffix in (".zip", ".tar", ".gz"):
        try:
            pkg = load_package(path)
        except PackageError as exc:
            raise ConversionError(str(exc)) from None
        raw = json.loads((pkg.root / CARD_FILE).read_text())
        return onnx.load(str(pkg.onnx_path)), pkg.card, raw, pkg.onnx_path
    if not path.is_file():
        raise ConversionError(f"{path}: no such ONNX file or model package")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors
        raise ConversionError(f"{path}: not an ONNX model ({exc.__class__.__name__})") from None
    if card_path is None:
        return model, None, None, path
    try:
        raw = json.loads(card_path.read_text())
        return model, parse_card(raw, where=str(card_path)), raw, path
    except (OSError, json.JSONDecodeError, PackageError) as exc:
        raise ConversionError(f"{card_path}: {exc}") from None


def _sha256(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


DEFAULT_SOURCE = "synthetic"  # calibration and evaluation data for a package when none is given


@dataclass
class _Conversion:
    """What every stage of one conversion shares."""

    prepared: onnx.ModelProto
    data: EvalData  # evaluation data (the gate's)
    reference: list[Outputs]  # the original model's outputs on `data`
    head: TaskHead | None  # the card's task head: the gate judges the model as the daemon decodes it
    tolerance: float
    options: ConvertOptions
    report: ConversionReport
    say: Progress

    def gate(self, build: Build, optimize: bool = True) -> Gate:
        return Gate(build, self.data, self.reference, self.head, self.tolerance, optimize=optimize)

    @property
    def ops(self) -> dict[str, str]:
        return {n.name: n.op_type for n in self.prepared.graph.node}

    def budget(self) -> int:
        o = self.options
        return o.max_fallback if o.max_fallback is not None else max(4, len(self.prepared.graph.node) // 4)


def _sources(options: ConvertOptions, card: ModelCard | None) -> tuple[str | None, str | None]:
    """(evaluation source, calibration source). Either defaults to the other; with a card and neither given, INT8,
    FP16 and pruning use the card's `data_source`, else synthetic ultrasound images (said in the progress output
    and the report)."""
    data = options.data or options.calib
    calib = options.calib or options.data
    measured = options.precision is not Precision.FP32 or options.prune is not None
    if measured and data is None and card is not None:
        data = calib = card.data_source or DEFAULT_SOURCE
    return data, (calib if options.precision is Precision.INT8 or options.prune is not None else None)


def convert_model(
    path: str | Path,
    options: ConvertOptions = ConvertOptions(),
    card_path: str | Path | None = None,
    progress: Progress | None = None,
) -> ConversionResult:
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    original, card, raw_card, onnx_path = load_model(Path(path), Path(card_path) if card_path else None)
    shapes: Mapping[str, Sequence[int]] | None = None
    inputs = real_inputs(original.graph)
    if options.input_shape is not None:
        if len(inputs) != 1:
            raise ConversionError(f"--input-shape needs a single-input model; this one has {[i.name for i in inputs]}")
        shapes = {inputs[0].name: list(options.input_shape)}
    elif options.fix_shapes:
        if card is None:
            raise ConversionError("fixing shapes to the card needs a card (a model package or --card)")
        shapes = {card.input_name: list(card.preprocess.input_shape)}
    eval_source, calib_source = _sources(options, card)
    if eval_source is None and (options.precision is not Precision.FP32 or options.prune is not None):
        what = f"--precision {options.precision.value}" if options.prune is None else "--prune"
        raise ConversionError(
            f"{what} without a model card needs --data SOURCE (or --calib): activation ranges, channel importance "
            "and the accuracy gate are measured on it; random[:seed=N] checks numbers only"
        )
    say(f"preparing the graph (target opset {options.target_opset})")
    prepared, prep = prepare(
        original, PrepareOptions(target_opset=options.target_opset, input_shapes=shapes), lambda s: say(f"  {s}")
    )
    report = ConversionReport(
        edgert_version=__version__,
        input=ModelFile(str(onnx_path), _sha256(original), model_size(original)),
        options=options,
        precision=options.precision,
        prepare=prep,
    )
    model: onnx.ModelProto | None = prepared
    extra: dict[str, str | bytes] = {}
    if eval_source is not None:
        if options.data is None and options.calib is None:
            what = "the card's data_source" if card is not None and card.data_source else "synthetic ultrasound images"
            say(f"no --data or --calib given: using {eval_source}, {what} (pass your own frames for a real check)")
        say(f"loading evaluation data from {eval_source}")
        sampling = _sampling(options, eval=calib_source == eval_source)
        data = load_feeds(eval_source, prepared, card, sampling)
        report.data = DataInfo(data.description, len(data.feeds), data.representative)
        say(f"running the original model on {len(data.feeds)} samples")
        reference = run_model(original, data.feeds)
        report.prepare_check = check = compare(reference, run_model(prepared, data.feeds))
        if check.metric < PREPARE_MIN_COSINE:
            raise ConversionError(
                f"preparation changed the model's outputs (cosine {check.metric:.6f}); please report this model"
            )
        head = head_of(card)
        tolerance = options.tolerance if options.tolerance is not None else default_tolerance(head)
        ctx = _Conversion(prepared, data, reference, head, tolerance, options, report, say)
        calib: EvalData | None = None
        if options.precision is Precision.INT8 or options.prune is not None:
            assert calib_source is not None
            say(f"loading calibration data from {calib_source}")
            calib = load_feeds(calib_source, prepared, card, _sampling(options, eval=False))
            report.calibration_data = DataInfo(calib.description, len(calib.feeds), calib.representative)
        if options.prune is not None and options.prune.channels:
            assert calib is not None
            ctx.prepared = model = _prune(ctx, calib)
        if options.prune is not None and options.prune.sparse:
            assert calib is not None
            ctx.prepared = model = _sparsify(ctx, calib)
        if options.precision is Precision.FP16:
            model = _to_fp16(ctx)
        elif options.precision is Precision.INT8:
            assert calib is not None
            model = _to_int8(ctx, calib, extra)
        if model is not None and report.sparsity is not None and report.sparsity.applied:
            problems = check_2_4(model, report.sparsity.applied)
            if problems:  # a claim in the card that the engine builder would act on: never ship it false
                raise ConversionError("the 2:4 pattern did not survive conversion: " + "; ".join(problems[:5]))
            report.sparsity.verified = True
    report.passed = model is not None
    if model is not None:
        size = model_size(model)
        report.output = OutputFile(_sha256(model), size, round(size / max(1, report.input.size_bytes), 4))
    report.seconds = round(time.perf_counter() - started, 2)
    out_card = None
    if raw_card is not None and model is not None and report.output is not None:
        out_card = {**raw_card, "onnx_sha256": report.output.sha256, "conversion": card_note(report)}
    return ConversionResult(report.passed, model, out_card, report, extra)


def _sampling(options: ConvertOptions, eval: bool) -> Sampling:
    """Calibration samples with the user's seed; evaluation from the same source with the next seed, so that the
    gate does not judge on the very frames the ranges were measured on."""
    return Sampling(options.samples, options.stride, options.sample_order, options.seed + (1 if eval else 0))


def _prune(ctx: _Conversion, calib: EvalData) -> onnx.ModelProto:
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
    prune_options = PruneOptions(budget=budget, repair=options.prune_repair, channel_multiple=max(multiple, 1))
    fp32_ms = None
    if options.prune_target_ms is not None:
        fp32_ms = time_models([ctx.prepared], frames[:2], rounds=3, runs=10)[0]
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
        ratio = (fp32_ms - options.prune_target_ms) * 1000.0 / max(plan.whole, 1e-9)
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
        check = compare(ctx.reference, run_model(pruned, ctx.data.feeds), ctx.head)
        result.metric_name = check.metric_name
        result.attempts.append(PruneAttempt(round(ratio, 3), round(check.metric, 6)))
        say(
            f"  FLOPs x{details.flops_ratio:.2f}: {check.metric_name} {check.metric:.4f} (required >= {gate.required:.4f})"
        )
        if gate.passes(check):
            result.used, result.details = round(ratio, 3), details
            fp32_ms, pruned_ms = time_models([ctx.prepared, pruned], frames[:2], rounds=5, runs=10)
            result.fp32_ms, result.pruned_ms = round(fp32_ms, 3), round(pruned_ms, 3)
            say(f"  timed here: {fp32_ms:.2f} ms -> {pruned_ms:.2f} ms per run ({fp32_ms / pruned_ms:.2f}x)")
            return pruned
        ratio = round(ratio - 0.1, 3)
    say("  no pruning ratio passes the gate: the model is not pruned")
    return ctx.prepared


def _sparsify(ctx: _Conversion, calib: EvalData) -> onnx.ModelProto:
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
    if not chosen:
        say("  no layer keeps the gate in 2:4: none made sparse")
        return ctx.prepared
    return apply_sparse(ctx.prepared, {n: weights[n] for n in chosen})


def _to_fp16(ctx: _Conversion) -> onnx.ModelProto | None:
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
    if options.gate:
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
    if not passed:
        report.failure = _failure("FP16", report.accuracy, report.fallback)
        return None
    return convert_fp16(prepared, fp16)


def _to_int8(ctx: _Conversion, calib: EvalData, extra: dict[str, str | bytes]) -> onnx.ModelProto | None:
    prepared, options, report, say = ctx.prepared, ctx.options, ctx.report, ctx.say
    methods = list(CalibrationMethod) if options.calib_method is None else [options.calib_method]
    say(f"calibrating on {calib.description}")
    calibrator = calibrate(prepared, calib.feeds, CalibratorOptions(percentile=options.percentile), say)
    positive = calibrator.non_negative()
    units = quantizable_nodes(prepared)
    if not units:
        raise ConversionError("the model has no Conv/ConvTranspose/Gemm/MatMul with constant weights to quantize")

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
        candidates, report.latency = place_for_latency(prepared, minmax, units, ctx.data.feeds, say)
        costs = {c.node: c for c in report.latency.layers}
        lat = report.latency
        for node in lat.kept_fp32_for_speed:
            c = costs[node]
            if c.pays is False:
                reason = f"speed: {_us(c.int8_us)} in INT8 vs {_us(c.fp32_us)} in FP32"
                reason += f" (not fused: {c.reason})" if not c.fused else ""
            else:  # its own profile did not condemn it (or could not be attributed); the whole model did
                reason = (
                    f"speed: the whole model is faster with it in FP32 ({lat.int8_ms:.2f} ms all-INT8, "
                    f"{lat.chosen_ms:.2f} ms without it; profiled {_us(c.int8_us)} in INT8 vs {_us(c.fp32_us)} in FP32)"
                )
            kept.append(KeptNode(node, c.op, reason))
        if report.latency.kept_fp32_for_speed:
            say(
                f"  {len(report.latency.kept_fp32_for_speed)} layer(s) stay FP32 for speed: "
                f"{report.latency.int8_ms:.2f} -> {report.latency.chosen_ms:.2f} ms per run"
            )
        if not candidates:
            say("  the model is fastest with no layer in INT8 on this machine: it stays FP32")

    scores: dict[str, float] = {}
    best: tuple[Comparison, CalibrationMethod, dict[str, float]] | None = None
    for method in methods if candidates else methods[:1]:
        amax = calibrator.amax(method)
        result = ctx.gate(build_with(amax)).evaluate(candidates)
        scores[method.value] = round(result.metric, 6)
        say(f"  {method.value:<10} {len(candidates)} ops INT8: {result.metric_name} {result.metric:.4f}")
        if best is None or result.metric > best[0].metric:
            best = (result, method, amax)
    assert best is not None
    first, method, amax = best
    say(f"calibration: {method.value}, {options.target.value} placement; accuracy gate")
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
    if timing and report.latency is not None and found.passed:
        timed = report.latency.chosen_ms
        if set(lowered) != set(candidates):  # accuracy fallbacks changed the model: time what ships
            fp32_ms, timed = time_models([prepared, gate.build(lowered)], ctx.data.feeds[:4], rounds=5, runs=10)
            report.latency.fp32_ms = round(fp32_ms, 3)
        report.latency.final_ms = timed if timed is None else round(timed, 3)
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
    if not found.passed:
        report.failure = _failure("INT8", report.accuracy, found.fallbacks)
        return None
    model = insert_qdq(prepared, amax, lowered, options.target, positive)
    if options.fallback is Precision.FP16:
        model = _int8_with_fp16(ctx, model, lowered, report.int8)
    extra["calibration.cache"] = format_cache(amax, options.trt_version)
    extra["calibration.json"] = format_amax_json(amax, method.value)
    extra["prepared_fp32.onnx"] = prepared.SerializeToString()  # the graph whose tensor names the cache uses
    return model


def _us(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.0f} us"


def _int8_with_fp16(
    ctx: _Conversion, int8: onnx.ModelProto, quantized: Sequence[str], q: Int8Report
) -> onnx.ModelProto:
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
    if not mixed:
        ctx.say(f"  FP16 for the rest fails the gate ({result.metric:.4f}); it stays FP32")
        return int8
    assert ctx.report.accuracy is not None
    ctx.report.accuracy.metric = result.metric
    ctx.report.accuracy.comparison = result
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
        f"{precision} accuracy gate failed: {accuracy.metric_name} {accuracy.metric:.4f} < required "
        f"{accuracy.required:.4f} after keeping {len(fallbacks)} node(s) in higher precision: {culprits}"
    )


def write_result(result: ConversionResult, out_dir: str | Path) -> list[Path]:
    """Write the package (if the conversion passed), report.json and summary.txt; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in INT8_FILES:
        if name not in result.extra_files:
            (out / name).unlink(missing_ok=True)  # never leave another conversion's cache beside this model
    if result.model is not None:
        onnx.save(result.model, str(out / ONNX_FILE))
        written.append(out / ONNX_FILE)
        if result.card is not None:
            (out / CARD_FILE).write_text(json.dumps(result.card, indent=2) + "\n")
            written.append(out / CARD_FILE)
            try:
                load_package(out)  # what we hand over must load like any package
            except PackageError as exc:
                raise ConversionError(f"converted package does not validate: {exc}") from None
        for name, content in result.extra_files.items():
            path = out / name
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
            written.append(path)
    else:
        for stale in (out / ONNX_FILE, out / CARD_FILE):
            stale.unlink(missing_ok=True)  # never leave an older model beside a failed report
    (out / "report.json").write_text(json.dumps(result.report.to_json(), indent=2) + "\n")
    (out / "summary.txt").write_text(summary_text(result.report) + "\n")
    return [*written, out / "report.json", out / "summary.txt"]


__all__ = [
    "ConversionReport",
    "ConversionResult",
    "ConvertOptions",
    "Precision",
    "convert_model",
    "load_model",
    "summary_text",
    "write_result",
]
