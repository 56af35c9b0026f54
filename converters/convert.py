"""`edgert convert`: prepare a model, prune it or lower its precision, and refuse to hand over a model whose
accuracy did not hold on frames it never saw.

Stages: load (an ONNX file, or a model package with its card) -> prepare (`converters.prepare`) -> check that the
prepared FP32 model still matches the original -> the lossy stages (`converters.stages`: channel pruning, 2:4,
FP16, INT8), each choosing on the **search** split with the gate (`converters.gate`), INT8 and pruning measuring
on the **calibration** split -> the verdict on the **verify** split, frames used for nothing else
(`converters.judge`: the worst class, by its bootstrap lower bound, with enough support). Splits of one source are
disjoint. Every decision is recorded in the report's plan (`converters.plan`); `--plan` replays one. A model that
fails is not written; the typed report (`converters.report`) says why.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from calibration.sources import Sampling, Split
from converters.data import Card, EvalData, is_random, load_splits
from converters.evaluate import compare, default_tolerance, head_of, run_model
from converters.fp16 import emulate_fp16
from converters.graph import ConversionError, model_size, real_inputs
from converters.judge import JudgeOptions
from converters.options import ConvertOptions, options_from_json, options_to_json
from converters.plan import Plan, load_plan
from converters.prepare import PrepareOptions, prepare
from converters.progress import Progress
from converters.report import (
    ConversionReport,
    DataInfo,
    ModelFile,
    OutputFile,
    Precision,
    ReplayCheck,
    VerifyReport,
    card_note,
    summary_text,
)
from converters.sparsity import check_2_4
from converters.stages import Conversion, fp16_stage, int8_stage, prune_stage, sparsity_stage
from edge_runtime import __version__
from edge_runtime.core.package import (
    CARD_FILE,
    ONNX_FILE,
    RAW_TASK,
    ModelCard,
    PackageError,
    load_package,
    parse_card,
    parse_input_card,
)

INT8_FILES = ("calibration.cache", "calibration.json", "prepared_fp32.onnx")
PREPARE_MIN_COSINE = 0.99999  # preparation must not change results beyond float rounding


@dataclass
class ConversionResult:
    passed: bool
    model: onnx.ModelProto | None  # None when the accuracy gate failed
    card: dict[str, Any] | None
    report: ConversionReport
    extra_files: dict[str, str | bytes] = field(default_factory=dict)  # calibration cache, amax table, ...


def derived_version(version: str, tags: tuple[str, ...]) -> str:
    """The original's version with the conversion's tags as semver build metadata: `1.0.0` -> `1.0.0+int8`, and a
    converted `1.0.0+pruned` converted again -> `1.0.0+pruned.int8`."""
    return f"{version}{'.' if '+' in version else '+'}{'.'.join(tags)}"


def load_model(path: Path, card_path: Path | None) -> tuple[onnx.ModelProto, Card | None, dict[str, Any] | None, Path]:
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
        if isinstance(raw, dict) and raw.get("task") == RAW_TASK:  # no decoder: frames in, outputs judged as numbers
            return model, parse_input_card(raw, where=str(card_path)), raw, path
        return model, parse_card(raw, where=str(card_path)), raw, path
    except (OSError, json.JSONDecodeError, PackageError) as exc:
        raise ConversionError(f"{card_path}: {exc}") from None


def _sha256(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


DEFAULT_SOURCE = "synthetic"  # calibration and evaluation data for a package when none is given


def default_data(card: Card | None) -> str:
    """The frames a command runs on when none are given: like the model's own (its card's `data_source`, else
    synthetic), or random tensors for a bare graph, which has no preprocessing to make frames into inputs."""
    if card is None:
        return "random"
    return card.data_source or DEFAULT_SOURCE


def _sources(options: ConvertOptions, card: Card | None) -> tuple[str | None, str | None]:
    """(evaluation source, calibration source). Either defaults to the other; with a card and neither given, INT8,
    FP16 and pruning use the card's `data_source`, else synthetic ultrasound images (said in the progress output
    and the report)."""
    data = options.data or options.calib
    calib = options.calib or options.data
    measured = options.precision is not Precision.FP32 or options.prune is not None
    if measured and data is None and card is not None:
        data = calib = default_data(card)
    return data, (calib if options.precision is Precision.INT8 or options.prune is not None else None)


def _lossy(options: ConvertOptions) -> bool:
    return options.precision is not Precision.FP32 or options.prune is not None


def _refuse_random(options: ConvertOptions, sources: Sequence[str | None]) -> None:
    """Pruning, INT8 and 2:4 change what the model answers; random tensors cannot say by how much."""
    lossy = options.precision is Precision.INT8 or options.prune is not None
    if lossy and any(s is not None and is_random(s) for s in sources):
        what = f"--prune {options.prune.value}" if options.prune is not None else "--precision int8"
        raise ConversionError(
            f"{what} cannot be judged on random tensors (a pruned model passed on noise and found no box on real "
            "images): give frames like the model's own with --data SOURCE (DICOM, images, video, .npy or a folder; "
            "a package or --card gives the preprocessing); random data checks lossless steps only"
        )


def _static_inputs(model: onnx.ModelProto) -> None:
    """Channel pruning follows every tensor's shape: a symbolic dimension has to be fixed first."""
    for inp in real_inputs(model.graph):
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in inp.type.tensor_type.shape.dim
        ]
        if not all(isinstance(d, int) for d in dims):
            fixed = ",".join(str(d) if isinstance(d, int) else "1" for d in dims)
            raise ConversionError(
                f"--prune needs static shapes; input '{inp.name}' is {dims}: add --fix-shapes (the card's shape) "
                f"or --input-shape {fixed}"
            )


def convert_model(
    path: str | Path,
    options: ConvertOptions = ConvertOptions(),
    card_path: str | Path | None = None,
    progress: Progress | None = None,
    plan: Plan | str | Path | None = None,
) -> ConversionResult:
    """Convert a model as `options` say, or replay `plan` (a Plan, or a report.json holding one): the plan's
    options and decisions, nothing measured, then the verify gate."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    replay = load_plan(plan) if isinstance(plan, str | Path) else plan
    if replay is not None:
        try:
            options = options_from_json(replay.options)
        except (TypeError, ValueError) as exc:
            raise ConversionError(f"the plan's options: {exc}") from None
    original, card, raw_card, onnx_path = load_model(Path(path), Path(card_path) if card_path else None)
    input_sha = _sha256(original)
    if replay is not None and replay.input_sha256 != input_sha:
        raise ConversionError(
            f"the plan was made from a model with sha256 {replay.input_sha256[:16]}..., not this one "
            f"({input_sha[:16]}...)"
        )
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
    if eval_source is None and _lossy(options):
        what = f"--precision {options.precision.value}" if options.prune is None else "--prune"
        raise ConversionError(
            f"{what} without a model card needs --data SOURCE (or --calib) and --card model.json: activation ranges, "
            "channel importance and the accuracy gate are measured on frames like the model's own"
        )
    _refuse_random(options, [eval_source, calib_source, options.verify])
    say(f"preparing the graph (target opset {options.target_opset})")
    prepared, prep = prepare(
        original, PrepareOptions(target_opset=options.target_opset, input_shapes=shapes), lambda s: say(f"  {s}")
    )
    if options.prune is not None and options.prune.channels:
        _static_inputs(prepared)
    report = ConversionReport(
        edgert_version=__version__,
        input=ModelFile(str(onnx_path), input_sha, model_size(original)),
        options=options,
        precision=options.precision,
        prepare=prep,
    )
    record = report.plan = Plan(__version__, input_sha, options_to_json(options))
    model: onnx.ModelProto | None = prepared
    extra: dict[str, str | bytes] = {}
    if eval_source is not None:
        if options.data is None and options.calib is None:
            what = "the card's data_source" if card is not None and card.data_source else "synthetic ultrasound images"
            say(f"no --data or --calib given: using {eval_source}, {what} (pass your own frames for a real check)")
        splits = _load_splits(options, prepared, card, eval_source, calib_source, options.verify or eval_source, say)
        search = splits["search"]
        for name, part in splits.items():
            info = DataInfo(part.description, len(part.feeds), part.representative)
            if name == "search":
                report.data = info
            elif name == "calibration":
                report.calibration_data = info
            else:
                report.verify_data = info
        say(f"running the original model on the {len(search.feeds)} search frames")
        reference = run_model(original, search.feeds)
        report.prepare_check = check = compare(reference, run_model(prepared, search.feeds))
        if check.metric < PREPARE_MIN_COSINE:
            raise ConversionError(
                f"preparation changed the model's outputs (cosine {check.metric:.6f}); please report this model"
            )
        head = head_of(card) if isinstance(card, ModelCard) else None  # a raw card: outputs judged as numbers
        tolerance = options.tolerance if options.tolerance is not None else default_tolerance(head)
        ctx = Conversion(prepared, search, reference, head, tolerance, options, report, say, record, replay)
        calib = splits.get("calibration")
        if options.prune is not None and options.prune.channels:
            assert calib is not None
            ctx.prepared = model = prune_stage(ctx, calib)
        if options.prune is not None and options.prune.sparse:
            assert calib is not None
            ctx.prepared = model = sparsity_stage(ctx, calib)
        if options.precision is Precision.FP16:
            model = fp16_stage(ctx)
        elif options.precision is Precision.INT8:
            assert calib is not None
            model = int8_stage(ctx, calib, extra)
        if model is not None and report.sparsity is not None and report.sparsity.applied:
            problems = check_2_4(model, report.sparsity.applied)
            if problems:  # a claim in the card that the engine builder would act on: never ship it false
                raise ConversionError("the 2:4 pattern did not survive conversion: " + "; ".join(problems[:5]))
            report.sparsity.verified = True
        if model is not None and _lossy(options) and options.gate:
            model = _verify(ctx, original, model, splits["verify"])
    report.passed = model is not None
    if model is not None:
        size = model_size(model)
        report.output = OutputFile(_sha256(model), size, round(size / max(1, report.input.size_bytes), 4))
        record.output_sha256 = report.output.sha256
    if replay is not None:
        made = report.output.sha256 if report.output is not None else None
        report.replay = ReplayCheck(replay.output_sha256, made, made is not None and made == replay.output_sha256)
        say(f"replay: {'byte-identical to' if report.replay.identical else 'DIFFERENT from'} the planned model")
    report.seconds = round(time.perf_counter() - started, 2)
    out_card = None
    if raw_card is not None and model is not None and report.output is not None:
        out_card = {**raw_card, "version": derived_version(str(raw_card.get("version", "")), report.version_tags),
                    "onnx_sha256": report.output.sha256, "conversion": card_note(report)}  # fmt: skip
        metrics = out_card.pop("metrics", None)
        if metrics:  # the original's figures, kept as such: never shown as this artifact's own
            out_card["conversion"]["original_metrics"] = metrics
    return ConversionResult(report.passed, model, out_card, report, extra)


def _load_splits(
    options: ConvertOptions,
    prepared: onnx.ModelProto,
    card: Card | None,
    eval_source: str,
    calib_source: str | None,
    verify_source: str,
    say: Progress,
) -> dict[str, EvalData]:
    """Calibration (seed offset 0), search (1) and verify (2) splits; disjoint where they share a source."""
    wanted: dict[str, tuple[str, Split]] = {}
    if calib_source is not None:
        wanted["calibration"] = (calib_source, Split("calibration", options.samples, 0))
    wanted["search"] = (eval_source, Split("search", options.search_samples, 1))
    if _lossy(options) and options.gate:
        wanted["verify"] = (verify_source, Split("verify", options.verify_samples, 2))
    say("loading " + ", ".join(f"{n} ({s.count} frames of {src})" for n, (src, s) in wanted.items()))
    sampling = Sampling(options.samples, options.stride, options.sample_order, options.seed)
    return load_splits(wanted, prepared, card, sampling)


def _verify(
    ctx: Conversion, original: onnx.ModelProto, model: onnx.ModelProto, verify: EvalData
) -> onnx.ModelProto | None:
    """The verdict: the model that ships against the original on the verify split, by the worst class's lower
    bound; a class the split shows too rarely fails the verdict with a request for data."""
    report, say = ctx.report, ctx.say
    fp16 = report.fp16 is not None or (report.int8 is not None and report.int8.fp16_nodes > 0)
    say(f"verify: the model that ships vs the original on {len(verify.feeds)} frames used for nothing else")
    cpu = ctx.options.cpu  # the cart's sessions, as the gate's
    reference = run_model(original, verify.feeds, cpu=cpu)
    candidate = run_model(emulate_fp16(model) if fp16 else model, verify.feeds, optimize=not fp16, cpu=cpu)
    c = compare(reference, candidate, ctx.head, JudgeOptions(min_support=ctx.options.min_support))
    required = 1.0 - ctx.tolerance
    assert c.verdict is not None
    reason = ""
    if not c.verdict.judged and report.shipped != "FP32":  # a model that is the FP32 graph needs no support
        reason = c.verdict.shortfall()
    elif c.lower_bound < required:
        reason = (
            f"the worst class '{c.verdict.worst}' scores {c.metric:.4f}, lower bound {c.lower_bound:.4f} < required "
            f"{required:.4f}"
        )
        if c.metric >= required:
            reason += f"; the figure itself clears it: more verify frames (now {c.samples}) narrow the bound"
        if report.prune is not None and report.prune.used > 0:
            reason += f"; a --prune-budget below {report.prune.used:.2f} removes less"
    report.verify = VerifyReport(
        DataInfo(verify.description, len(verify.feeds), verify.representative), c, required, not reason, reason
    )
    say(
        f"  {c.metric_name}: {c.metric:.4f}, lower bound {c.lower_bound:.4f} (required >= {required:.4f}; worst "
        f"'{c.verdict.worst}'){': ' + reason if reason else ''}"
    )
    if reason:
        report.failure = f"verify split: {reason}"
        return None
    return model


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
                if result.card.get("task") == RAW_TASK:  # the input half only: never a servable package
                    parse_input_card(result.card, where=str(out / CARD_FILE))
                else:
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
