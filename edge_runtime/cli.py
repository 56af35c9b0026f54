"""`edgert`: a thin command line over the library. Each subcommand imports what it needs when it runs.

Conventions shared by every subcommand: `-v`/`-q` raise and lower the log and progress output; `--json [PATH|-]`
writes the command's result as JSON to a file or to stdout (the human-readable lines then go to stderr); a data
source is named the same way everywhere (`SOURCE_HELP`); exit codes are `ExitCode`. Expected failures (every
`EdgertError`) print one line naming the subcommand, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from calibration.preprocessing import DicomOutput
from edge_runtime import __version__
from edge_runtime.backends.base import Spin
from edge_runtime.backends.sessions import CpuSetup
from edge_runtime.core.errors import EdgertError, escaped

log = logging.getLogger("edgert")


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # the command failed (bad input, unreachable daemon, unhealthy daemon, ...)
    USAGE = 2  # the command line itself is wrong (argparse's status)
    GATE_FAILED = 3  # a conversion or comparison was refused by the accuracy gate: not a crash
    CHAIN_BROKEN = 4  # `audit verify` found an edited, inserted or deleted record
    INTERRUPTED = 130


ERROR_CHARS = 4000  # an error is one line: long enough for any of ours, escaped so no file name breaks it
EXIT_CODES_HELP = (
    "exit status: 0 ok, 1 error, 2 usage error, 3 accuracy gate failed (convert, compare --tolerance, bench with a "
    "conversion), 4 audit chain broken (audit verify)"
)
SOURCE_HELP = (
    "a frame source: a DICOM file or folder, images (PNG/JPEG/TIFF, 8 or 16 bit), a video, a .npy/.npz array, a "
    "folder of these, or synthetic[:frames=N,size=HxW,seed=S,fps=F,clip=K]; random[:seed=S] gives standard-normal "
    "tensors (numeric checks only)"
)


BACKENDS = ["onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"]
BACKEND_HELP = (
    "onnxruntime (CPU, default), onnxruntime-cuda / onnxruntime-tensorrt (onnxruntime-gpu's providers), tensorrt "
    "(an engine built on this device, see `edgert build`)"
)


class CliError(EdgertError):
    """An expected failure of a subcommand: printed as one line, exit status 1, no traceback."""


class UsageError(EdgertError):
    """A command line that parsed but makes no sense: printed as one line, exit status 2."""


class Output:
    """Where a subcommand's lines go: stdout, or stderr when the JSON result goes to stdout; progress lines only
    without -q."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json_target: str | None = getattr(args, "json", None)
        self.quiet = _verbosity(args) < 0
        self.text: TextIO = sys.stderr if self.json_target == "-" else sys.stdout
        self._started = time.perf_counter()

    def say(self, line: str) -> None:
        print(line, file=self.text, flush=True)

    def progress(self, line: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self._started:6.1f}s] {line}", file=sys.stderr, flush=True)

    def result(self, payload: Mapping[str, Any]) -> None:
        """Write the JSON result where --json says (nothing without --json)."""
        if self.json_target is None:
            return
        text = json.dumps(payload, indent=2, default=str) + "\n"
        if self.json_target == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            Path(self.json_target).write_text(text)


def _verbosity(args: argparse.Namespace) -> int:
    return int(
        getattr(args, "verbose", 0)
        + getattr(args, "verbose_sub", 0)
        - getattr(args, "quiet", 0)
        - getattr(args, "quiet_sub", 0)
    )


# -- serve, ctl, keys, package ------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace, out: Output) -> int:
    import dataclasses

    from edge_runtime.core.package import demo_package_path
    from edge_runtime.daemon.config import apply_overrides, build_config, load_config
    from edge_runtime.daemon.server import Daemon

    overrides = {
        "model.package": args.model,
        "model.backend": args.backend,
        "model.threads": args.threads,
        "model.device": args.device,
        "ingest.endpoint": args.ingest,
        "ingest.mode": args.ingest_mode,
        "ingest.pattern": args.ingest_pattern,
        "ingest.format": args.ingest_format,
        "results.endpoint": args.results,
        "control.endpoint": args.control,
        "heartbeat.interval_ms": args.heartbeat_ms,
        "metrics.endpoint": args.metrics,
        "preview.enabled": True if args.preview else None,
        "preview.endpoint": args.preview,
        "security.server_key": str(args.server_key) if args.server_key else None,
        "security.authorized_clients": str(args.authorized_clients) if args.authorized_clients else None,
        "audit.path": str(args.audit) if args.audit else None,
    }
    if args.config:
        config = load_config(args.config, overrides)
    else:
        data = apply_overrides({"model": {"package": str(demo_package_path())}}, overrides)
        config = build_config(data, Path.cwd(), where="command line")
    engine_source = None
    if config.backend.needs_engine:
        from converters.engine import BuildOptions, daemon_engine_source

        e = config.engine
        options = BuildOptions(workspace_mib=e.workspace_mib, opt_level=e.opt_level, dla_core=e.dla_core,
                               timing_cache=e.timing_cache, device=config.device)  # fmt: skip
        engine_source = daemon_engine_source(options, e.cache_dir, e.build_on_start, e.on_mismatch)
    return Daemon(dataclasses.replace(config, ready_file=args.ready_file), engine_source).run()


def _ctl(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.sdk.control import RELOAD_TIMEOUT_S, STATUS_TIMEOUT_S, ControlClient, reload_request

    reload = args.action == "reload"
    timeout = args.timeout if args.timeout is not None else (RELOAD_TIMEOUT_S if reload else STATUS_TIMEOUT_S)
    client = ControlClient(args.control, keys=_client_keys(args), timeout_s=timeout)
    if args.action == "health":  # for scripts and service managers: one line, and the exit status
        healthy, state = client.healthy()
        out.say(f"{'healthy' if healthy else 'unhealthy'}: {state}")
        out.result({"healthy": healthy, "state": state})
        return ExitCode.OK if healthy else ExitCode.ERROR
    if reload:
        if not args.package:
            raise UsageError("reload needs a model package path: edgert ctl reload PACKAGE")
        reply = client.exchange(reload_request(args.package))  # printed as it is, a refusal included
    else:
        if args.package:
            raise UsageError(f"{args.action} takes no package argument")
        reply = client.exchange(args.action)
    if out.json_target is None:
        out.say(json.dumps(reply, indent=2))
    out.result(reply)
    if not reply.get("ok"):
        raise CliError(str(reply.get("error", "the daemon refused the request")))
    return ExitCode.OK


def _key_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-key", type=Path, help="CURVE: the daemon's public .key file")
    p.add_argument("--client-key", type=Path, help="CURVE: this client's .key_secret file (its .key in the "
                   "daemon's authorized_clients folder)")  # fmt: skip


def _client_keys(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from edge_runtime.sdk.security import ClientKeys

    if not args.server_key and not args.client_key:
        return None
    if not (args.server_key and args.client_key):
        raise UsageError("CURVE needs both --server-key (the daemon's .key) and --client-key (your .key_secret)")
    return ClientKeys.from_files(args.server_key, args.client_key)


def _keys(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.sdk.security import generate_keys

    public, secret = generate_keys(args.name, args.dir)
    out.say(f"public key  {public}   (give to the other side: the daemon's authorized_clients folder, or clients)")
    out.say(f"secret key  {secret}   (stays on this device, mode 600)")
    out.result({"public": str(public), "secret": str(secret)})
    return ExitCode.OK


def _audit(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.daemon.audit import verify

    found = verify(args.file, expected_head=args.head)
    names = ", ".join(f.name for f in found.files)
    out.say(f"{'ok' if found.ok else 'BROKEN'}: {found.records} records in {len(found.files)} file(s) ({names})")
    if found.records:
        start = "the first record ever" if found.complete_history else f"record {found.first_seq} (older rotated away)"
        out.say(f"  from {start} to record {found.head_seq}, head {found.head}")
        out.say(
            "  ends with a clean stop" if found.ends_with_stop else "  open: the daemon is running, or its end was cut"
        )
    for problem in found.problems:
        out.say(f"  {problem}")
    out.result({"ok": found.ok, "records": found.records, "files": [str(f) for f in found.files],
                "first_seq": found.first_seq, "head_seq": found.head_seq, "head": found.head,
                "complete_history": found.complete_history, "ends_with_stop": found.ends_with_stop,
                "problems": found.problems})  # fmt: skip
    return ExitCode.OK if found.ok else ExitCode.CHAIN_BROKEN


def _package(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.core.package import CARD_FILE, demo_package_path, open_package

    with open_package(args.package or demo_package_path()) as pkg:  # an archive's folder is gone after
        card = pkg.card
        raw_card = json.loads((pkg.root / CARD_FILE).read_text())
    spec = card.preprocess
    where = args.package or pkg.root
    onnx_file = pkg.onnx_path if Path(where).is_dir() else f"{where}: model.onnx"
    out.say(f"{card.name} {card.version} ({card.task.label}) - valid")
    out.say(f"  onnx      {onnx_file} sha256 {pkg.sha256}")
    out.say(f"  input     '{card.input_name}' {list(spec.input_shape)} {spec.layout.value}, color {spec.color.value}, "
            f"resize {spec.resize.value}, mean {list(spec.mean)} std {list(spec.std)}")  # fmt: skip
    out.say(f"  output    '{card.output.name}' {card.output.decode.value} over {list(card.output.labels)}")
    if card.metrics:
        out.say(f"  metrics   {json.dumps(card.metrics)}")
    out.result({"valid": True, "path": str(where), "sha256": pkg.sha256, "card": raw_card})
    return ExitCode.OK


# -- replay and demo ----------------------------------------------------------------------------------------------
def _replay(args: argparse.Namespace, out: Output) -> int:
    from calibration.sources import open_source
    from edge_runtime.core.protocol import Limits
    from edge_runtime.sdk.sender import FrameSender
    from edge_runtime.tools.replay import replay

    limits = Limits()
    if args.config is not None:
        from edge_runtime.daemon.config import load_config

        limits = load_config(args.config).limits
    source = open_source(args.source, DicomOutput(args.dicom), limits.image)
    out.progress(f"replaying {source.description} to {args.to}" + (" (looping)" if args.loop else ""))
    started = time.perf_counter()
    sender = FrameSender(args.to, stream_id=args.stream_id, keys=_client_keys(args))
    try:
        stats = replay(source, sender, fps=args.fps, loop=args.loop, max_frames=args.frames, limits=limits)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    finally:
        sender.close(flush_ms=500)  # let the last queued frames leave; never more than half a second
    elapsed = time.perf_counter() - started
    print(
        f"sent {stats.sent} frames in {elapsed:.1f} s ({stats.sent / max(elapsed, 1e-9):.1f} fps), "
        f"dropped {stats.dropped} (daemon absent or behind), late {stats.late}"
        + (f", refused {stats.refused} (over the daemon's limits)" if stats.refused else ""),
        file=sys.stderr,
    )
    out.result({"sent": stats.sent, "dropped": stats.dropped, "late": stats.late, "refused": stats.refused,
                "seconds": round(elapsed, 3)})  # fmt: skip
    if stats.refused and not (stats.sent or stats.dropped):
        raise CliError("no frame of this source can be sent to the daemon")
    return ExitCode.OK


def _demo(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.core.protocol import Task
    from edge_runtime.tools.demo import DemoOptions, run_demo

    options = DemoOptions(
        frames=args.frames,
        source=args.source,
        model=args.model,
        task=Task.from_name(args.task),
        fps=args.fps,
        dicom=DicomOutput(args.dicom) if args.dicom else None,
        out=args.out,
        view_port=args.view,
    )
    result = run_demo(options, say=out.say)
    out.result({"ok": result.ok, "error": result.error, **result.summary})
    if not result.ok:
        raise CliError(result.error or "the demo failed")
    return ExitCode.OK


def _view_token(args: argparse.Namespace) -> str | None:
    """The view's access token: --token-file, else --token (warned: it shows in `ps`), else $EDGERT_VIEW_TOKEN."""
    if args.token_file is not None:
        try:
            lines = args.token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read the token file {args.token_file}: {exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise CliError(f"the token file {args.token_file} is empty")
        return token
    if args.token is not None:
        logging.getLogger("edgert.view").warning(
            "--token shows in the process list to every local user; prefer --token-file or $EDGERT_VIEW_TOKEN"
        )
        return str(args.token)
    return os.environ.get("EDGERT_VIEW_TOKEN") or None


def _view(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.integrations.view import ViewOptions, ViewServer

    if _verbosity(args) >= 2:
        logging.getLogger("edgert.view.http").setLevel(logging.DEBUG)  # websockets' line per connection
    options = ViewOptions(
        results=args.results, preview=args.preview, host=args.host, port=args.port, token=_view_token(args),
        stream_id=args.stream_id, max_age_ms=args.max_age_ms, keys=_client_keys(args), tls_cert=args.cert,
        tls_key=args.key,
    )  # fmt: skip
    server = ViewServer(options)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return ExitCode.OK


@contextlib.contextmanager
def _stop_on_signal() -> Iterator[threading.Event]:
    """An event that SIGINT or SIGTERM sets while the block runs (the long-running clients' way to end cleanly);
    the previous handlers come back after it."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _record(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.integrations.record import PacsTarget, Recorder, RecordOptions, SourceStudy, SpoolBudget

    options = RecordOptions(
        results=args.results, spool=args.spool, preview=args.preview,
        pacs=PacsTarget.parse(args.pacs, args.calling_ae) if args.pacs else None,
        trigger=None if args.trigger == "none" else args.trigger, every_s=args.every, stream_id=args.stream_id,
        max_age_ms=args.max_age_ms, source=SourceStudy.from_file(args.source_dicom) if args.source_dicom else None,
        spool_budget=SpoolBudget(**{k: v for k, v in (("max_files", args.spool_max_files), ("max_bytes",
                                 None if args.spool_max_mb is None else int(args.spool_max_mb * 1024**2))) if v}),
        keys=_client_keys(args),
    )  # fmt: skip
    recorder = Recorder(options)
    where = f"sent to {args.pacs}" if args.pacs else "kept"
    with _stop_on_signal() as stop:
        recorder.start()
        out.progress(f"recording from {args.results}: captures spooled in {args.spool} and {where}; trigger "
                     f"{options.trigger or 'none'}{f', every {args.every:g} s' if args.every else ''}")  # fmt: skip
        try:
            recorder.run(stop, max_captures=args.count)
            if recorder.sender is not None and args.count is not None:  # a bounded run waits for its records
                deadline = time.monotonic() + args.drain_s
                while recorder.spool.pending() and time.monotonic() < deadline and not stop.is_set():
                    time.sleep(0.1)
        finally:
            recorder.stop()
    counts = recorder.sender.counts if recorder.sender else None
    pending = len(recorder.spool.pending())
    if recorder.spool_full:
        out.say(
            f"{recorder.spool_full} captures refused because the spool was full (--spool-max-mb, --spool-max-files)"
        )
    out.say(f"{recorder.captures} captures, {recorder.refused} refused; "
            + (f"{counts.sent} objects sent, {pending} still spooled" if counts else f"{pending} objects in the spool"))  # fmt: skip
    out.result({"captures": recorder.captures, "refused": recorder.refused, "spooled": pending,
                "sent": counts.sent if counts else 0, "pacs_refused": counts.refused if counts else 0})  # fmt: skip
    return ExitCode.OK


def _igtl(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.integrations.igtl import IgtlBridge, IgtlOptions, parse_source

    options = IgtlOptions(
        results=args.results, preview=args.preview, port=args.port, stream_id=args.stream_id,
        spacing_mm=args.spacing, source=parse_source(args.source) if args.source else None,
        source_device=args.source_device, ingest=args.ingest, source_stream_id=args.source_stream_id,
        keys=_client_keys(args),
    )  # fmt: skip
    bridge = IgtlBridge(options)
    with _stop_on_signal() as stop:
        bridge.start()
        out.progress(f"OpenIGTLink server for Slicer on 127.0.0.1:{args.port}"
                     + (f"; images from {args.source} go to {args.ingest}" if args.source else ""))  # fmt: skip
        try:
            stop.wait()
        finally:
            bridge.stop()
    c = bridge.counts
    out.say(f"{c.sent} frames sent to Slicer, {c.skipped} skipped; {c.forwarded} forwarded from the source, "
            f"{c.dropped} dropped, {c.refused} refused")  # fmt: skip
    out.result({"sent": c.sent, "skipped": c.skipped, "forwarded": c.forwarded, "dropped": c.dropped,
                "refused": c.refused, "refusals": c.refusals})  # fmt: skip
    return ExitCode.OK


def _spacing(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y in mm such as 0.2,0.2, got {text!r}") from None
    return x, y


def _capture(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.integrations.record import request_capture

    reply = request_capture(args.trigger, args.timeout)
    out.result(reply)
    if not reply.get("ok"):
        out.say(f"capture refused: {reply.get('error')}")
        return ExitCode.ERROR
    out.say(f"captured stream {reply['stream']} seq {reply['seq']}: {len(reply['instances'])} DICOM objects")
    return ExitCode.OK


# -- convert, compare, bench --------------------------------------------------------------------------------------
def _sampling(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from calibration.sources import SampleOrder, Sampling

    return Sampling(args.samples, args.stride, SampleOrder(args.sample_order), args.seed)


def _prune_budget(text: str) -> tuple[float, float | None]:
    """--prune-budget: a fraction (0.3), or a latency (6ms) as (default fraction, milliseconds)."""
    try:
        if text.strip().lower().endswith("ms"):
            return 0.3, float(text.strip()[:-2])
        return float(text), None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction such as 0.3 or a latency such as 6ms, got {text!r}"
        ) from None


def _convert(args: argparse.Namespace, out: Output) -> int:
    from calibration.calibrators import CalibrationMethod
    from converters.convert import ConvertOptions, Precision, convert_model, summary_text, write_result
    from converters.int8 import QuantTarget
    from converters.prune import Budget
    from converters.report import PruneMethod
    from converters.sparsity import Saliency

    sampling = _sampling(args)
    options = ConvertOptions(
        precision=Precision(args.precision),
        calib=args.calib,
        calib_method=None if args.calib_method == "auto" else CalibrationMethod(args.calib_method),
        percentile=args.percentile,
        target=QuantTarget(args.target),
        fallback=Precision(args.fallback),
        trt_version=args.trt_version,
        stride=sampling.stride,
        sample_order=sampling.order,
        seed=sampling.seed,
        data=args.data,
        samples=sampling.count,
        tolerance=args.tolerance,
        target_opset=args.opset,
        input_shape=args.input_shape,
        fix_shapes=args.fix_shapes,
        range_margin=args.range_margin,
        max_fallback=args.max_fallback,
        latency=not args.no_latency,
        prune=None if args.prune is None else PruneMethod(args.prune),
        prune_budget=args.prune_budget[0],
        prune_target_ms=args.prune_budget[1],
        prune_repair=not args.no_prune_repair,
        prune_by=None if args.prune_by == "auto" else Budget(args.prune_by),
        prune_multiple=args.prune_multiple,
        prune_frames=args.prune_frames,
        prune_time_budget_s=args.prune_time_budget,
        sparse_saliency=Saliency(args.sparse_saliency),
        verify=args.verify,
        cpu=_cpu_setup(args),
        **{k: getattr(args, k) for k in ("search_samples", "verify_samples", "min_support") if getattr(args, k)},
    )
    if args.plan is not None:
        out.progress(f"replaying {args.plan}: its options and decisions replace the command line's")
    result = convert_model(args.model, options, card_path=args.card, progress=out.progress, plan=args.plan)
    files = write_result(result, args.out)
    out.say(summary_text(result.report))
    out.say("wrote   " + ", ".join(str(f) for f in files))
    if result.model is not None and result.card is None:
        out.progress("note: no card was given (--card), so the output is model.onnx without a model.json")
    out.result(result.report.to_json())
    return ExitCode.OK if result.passed else ExitCode.GATE_FAILED


def _compare(args: argparse.Namespace, out: Output) -> int:
    from converters.compare import compare_models, format_table
    from edge_runtime.core.protocol import Task

    numeric = args.task == "numeric"
    mc = compare_models(
        args.reference, args.candidate, args.data, sampling=_sampling(args), card_path=args.card,
        task=Task.from_name(args.task) if args.task and not numeric else None, numeric_only=numeric,
        input_shape=args.input_shape, emulate=not args.no_emulate,
    )  # fmt: skip
    out.say(format_table(mc))
    passed = args.tolerance is None or mc.comparison.metric >= 1.0 - args.tolerance
    out.result({
        "reference": str(args.reference),
        "candidate": str(args.candidate),
        "data": {"description": mc.data.description, "samples": len(mc.data.feeds),
                 "representative": mc.data.representative},
        "emulated_fp16": mc.emulated_fp16,
        "tolerance": args.tolerance,
        "passed": passed,
        **mc.comparison.to_json(),
    })  # fmt: skip
    if not passed:
        print(f"edgert compare: FAILED: {mc.comparison.metric_name} {mc.comparison.metric:.5f} < "
              f"{1.0 - args.tolerance:.5f}", file=sys.stderr)  # fmt: skip
        return ExitCode.GATE_FAILED
    return ExitCode.OK


def _bench(args: argparse.Namespace, out: Output) -> int:
    import tempfile

    import onnx

    from calibration.sources import Sampling
    from converters.convert import ConvertOptions, Precision, convert_model, load_model
    from converters.data import load_feeds
    from converters.graph import real_inputs
    from converters.prepare import PrepareReport, fix_input_shapes
    from edge_runtime.backends import BackendKind, GpuOptions, create_runner
    from edge_runtime.tools.bench import BenchOptions, ProgressBar, bench_runner

    kind = BackendKind(args.backend)
    setup = _cpu_setup(args)
    engine = None
    if kind.needs_engine:
        engine = _bench_engine(args, out)
    model, card, _, _ = load_model(Path(args.model), None)
    conversion = None
    data = args.data or ((card.data_source or "synthetic") if card else "random")
    if args.precision != "fp32":
        out.progress(f"converting to {args.precision} (accuracy gate on {data})")
        source = args.data or (None if card else "random")  # None: convert's own default for a package
        options = ConvertOptions(
            precision=Precision(args.precision), data=source, calib=source, input_shape=args.input_shape,
            samples=args.samples, cpu=setup,
        )  # fmt: skip
        result = convert_model(args.model, options, progress=out.progress if _verbosity(args) > 0 else None)
        if result.model is None:
            print(f"edgert bench: {result.report.failure}", file=sys.stderr)
            return ExitCode.GATE_FAILED
        model = result.model
        verdict = result.report.verify.comparison if result.report.verify else None  # frames used for nothing else
        conversion = {
            "precision": args.precision,
            "shipped": result.report.shipped,
            "metric_name": verdict.metric_name if verdict else None,
            "metric": verdict.metric if verdict else None,
            "lower_bound": verdict.lower_bound if verdict else None,
            "data": result.report.verify_data.description if result.report.verify_data else None,
            "int8_ops": result.report.int8.int8_ops if result.report.int8 else None,
            "quantizable_ops": result.report.int8.quantizable_ops if result.report.int8 else None,
        }
    elif args.input_shape is not None:
        fix_input_shapes(model, {real_inputs(model.graph)[0].name: args.input_shape}, PrepareReport())
    feed = load_feeds(data, model, card, Sampling(1)).feeds[0]
    bench = BenchOptions(warmup_ms=args.warmup_ms, duration_s=args.duration_s, min_iterations=args.iterations)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        runner = create_runner(
            kind, path, threads=setup.threads, engine=engine, gpu=GpuOptions(device=args.device), cpu=setup.options
        )
        bar = ProgressBar(args.duration_s, enabled=not out.quiet)
        with runner:
            timed = bench_runner(runner, feed, bench, bar.update)
        bar.close()
    timed.update(
        model=str(args.model), backend=args.backend, precision=args.precision, threads=setup.threads,
        cpu=setup.describe(),
        input_shapes={k: list(v.shape) for k, v in feed.items()}, conversion=conversion,
    )  # fmt: skip
    if engine is not None:
        timed["engine"] = str(engine)
    lat = timed["latency_ms"]
    out.say(f"{args.model} on {args.backend} ({args.precision}, {setup.describe()}), "
            f"input {timed['input_shapes']}")  # fmt: skip
    out.say(f"  {timed['iterations']} iterations in {timed['duration_s']:.2f} s after {timed['warmup']['iterations']} "
            f"warm-up: {timed['throughput_per_s']:.1f} inferences/s")  # fmt: skip
    out.say("  latency ms  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()))
    for part in ("h2d_ms", "compute_ms", "d2h_ms"):
        if timed[part] is not None and timed["h2d_ms"] is not None:
            out.say(f"  {part[:-3]:<10}  " + "  ".join(f"{k} {v:.3f}" for k, v in timed[part].items()))
    out.say(f"  coefficient of variation {timed['cv'] * 100:.2f}%")
    if timed["cv_warning"]:
        print(f"  warning: latency varies by more than {bench.cv_warn * 100:.0f}%: the machine is busy or throttling; "
              "numbers from this run are not comparable", file=sys.stderr)  # fmt: skip
    if conversion:
        out.say(f"  conversion: {conversion}")
    out.result(timed)
    return ExitCode.OK


def _bench_engine(args: argparse.Namespace, out: Output) -> Path:
    """The engine `bench --backend tensorrt` times: the package's, from the cache or built here."""
    from converters.engine import BuildOptions, build_engine
    from edge_runtime.core.package import load_package

    if args.precision != "fp32" or args.input_shape is not None:
        raise UsageError("--backend tensorrt benchmarks a converted package as it is: convert first, then bench it")
    package = load_package(args.model)
    return build_engine(package, BuildOptions(device=args.device), say=out.progress).engine


def _build(args: argparse.Namespace, out: Output) -> int:
    import shutil

    from converters.engine import (
        Builder,
        BuildOptions,
        HardwareCompat,
        Int8Path,
        Sparse,
        TrtVersion,
        build_engine,
        installed_version,
        parse_shapes,
        plan_build,
        shape_profiles,
        trtexec_command,
    )
    from edge_runtime.backends.engine_cache import EngineCache, OnMismatch
    from edge_runtime.core.package import load_package

    package = load_package(args.package)
    if args.shapes and args.opt_shapes:
        raise UsageError("--shapes and --opt-shapes say the same thing: give one")
    opt = args.opt_shapes or args.shapes
    if (args.min_shapes or args.max_shapes) and not opt:
        raise UsageError("--min-shapes/--max-shapes need --opt-shapes (or --shapes)")
    profiles = (
        shape_profiles(
            parse_shapes(opt),
            parse_shapes(args.min_shapes) if args.min_shapes else None,
            parse_shapes(args.max_shapes) if args.max_shapes else None,
        )
        if opt
        else ()
    )
    options = BuildOptions(
        workspace_mib=args.workspace, opt_level=args.opt_level, shapes=profiles, timing_cache=args.timing_cache,
        dla_core=args.dla_core, gpu_fallback=not args.no_gpu_fallback, sparse=Sparse(args.sparse),
        hardware_compat=HardwareCompat(args.hardware_compat), version_compatible=args.version_compatible,
        int8_path=Int8Path(args.int8_path), device=args.device,
    )  # fmt: skip
    if args.print_trtexec:
        found = installed_version()
        version = TrtVersion.parse(args.trt_version) if args.trt_version else found[0] if found else None
        if version is None:
            raise UsageError("no TensorRT here to take the version from: give --trt-version (e.g. 10.3.0)")
        plan = plan_build(package, options, version, out.progress)
        engine_out = (args.out or Path(".")) / "model.engine"
        cmd = trtexec_command(plan, engine_out, engine_out.with_name("layers.json"))
        out.say(" ".join(cmd))
        out.result({"trt_version": str(version), "command": cmd, "notes": list(plan.notes)})
        return ExitCode.OK
    result = build_engine(
        package, options, cache=EngineCache(args.cache) if args.cache else None, on_mismatch=OnMismatch(args.on_mismatch),
        rebuild=args.rebuild, builder=Builder(args.builder), say=out.progress,
    )  # fmt: skip
    engine = result.engine
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("manifest.json", "layers.json"):
            if (engine.parent / name).is_file():
                shutil.copy2(engine.parent / name, args.out / name)
        shutil.copy2(engine, args.out / "model.engine")
        engine = args.out / "model.engine"
    plan = result.plan
    out.say(f"{package.card.name} {package.card.version}: {'cached' if result.cached else 'built'} engine {engine}")
    out.say(f"  TensorRT {plan.trt_version} on {result.platform.gpu_name} (compute {result.platform.compute_capability})"
            f", {plan.precision.value}, {'strongly' if plan.strongly_typed else 'weakly'} typed, "
            f"flags {', '.join(plan.builder_flags) or 'none'}, via {result.builder.value}")  # fmt: skip
    out.say(f"  layers: {result.layers.summary()}")
    for note in plan.notes:
        out.say(f"  note: {note}")
    out.result({
        "engine": str(engine), "cached": result.cached, "build_seconds": round(result.seconds, 3),
        "trt_version": str(plan.trt_version), "gpu": result.platform.gpu_name,
        "compute_capability": result.platform.compute_capability, "precision": plan.precision.value,
        "strongly_typed": plan.strongly_typed, "builder_flags": list(plan.builder_flags),
        "sparse_layers": list(plan.sparse_layers), "layer_precisions": result.layers.counts,
        "builder": result.builder.value, "notes": list(plan.notes),
    })  # fmt: skip
    return ExitCode.OK


# -- the parser ---------------------------------------------------------------------------------------------------
def _shape(text: str) -> list[int]:
    try:
        dims = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of integers, e.g. 1,3,224,224"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"'{text}': every dimension must be a positive integer")
    return dims


def _dicom_argument(p: argparse.ArgumentParser, from_card: bool = False) -> None:
    p.add_argument(
        "--dicom",
        choices=[o.value for o in DicomOutput],
        default=None if from_card else DicomOutput.DISPLAY8.value,
        help="how gray DICOM images are sent: the displayed image in 8 or 16 bits (modality, window and "
        "MONOCHROME1 applied), or the stored values unchanged "
        + ("(default: the model card's preprocessing.dicom, else display8)" if from_card else "(default display8)"),
    )


def _json_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", nargs="?", const="-", metavar="PATH|-",
                   help=f"write {what} as JSON to PATH, or to stdout with '-' or no value (text then goes to stderr)")  # fmt: skip


def _input_shape_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=_shape, metavar="DIMS",
                   help="fix the model input's dims, e.g. 1,3,224,224 (for dynamic models)")  # fmt: skip


def _cpu_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the cart's CPUs (every timing, as the daemon will run the model)")
    g.add_argument(
        "--config",
        type=Path,
        metavar="DAEMON_TOML",
        help="time as this daemon config runs: its model.threads and [cpu] (spin, inference_cpus)",
    )
    g.add_argument("--threads", type=int, help="intra-op threads (default: the config's, else 0 = one per core)")
    g.add_argument("--spin", choices=[s.value for s in Spin], help="when ONNX Runtime's workers busy-wait "
                   "(default: the config's, else always)")  # fmt: skip


def _cpu_setup(args: argparse.Namespace) -> CpuSetup:
    """--config, then --threads and --spin over it: the sessions every timing of the command uses."""
    setup = CpuSetup()
    if args.config is not None:
        from edge_runtime.daemon.config import load_config

        config = load_config(args.config)
        setup = config.cpu.setup(config.threads)
    if args.spin is not None:
        setup = CpuSetup(setup.threads, dataclasses.replace(setup.options, spin=Spin(args.spin)))
    if args.threads is not None:
        setup = CpuSetup(args.threads, setup.options)
    return setup


def _sampling_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, samples: int = 32) -> None:
    p.add_argument(
        "--samples", type=int, default=samples, help=f"frames taken from the data source (default {samples})"
    )
    p.add_argument("--stride", type=int, default=1, help="consider every Nth frame of the source only")
    p.add_argument("--sample-order", choices=["spread", "first"], default="spread",
                   help="spread: a seeded uniform sample over the whole source (default); first: its first frames")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the spread sample")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", dest="verbose_sub", action="count", default=0,
                        help="more output (-vv for debug logs)")  # fmt: skip
    common.add_argument("-q", "--quiet", dest="quiet_sub", action="count", default=0,
                        help="less output: no progress lines, warnings and errors only")  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="edgert",
        description="edgert: real-time inference for medical imaging devices, from model package to live overlay.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"edgert {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output (-vv for debug logs)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, help_text: str, func: Callable[[argparse.Namespace, Output], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES_HELP, parents=[common])
        p.set_defaults(func=func)
        return p

    p = command("demo", "live demo: daemon + DICOM cine replay + overlay subscriber, with a latency summary", _demo)
    p.add_argument("--frames", type=int, default=300, help="frames to stream (default 300)")
    p.add_argument("--source", default=None, help=SOURCE_HELP + " (default: the bundled ultrasound cine)")
    p.add_argument("--model", type=Path, default=None, help="model package (default: the bundled demo model of --task)")
    p.add_argument(
        "--task",
        choices=["segmentation", "detection", "classification"],
        default="segmentation",
        help="bundled demo: segmentation (ultrasound cine, default), detection (polyps in synthetic colonoscopy) or "
        "classification (endoscopy frame quality with saliency)",
    )
    p.add_argument("--fps", type=float, default=None, help="replay rate (default: the recording's)")
    _dicom_argument(p, from_card=True)
    p.add_argument(
        "--out", type=Path, default=Path("edgert-demo"), help="folder for overlay images (default ./edgert-demo)"
    )
    p.add_argument("--view", type=int, nargs="?", const=8080, metavar="PORT",
                   help="also show the live overlays in a browser at http://127.0.0.1:PORT/ (default 8080; needs "
                   "the view extra)")  # fmt: skip
    _json_argument(p, "the summary")

    p = command("serve", "run the inference daemon", _serve)
    p.add_argument("--config", type=Path, help="daemon.toml; the flags below override it")
    p.add_argument("--model", help="model package (default without --config: bundled demo model)")
    p.add_argument("--backend", choices=BACKENDS, help=BACKEND_HELP)
    p.add_argument("--threads", type=int, help="backend threads (0 = one per core)")
    p.add_argument("--device", type=int, help="CUDA device for the GPU backends (default 0)")
    p.add_argument("--ingest", help="frame endpoint, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--ingest-mode", choices=["bind", "connect"])
    p.add_argument("--ingest-pattern", choices=["pull", "sub", "rep"], help="rep: imagezmq REQ senders")
    p.add_argument(
        "--ingest-format", choices=["edgert", "imagezmq"], help="imagezmq: accept unmodified imagezmq ImageSenders"
    )
    p.add_argument("--results", help="result PUB endpoint, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--control", help="control endpoint, e.g. tcp://127.0.0.1:5557")
    p.add_argument("--heartbeat-ms", type=int, help="heartbeat interval in ms (50..1000)")
    p.add_argument("--ready-file", type=Path, help="write the bound endpoints here as JSON once ready")
    p.add_argument("--metrics", help="serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9464 (off by default)")
    p.add_argument("--preview", metavar="ENDPOINT", help="publish each processed frame as a JPEG for `edgert view` "
                   "on this PUB endpoint, e.g. tcp://127.0.0.1:5558 (off by default)")  # fmt: skip
    p.add_argument("--server-key", type=Path, help="CURVE: this daemon's .key_secret (with --authorized-clients)")
    p.add_argument("--authorized-clients", type=Path, help="CURVE: folder of client .key files allowed to connect")
    p.add_argument("--audit", type=Path, metavar="FILE", help="keep the hash-chained audit log in FILE (JSON lines)")

    p = command("view", "live video with the model's overlays in a browser (needs the daemon's --preview)", _view)
    p.add_argument("--results", default="tcp://127.0.0.1:5556", help="the daemon's results endpoint")
    p.add_argument("--preview", help="the daemon's preview endpoint (default: the one its heartbeats announce)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to serve the page on (default 127.0.0.1; anything else is reachable from other "
                   "machines: use --token)")  # fmt: skip
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token-file", type=Path, help="read the access token the page URL must carry (?token=...) "
                       "from this file's first line, at least 8 characters; default $EDGERT_VIEW_TOKEN, else none")  # fmt: skip
    token.add_argument("--token", help="the access token itself (visible to every local user in `ps`: prefer "
                       "--token-file or $EDGERT_VIEW_TOKEN)")  # fmt: skip
    p.add_argument("--stream-id", type=int, help="show this stream (default: the first that sends)")
    p.add_argument("--max-age-ms", type=float, default=500.0,
                   help="an overlay older than this (capture to now) is not shown; the page says STALE (default 500)")  # fmt: skip
    p.add_argument("--cert", type=Path, help="serve HTTPS (and WSS) with this PEM certificate chain")
    p.add_argument("--key", type=Path, help="the certificate's PEM private key (default: in the --cert file)")
    _key_arguments(p)

    p = command("record", "record the live frame and its result as DICOM (SC, and SEG for segmentation) to a PACS "
                "on a trigger", _record)  # fmt: skip
    p.add_argument("--results", default="tcp://127.0.0.1:5556", help="the daemon's results endpoint")
    p.add_argument("--preview", help="the daemon's preview endpoint (default: the one its heartbeats announce)")
    p.add_argument("--pacs", metavar="AE@HOST:PORT", help="C-STORE to this PACS, e.g. ORTHANC@127.0.0.1:4242 "
                   "(default: keep the files in --spool)")  # fmt: skip
    p.add_argument("--calling-ae", default="EDGERT", help="our AE title (default EDGERT)")
    p.add_argument("--spool", type=Path, default=Path("edgert-records"),
                   help="folder where records wait until the PACS has them (default ./edgert-records)")  # fmt: skip
    p.add_argument("--spool-max-mb", type=float, help="the spool's size budget in MiB, refused/ included: beyond it "
                   "captures are refused, never dropped (default 1024)")  # fmt: skip
    p.add_argument("--spool-max-files", type=int, help="the spool's file budget (default 10000)")
    p.add_argument("--trigger", default="tcp://127.0.0.1:5559",
                   help="endpoint `edgert capture` asks (default tcp://127.0.0.1:5559; 'none' for no socket)")  # fmt: skip
    p.add_argument("--every", type=float, metavar="SECONDS", help="also capture every SECONDS")
    p.add_argument("--source-dicom", type=Path, help="the DICOM file the frames come from: records join its study "
                   "and reference it (its patient data is copied, never invented)")  # fmt: skip
    p.add_argument("--stream-id", type=int, help="record this stream (default: the first that sends)")
    p.add_argument("--max-age-ms", type=float, default=1000.0, help="refuse to record a result older than this")
    p.add_argument("--count", type=int, help="stop after this many captures (then wait up to --drain-s for the PACS)")
    p.add_argument("--drain-s", type=float, default=30.0, help="with --count: how long to wait for the PACS")
    _key_arguments(p)
    _json_argument(p, "the counts")

    p = command("igtl", "OpenIGTLink bridge: live frames and overlays to 3D Slicer, images from PLUS to the daemon",
                _igtl)  # fmt: skip
    p.add_argument("--results", default="tcp://127.0.0.1:5556", help="the daemon's results endpoint")
    p.add_argument("--preview", help="the daemon's preview endpoint (default: the one its heartbeats announce)")
    p.add_argument("--port", type=int, default=18944, help="port Slicer's OpenIGTLinkIF connects to (default 18944)")
    p.add_argument("--stream-id", type=int, help="the stream sent to Slicer (default: the first that sends)")
    p.add_argument("--spacing", type=_spacing, default=(1.0, 1.0), metavar="X,Y",
                   help="pixel spacing in mm for frames not from --source (default 1,1)")  # fmt: skip
    p.add_argument("--source", metavar="HOST:PORT", help="take IMAGE messages from this OpenIGTLink server (PLUS, "
                   "Slicer) and send them to the daemon")  # fmt: skip
    p.add_argument("--source-device", help="only this device's images (default: all)")
    p.add_argument("--ingest", default="tcp://127.0.0.1:5555", help="the daemon's ingest, for --source frames")
    p.add_argument("--source-stream-id", type=int, default=0, help="stream id of --source frames (default 0)")
    _key_arguments(p)
    _json_argument(p, "the counts")

    p = command("capture", "ask a running `edgert record` to record the current frame now", _capture)
    p.add_argument("--trigger", default="tcp://127.0.0.1:5559", help="the recorder's trigger endpoint")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    _json_argument(p, "the recorder's reply")

    p = command("replay", "play DICOM, images, video or a synthetic cine to a daemon, as a scanner would", _replay)
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("--to", default="tcp://127.0.0.1:5555", help="daemon ingest endpoint")
    p.add_argument("--fps", type=float, help="frame rate (default: the recording's Frame Time / Cine Rate, else 30)")
    p.add_argument("--loop", action="store_true", help="start again at the end")
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--stream-id", type=int, default=0)
    p.add_argument("--config", type=Path, metavar="DAEMON_TOML",
                   help="the daemon's config: no frame over its [limits] is decoded or sent (default: the defaults)")  # fmt: skip
    _dicom_argument(p)
    _key_arguments(p)
    _json_argument(p, "the replay counts")

    p = command("convert", "prepare a model and convert it to FP32, FP16 or INT8 behind an accuracy gate", _convert)
    p.add_argument("model", help="ONNX file or model package")
    p.add_argument(
        "-o", "--out", type=Path, required=True, help="output folder (model package, report.json, summary.txt)"
    )
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument("--card", type=Path, help="model.json for a bare ONNX file (preprocessing, task)")
    p.add_argument("--data", help="evaluation data for the accuracy gate (default: --calib, else synthetic for a "
                   "package): " + SOURCE_HELP)  # fmt: skip
    _sampling_arguments(p)
    p.add_argument("--tolerance", type=float, help="allowed shortfall below 1.0 of the worst class's lower bound "
                   "(default: 0.02 segmentation and classification, 0.05 detection F1, 0.001 cosine otherwise)")  # fmt: skip
    p.add_argument("--opset", type=int, default=17, help="target opset (>= 13, default 17)")
    _input_shape_argument(p)
    p.add_argument("--fix-shapes", action="store_true", help="fix dynamic dims to the card's input shape")
    p.add_argument("--range-margin", type=float, default=2.0, help="keep FP32 where max |x| > 65504 / margin")
    p.add_argument("--max-fallback", type=int, help="most nodes the gate may keep FP32 (default max(4, 25%% of nodes))")
    g = p.add_argument_group("int8")
    g.add_argument("--calib", help="calibration data (default: --data, else synthetic for a package); same forms")
    g.add_argument("--calib-method", choices=["auto", "minmax", "percentile", "entropy", "mse"], default="auto",
                   help="activation range method; auto tries each and keeps the most accurate (default)")  # fmt: skip
    g.add_argument("--percentile", type=float, default=99.99, help="for --calib-method percentile")
    g.add_argument("--target", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="Q/DQ placement: ONNX Runtime CPU kernels, or TensorRT explicit quantization")  # fmt: skip
    g.add_argument("--fallback", choices=["fp32", "fp16"], default="fp32", help="precision of layers kept out of INT8")
    g.add_argument("--trt-version", default="10.3.0", help="TensorRT version for calibration.cache (e.g. 8.6.1)")
    g.add_argument("--no-latency", action="store_true",
                   help="skip the per-layer profiling that keeps layers out of INT8 where INT8 is slower here")  # fmt: skip
    g = p.add_argument_group("pruning (before the precision stages)")
    g.add_argument("--prune", choices=["channels", "2:4", "channels+2:4"],
                   help="channels: structured channel pruning, repaired by least squares on calibration frames (no "
                   "retraining); 2:4: two of every four input-channel weights zero, for TensorRT's sparse tensor cores "
                   "(no speed on a CPU); channels+2:4: both")  # fmt: skip
    g.add_argument("--sparse-saliency", choices=["obs", "magnitude"], default="obs",
                   help="--prune 2:4: which weights go: optimal brain surgeon on calibration inputs with "
                   "least-squares compensation (default), or the smallest magnitudes")  # fmt: skip
    g.add_argument("--prune-budget", type=_prune_budget, default=(0.3, None), metavar="FRACTION|Nms",
                   help="fraction of the layers' time (or FLOPs) to remove, or a time per run to reach here, e.g. "
                   "6ms; backs off by 0.1 while the gate fails (default 0.3)")  # fmt: skip
    g.add_argument("--prune-by", choices=["auto", "latency", "flops"], default="auto",
                   help="what the budget is a fraction of: the layers' time measured here (auto for onnxruntime) "
                   "or their FLOPs (auto for tensorrt)")  # fmt: skip
    g.add_argument("--prune-multiple", type=int, default=0,
                   help="keep channel counts multiples of this (default: the block this CPU's convolutions work "
                   "in, 16 with AVX-512, so that 44 of 48 channels are not kept at the cost of 48; 8 for a FLOPs "
                   "budget); 1 allows any count")  # fmt: skip
    g.add_argument(
        "--prune-frames",
        type=int,
        default=16,
        help="calibration frames that measure each layer family's sensitivity and refit (default 16)",
    )
    g.add_argument(
        "--prune-time-budget",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="refuse, before it starts, a sensitivity pass estimated to take longer (default 900)",
    )
    g.add_argument("--no-prune-repair", action="store_true",
                   help="remove channels with bias correction only, no least-squares refit")  # fmt: skip
    g = p.add_argument_group("the gate: three disjoint splits (calibration: --samples)")
    g.add_argument("--search-samples", type=int,
                   help="frames every choice is judged on: calibration method, fallbacks, pruning ratio (default 100)")  # fmt: skip
    g.add_argument("--verify-samples", type=int,
                   help="frames used for nothing else, which deliver the verdict (default 200)")  # fmt: skip
    g.add_argument("--verify", help="the verify split's source (default: --data's, frames disjoint from the other "
                   "splits); same forms")  # fmt: skip
    g.add_argument("--min-support", type=int,
                   help="frames (boxes) a class needs in the verify split to be judged; a rarer class fails the "
                   "verdict with a request for data (default 10)")  # fmt: skip
    p.add_argument("--plan", type=Path, help="rebuild the model a report.json's plan recorded (its options and "
                   "decisions; nothing re-measured), then run the verify gate")  # fmt: skip
    _cpu_arguments(p)
    _json_argument(p, "the conversion report (also written to OUT/report.json)")

    p = command("compare", "run two models on the same inputs and report their differences", _compare)
    p.add_argument("reference", help="ONNX file or model package")
    p.add_argument("candidate", help="ONNX file or model package")
    p.add_argument("--data", required=True, help=SOURCE_HELP)
    _sampling_arguments(p)
    p.add_argument("--card", type=Path, help="model.json when neither model is a package")
    p.add_argument("--task", choices=["segmentation", "classification", "numeric"], help="override the card's task")
    _input_shape_argument(p)
    p.add_argument("--tolerance", type=float, help="exit 3 if the task metric is below 1 - tolerance")
    p.add_argument("--no-emulate", action="store_true",
                   help="run an FP16 candidate as is (ONNX Runtime CPU runs most FP16 ops in FP32)")  # fmt: skip
    _json_argument(p, "the figures")

    p = command("bench", "measure a model's latency and throughput on a backend (warm-up, then timed runs)", _bench)
    p.add_argument("model", help="ONNX file or model package")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="convert first (behind the accuracy gate, default options) and measure that")  # fmt: skip
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help=BACKEND_HELP)
    p.add_argument("--device", type=int, default=0, help="CUDA device for the GPU backends (default 0)")
    _input_shape_argument(p)
    p.add_argument("--data", help="input, calibration and gate data (default: synthetic for a package, random "
                   "otherwise): " + SOURCE_HELP)  # fmt: skip
    p.add_argument("--samples", type=int, default=32, help="frames for calibration and the gate (default 32)")
    p.add_argument("--warmup-ms", type=float, default=200.0)
    p.add_argument("--duration-s", type=float, default=3.0, help="minimum timed duration (default 3)")
    p.add_argument("--iterations", type=int, default=10, help="minimum timed iterations (default 10)")
    _cpu_arguments(p)
    _json_argument(p, "the results")

    p = command("build", "build a TensorRT engine for a model package on this device (cached by content)", _build)
    p.add_argument("package", help="model package (converted: FP16 typed graph or Q/DQ INT8 graph)")
    p.add_argument("-o", "--out", type=Path, help="also copy model.engine, manifest.json and layers.json here")
    p.add_argument("--cache", type=Path, help="engine cache folder (default $EDGERT_ENGINE_CACHE, else "
                   "~/.cache/edgert/engines)")  # fmt: skip
    p.add_argument("--workspace", type=int, metavar="MIB", help="workspace memory pool limit in MiB "
                   "(trtexec --memPoolSize=workspace:N)")  # fmt: skip
    p.add_argument("--opt-level", type=int, help="builder optimization level 0..5 (TensorRT's default 3)")
    p.add_argument("--shapes", help="optimization profile opt shapes, NAME:1x3x256x256[,...] (as trtexec; "
                   "default: the card's input shape for dynamic inputs)")  # fmt: skip
    p.add_argument("--min-shapes", help="profile min shapes (default: the opt shapes)")
    p.add_argument("--opt-shapes", help="same as --shapes")
    p.add_argument("--max-shapes", help="profile max shapes (default: the opt shapes)")
    p.add_argument("--timing-cache", type=Path, help="timing cache file: read if present, updated after the build")
    p.add_argument("--dla-core", type=int, help="build for this DLA core (Jetson AGX Orin, Orin NX)")
    p.add_argument("--no-gpu-fallback", action="store_true", help="with --dla-core: fail if a layer cannot run "
                   "on the DLA (default: those layers run on the GPU)")  # fmt: skip
    p.add_argument("--sparse", choices=["auto", "on", "off"], default="auto",
                   help="sparse weights for 2:4 layers (auto: on when the card lists layers the pruner made 2:4)")  # fmt: skip
    p.add_argument("--hardware-compat", choices=["none", "ampere+", "same-compute-capability"], default="none",
                   help="one engine for several GPUs (dGPUs only; slower kernels)")  # fmt: skip
    p.add_argument("--version-compatible", action="store_true",
                   help="an engine later TensorRT versions can run (8.6+, lean runtime embedded)")  # fmt: skip
    p.add_argument("--int8-path", choices=["auto", "explicit", "implicit"], default="auto",
                   help="INT8 packages: explicit Q/DQ graph, or implicit (FP32 graph + calibration.cache; TensorRT "
                   "8.x/10.x; auto: implicit only for the DLA)")  # fmt: skip
    p.add_argument("--device", type=int, default=0, help="CUDA device (default 0)")
    p.add_argument("--builder", choices=["auto", "tensorrt-python", "trtexec"], default="auto",
                   help="TensorRT's Python API, or trtexec (auto: the Python API if importable)")  # fmt: skip
    p.add_argument("--on-mismatch", choices=["rebuild", "refuse"], default="rebuild",
                   help="an engine cached for this model under another TensorRT or GPU: rebuild (default) or refuse")  # fmt: skip
    p.add_argument("--rebuild", action="store_true", help="build even when the cache has the engine")
    p.add_argument("--print-trtexec", action="store_true",
                   help="print the equivalent trtexec command line and exit (no TensorRT needed with --trt-version)")  # fmt: skip
    p.add_argument("--trt-version", help="with --print-trtexec: the target's TensorRT version (default: this one's)")
    _json_argument(p, "the build result")

    p = command("ctl", "status, stats, health or model reload of a running daemon", _ctl)
    p.add_argument("action", metavar="{status,stats,health,reload}", choices=["status", "stats", "health", "reload"],
                   help="health: exit 0 only if ready; reload PACKAGE: swap the model without stopping")  # fmt: skip
    p.add_argument("package", nargs="?", help="for reload: the model package to load")
    _key_arguments(p)
    p.add_argument("--control", default="tcp://127.0.0.1:5557", help="the daemon's control endpoint")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for an answer (2, or 60 for reload)")
    _json_argument(p, "the daemon's reply")

    p = command("keys", "generate a CURVE key pair for the daemon or a client", _keys)
    p.add_argument("action", choices=["generate"])
    p.add_argument("name", help="key name, e.g. daemon or scanner-1")
    p.add_argument("--dir", type=Path, required=True, help="folder to write NAME.key and NAME.key_secret into")
    _json_argument(p, "the key file paths")

    p = command("audit", "check an audit log's hash chain: any edited, inserted or deleted record is found", _audit)
    p.add_argument("action", choices=["verify"])
    p.add_argument("file", type=Path, help="the audit log (its rotated files NAME.1, NAME.2... are read too)")
    p.add_argument("--head", help="the newest record's hash as recorded elsewhere (ctl status): also finds a cut end")
    _json_argument(p, "the verification")

    p = command("package", "validate a model package and show its card", _package)
    p.add_argument("package", nargs="?", help="package folder or archive (default: bundled demo model)")
    _json_argument(p, "the card")
    return parser


def _log_level(args: argparse.Namespace) -> int:
    base = logging.INFO if args.command in ("serve", "demo", "view") else logging.WARNING
    return min(logging.ERROR, max(logging.DEBUG, base - 10 * _verbosity(args)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=_log_level(args), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = f"edgert {args.command}" + (f" {args.action}" if args.command == "ctl" else "")
    try:
        return int(args.func(args, Output(args)))
    except UsageError as exc:
        print(f"{name}: usage error: {escaped(exc, ERROR_CHARS)}", file=sys.stderr)
        return ExitCode.USAGE
    except (EdgertError, ValueError) as exc:  # expected failures and rejected options: one line, no traceback
        if _verbosity(args) >= 2:
            log.debug("traceback", exc_info=True)
        print(f"{name}: error: {escaped(exc, ERROR_CHARS)}", file=sys.stderr)  # one line, whatever a name held
        return ExitCode.ERROR
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
