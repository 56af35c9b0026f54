"""`edgert convert`: prepare a model, convert its precision, and refuse to hand over a model that lost accuracy.

Steps: load (ONNX file, or a model package with its card) -> prepare (converters.prepare) -> check that the
prepared FP32 model still matches the original -> for FP16: measure activation ranges on the data, plan, convert,
and run the accuracy gate on the FP16 emulation. If the gate fails, bisect over the FP16 nodes in graph order to
find the node whose FP32 fallback makes it pass, keep it FP32, and repeat until the gate passes or the fallback
budget is spent. A model that fails its gate is not written; the report says which nodes were tried and by how much.
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from calibration.cache import format_amax_json, format_cache
from calibration.calibrators import CalibrationMethod, CalibratorOptions
from converters.data import EvalData, load_feeds
from converters.evaluate import DEFAULT_TOLERANCE, Comparison, Outputs, activation_ranges, compare, run_model
from converters.fp16 import Fp16Options, convert_fp16, emulate_fp16, plan_fp16
from converters.gate import Fallback, Gate, SearchResult
from converters.graph import ConversionError, model_size, real_inputs
from converters.int8 import QuantTarget, calibrate, insert_qdq, quantizable_nodes
from converters.prepare import DEFAULT_OPSET, PrepareOptions, PrepareReport, prepare
from edge_runtime import __version__
from edge_runtime.package import CARD_FILE, ONNX_FILE, ModelCard, PackageError, load_package, parse_card

INT8_FILES = ("calibration.cache", "calibration.json", "prepared_fp32.onnx")
PREPARE_MIN_COSINE = 0.99999  # preparation must not change results beyond float rounding

Progress = Callable[[str], None]


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


AUTO = "auto"  # calibration method: try every method and keep the one the gate scores best


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
    calib: str | None = None  # INT8 calibration source (default: --data); evaluation stays on --data
    calib_method: str = AUTO  # auto | minmax | percentile | entropy | mse
    percentile: float = 99.99
    target: QuantTarget = QuantTarget.ONNXRUNTIME
    fallback: Precision = Precision.FP32  # precision of INT8 layers the gate sends back (fp32 or fp16)
    trt_version: str = "10.3.0"  # version written into calibration.cache
    stride: int = 1
    shuffle: bool = False
    seed: int = 0


@dataclass
class ConversionResult:
    passed: bool
    model: onnx.ModelProto | None  # None when the accuracy gate failed
    card: dict[str, Any] | None
    report: dict[str, Any] = field(default_factory=dict)
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


def convert_model(
    path: str | Path,
    options: ConvertOptions = ConvertOptions(),
    card_path: str | Path | None = None,
    progress: Progress | None = None,
) -> ConversionResult:
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    original, card, raw_card, onnx_path = load_model(Path(path), Path(card_path) if card_path else None)
    report: dict[str, Any] = {
        "edgert_version": __version__,
        "input": {"path": str(onnx_path), "sha256": _sha256(original), "size_bytes": model_size(original)},
        "options": {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(options).items()},
        "precision": options.precision.value,
    }
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
    say(f"preparing the graph (target opset {options.target_opset})")
    prepared, prep = prepare(
        original, PrepareOptions(target_opset=options.target_opset, input_shapes=shapes), lambda s: say(f"  {s}")
    )
    report["prepare"] = asdict(prep)
    data = None
    source = options.data or (options.calib if options.precision is Precision.INT8 else None)
    if source:
        say(f"loading evaluation data from {source}")
        data = load_feeds(source, prepared, card, options.samples, options.stride, options.shuffle, options.seed)
        report["data"] = {
            "description": data.description,
            "samples": len(data.feeds),
            "representative": data.representative,
        }
    elif options.precision is Precision.FP16:
        raise ConversionError(
            "--precision fp16 needs --data SOURCE: activation ranges and the accuracy gate are measured on it"
        )
    elif options.precision is Precision.INT8:
        raise ConversionError("--precision int8 needs --calib SOURCE (and optionally --data for evaluation)")

    reference: list[Outputs] = []
    if data is not None:
        say(f"running the original model on {len(data.feeds)} samples")
        reference = run_model(original, data.feeds)
        check = compare(reference, run_model(prepared, data.feeds))
        report["prepare_check"] = check.to_json()
        if check.metric < PREPARE_MIN_COSINE:
            raise ConversionError(
                f"preparation changed the model's outputs (cosine {check.metric:.6f}); please report this model"
            )
    model: onnx.ModelProto | None = prepared
    passed = True
    extra: dict[str, str | bytes] = {}
    if options.precision is Precision.FP16:
        assert data is not None
        model, passed = _to_fp16(prepared, data, reference, card, options, report, say)
    elif options.precision is Precision.INT8:
        assert data is not None
        calib = data
        if options.calib and options.data and options.calib != options.data:
            say(f"loading calibration data from {options.calib}")
            calib = load_feeds(
                options.calib, prepared, card, options.samples, options.stride, options.shuffle, options.seed
            )
        model, passed = _to_int8(prepared, calib, data, reference, card, options, report, extra, say)
    report["output"] = None
    if model is not None:
        report["output"] = {
            "sha256": _sha256(model),
            "size_bytes": model_size(model),
            "size_ratio": round(model_size(model) / max(1, report["input"]["size_bytes"]), 4),
        }
    report["passed"] = passed
    report["seconds"] = round(time.perf_counter() - started, 2)
    out_card = None
    if raw_card is not None and model is not None:
        out_card = {**raw_card, "onnx_sha256": report["output"]["sha256"], "conversion": _card_note(report)}
    return ConversionResult(passed, model, out_card, report, extra)


def _to_fp16(
    prepared: onnx.ModelProto,
    data: EvalData,
    reference: list[Outputs],
    card: ModelCard | None,
    options: ConvertOptions,
    report: dict[str, Any],
    say: Progress,
) -> tuple[onnx.ModelProto | None, bool]:
    ranges = None
    if options.use_ranges:
        say("measuring activation ranges")
        ranges = activation_ranges(prepared, data.feeds)
    plan = plan_fp16(prepared, ranges, Fp16Options(range_margin=options.range_margin))
    say(f"planned {len(plan.fp16_nodes)} of {len(prepared.graph.node)} nodes in FP16")
    ops = {n.name: n.op_type for n in prepared.graph.node}
    fp16 = list(plan.fp16_nodes)
    passed = True
    fallbacks: list[Fallback] = []
    if options.gate:
        say("accuracy gate: FP16 emulation vs the FP32 original")
        gate = Gate(
            lambda nodes: emulate_fp16(convert_fp16(prepared, nodes)),
            data,
            reference,
            card,
            _tolerance(card, options),
            optimize=False,
        )
        found = gate.search(fp16, _budget(prepared, options), ops, say)
        fp16, fallbacks, passed = found.lowered, found.fallbacks, found.passed
        for f in fallbacks:
            plan.fp32_nodes[f.node] = (
                f"accuracy: {found.final.metric_name} {f.metric_before:.4f} -> {f.metric_after:.4f} with this node in FP32"
            )
        report["accuracy"] = _accuracy(found, gate)
    report["fp16"] = {
        "nodes": len(prepared.graph.node),
        "fp16_nodes": len(fp16),
        "fp32_nodes": [{"node": n, "op": ops.get(n, "?"), "reason": r} for n, r in plan.fp32_nodes.items()],
        "range_margin": options.range_margin,
        "ranges_measured": options.use_ranges,
    }
    report["fallback"] = [asdict(f) for f in fallbacks]
    if not passed:
        report["failure"] = _failure("FP16", report["accuracy"], fallbacks)
        return None, False
    return convert_fp16(prepared, fp16), True


def _to_int8(
    prepared: onnx.ModelProto,
    calib: EvalData,
    data: EvalData,
    reference: list[Outputs],
    card: ModelCard | None,
    options: ConvertOptions,
    report: dict[str, Any],
    extra: dict[str, str | bytes],
    say: Progress,
) -> tuple[onnx.ModelProto | None, bool]:
    methods = list(CalibrationMethod) if options.calib_method == AUTO else [CalibrationMethod(options.calib_method)]
    say(f"calibrating on {calib.description}")
    calibrator = calibrate(prepared, calib.feeds, CalibratorOptions(percentile=options.percentile))
    positive = calibrator.non_negative()
    units = quantizable_nodes(prepared)
    if not units:
        raise ConversionError("the model has no Conv/ConvTranspose/Gemm/MatMul with constant weights to quantize")
    ops = {n.name: n.op_type for n in prepared.graph.node}
    tolerance = _tolerance(card, options)

    def gate_for(amax: dict[str, float]) -> Gate:
        return Gate(
            lambda on: insert_qdq(prepared, amax, on, options.target, positive), data, reference, card, tolerance
        )

    scores: dict[str, float] = {}
    best: tuple[Comparison, CalibrationMethod, dict[str, float]] | None = None
    for method in methods:
        amax = calibrator.amax(method)
        result = gate_for(amax).evaluate(units)
        scores[method.value] = round(result.metric, 6)
        say(f"  {method.value:<10} every op INT8: {result.metric_name} {result.metric:.4f}")
        if best is None or result.metric > best[0].metric:
            best = (result, method, amax)
    assert best is not None
    all_int8, method, amax = best
    say(f"calibration: {method.value}, {options.target.value} placement; accuracy gate")
    gate = gate_for(amax)
    found = gate.search(units, _budget(prepared, options), ops, say, first=all_int8)  # already measured
    report["accuracy"] = _accuracy(found, gate)
    report["fallback"] = [asdict(f) for f in found.fallbacks]
    report["int8"] = {
        "target": options.target.value,
        "method": method.value,
        "method_scores": scores,
        "calibration": calib.description,
        "quantizable_ops": len(units),
        "int8_ops": len(found.lowered),
        "kept_higher_precision": [
            {"node": f.node, "op": f.op, "reason": f"accuracy: {f.metric_before:.4f} -> {f.metric_after:.4f}"}
            for f in found.fallbacks
        ],
        "fallback_precision": Precision.FP32.value,
        "trt_version": options.trt_version,
    }
    if not found.passed:
        report["failure"] = _failure("INT8", report["accuracy"], found.fallbacks)
        return None, False
    model = insert_qdq(prepared, amax, found.lowered, options.target, positive)
    if options.fallback is Precision.FP16:
        model = _int8_with_fp16(prepared, model, found.lowered, data, reference, card, tolerance, report, say)
    extra["calibration.cache"] = format_cache(amax, options.trt_version)
    extra["calibration.json"] = format_amax_json(amax, method.value)
    extra["prepared_fp32.onnx"] = prepared.SerializeToString()  # the graph whose tensor names the cache uses
    return model, True


def _int8_with_fp16(
    prepared: onnx.ModelProto,
    int8: onnx.ModelProto,
    quantized: Sequence[str],
    data: EvalData,
    reference: list[Outputs],
    card: ModelCard | None,
    tolerance: float,
    report: dict[str, Any],
    say: Progress,
) -> onnx.ModelProto:
    """Mixed precision: what is not INT8 runs in FP16 where the gate allows; quantized ops keep their DQ inputs."""
    say("mixed precision: layers outside INT8 in FP16")
    plan = plan_fp16(int8, activation_ranges(prepared, data.feeds), Fp16Options(force_fp32=frozenset(quantized)))
    gate = Gate(lambda nodes: emulate_fp16(convert_fp16(int8, nodes)), data, reference, card, tolerance, optimize=False)
    result = gate.evaluate(plan.fp16_nodes)
    mixed = gate.passes(result)
    report["int8"]["fallback_precision"] = (Precision.FP16 if mixed else Precision.FP32).value
    report["int8"]["fp16_nodes"] = len(plan.fp16_nodes) if mixed else 0
    report["int8"]["mixed_metric"] = result.metric
    if not mixed:
        say(f"  FP16 for the rest fails the gate ({result.metric:.4f}); it stays FP32")
        return int8
    report["accuracy"]["metric"] = result.metric
    report["accuracy"]["comparison"] = result.to_json()
    return convert_fp16(int8, plan.fp16_nodes)


def _tolerance(card: ModelCard | None, options: ConvertOptions) -> float:
    task = card.task.name.lower() if card else "numeric"
    return options.tolerance if options.tolerance is not None else DEFAULT_TOLERANCE[task]


def _budget(prepared: onnx.ModelProto, options: ConvertOptions) -> int:
    return options.max_fallback if options.max_fallback is not None else max(4, len(prepared.graph.node) // 4)


def _accuracy(found: SearchResult, gate: Gate) -> dict[str, Any]:
    return {
        "metric_name": found.final.metric_name,
        "metric": found.final.metric,
        "required": gate.required,
        "tolerance": 1.0 - gate.required,
        "before_fallback": found.first.metric,
        "passed": found.passed,
        "evaluations": found.evaluations,
        "comparison": found.final.to_json(),
    }


def _failure(precision: str, accuracy: Mapping[str, Any], fallbacks: Sequence[Fallback]) -> str:
    culprits = (
        ", ".join(f"{f.op} '{f.node}' ({f.metric_before:.4f} -> {f.metric_after:.4f})" for f in fallbacks)
        or "none found"
    )
    return (
        f"{precision} accuracy gate failed: {accuracy['metric_name']} {accuracy['metric']:.4f} < required "
        f"{accuracy['required']:.4f} after keeping {len(fallbacks)} node(s) in higher precision: {culprits}"
    )


def _card_note(report: Mapping[str, Any]) -> dict[str, Any]:
    note: dict[str, Any] = {
        "precision": report["precision"],
        "from_sha256": report["input"]["sha256"],
        "tool": f"edgert {report['edgert_version']}",
    }
    if "accuracy" in report:
        acc = report["accuracy"]
        note["accuracy_vs_original"] = {acc["metric_name"]: round(acc["metric"], 6)}
    if "fp16" in report:
        note["fp32_nodes"] = len(report["fp16"]["fp32_nodes"])
    if "int8" in report:
        q = report["int8"]
        note.update(
            target=q["target"], calibration=q["method"], int8_ops=q["int8_ops"], fallback=q["fallback_precision"]
        )
    return note


def summary_text(report: Mapping[str, Any]) -> str:
    """The report as a few readable lines, for the terminal and summary.txt."""
    prep = report["prepare"]
    lines = [
        f"edgert convert -> {report['precision'].upper()}: {'PASSED' if report['passed'] else 'FAILED'}",
        f"  input      {report['input']['path']} ({report['input']['size_bytes'] / 1024:.1f} KiB)",
        f"  prepare    opset {prep['opset_before']} -> {prep['opset_after']}, nodes {prep['nodes_before']} -> {prep['nodes_after']} "
        f"(constants folded {prep['constants_folded']}, BatchNorm folded {prep['batchnorms_folded']}, "
        f"pass-through nodes removed {prep['identities_removed']}, dead removed {prep['dead_nodes_removed']})",
    ]
    if prep["shapes_fixed"]:
        lines.append(f"  shapes     fixed {prep['shapes_fixed']}")
    if "data" in report:
        lines.append(f"  data       {report['data']['description']}")
    if "prepare_check" in report:
        c = report["prepare_check"]
        lines.append(
            f"  check      prepared FP32 vs original: min cosine {c['metric']:.7f}, max |diff| {max(o['max_abs'] for o in c['outputs']):.3g}"
        )
    if "fp16" in report:
        f = report["fp16"]
        lines.append(f"  fp16       {f['fp16_nodes']} of {f['nodes']} nodes in FP16, {len(f['fp32_nodes'])} kept FP32")
        for item in f["fp32_nodes"]:
            lines.append(f"               {item['op']} '{item['node']}': {item['reason']}")
    if "int8" in report:
        q = report["int8"]
        scores = ", ".join(f"{k} {v:.4f}" for k, v in q["method_scores"].items())
        lines.append(f"  int8       {q['int8_ops']} of {q['quantizable_ops']} weighted ops INT8 ({q['target']} placement), "
                     f"calibration {q['method']} (gate scores: {scores})")  # fmt: skip
        for item in q["kept_higher_precision"]:
            lines.append(
                f"               {item['op']} '{item['node']}' kept {q['fallback_precision'].upper()}: {item['reason']}"
            )
    if "accuracy" in report:
        a = report["accuracy"]
        lines.append(
            f"  accuracy   {a['metric_name']} {a['metric']:.4f} (required >= {a['required']:.4f}; "
            f"before fallback {a['before_fallback']:.4f}; {a['evaluations']} evaluations)"
        )
    if report.get("output"):
        o = report["output"]
        lines.append(f"  output     {o['size_bytes'] / 1024:.1f} KiB ({o['size_ratio']:.2f}x the input)")
    if report.get("failure"):
        lines.append(f"  failure    {report['failure']}")
    lines.append(f"  time       {report['seconds']:.1f} s")
    return "\n".join(lines)


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
    (out / "report.json").write_text(json.dumps(result.report, indent=2, default=_json_default) + "\n")
    (out / "summary.txt").write_text(summary_text(result.report) + "\n")
    return [*written, out / "report.json", out / "summary.txt"]


def _json_default(value: object) -> object:
    if isinstance(value, float):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


__all__ = [
    "ConvertOptions",
    "ConversionResult",
    "Precision",
    "PrepareReport",
    "convert_model",
    "summary_text",
    "write_result",
]
