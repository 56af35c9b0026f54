"""`edgert`: a thin command line over the library. Each subcommand imports what it needs when it runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from calibration.preprocessing import DicomOutput
from edge_runtime import __version__

log = logging.getLogger("edgert")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1, no traceback."""


def _serve(args: argparse.Namespace) -> int:
    from edge_runtime.daemon.config import ConfigError, apply_overrides, build_config, load_config
    from edge_runtime.daemon.server import Daemon, DaemonError
    from edge_runtime.package import PackageError, demo_package_path

    overrides = {
        "model.package": args.model,
        "model.backend": args.backend,
        "model.threads": args.threads,
        "ingest.endpoint": args.ingest,
        "ingest.mode": args.ingest_mode,
        "ingest.pattern": args.ingest_pattern,
        "results.endpoint": args.results,
        "control.endpoint": args.control,
        "heartbeat.interval_ms": args.heartbeat_ms,
        "metrics.endpoint": args.metrics,
        "security.server_key": str(args.server_key) if args.server_key else None,
        "security.authorized_clients": str(args.authorized_clients) if args.authorized_clients else None,
    }
    try:
        if args.config:
            config = load_config(args.config, overrides)
        else:
            data = apply_overrides({"model": {"package": str(demo_package_path())}}, overrides)
            config = build_config(data, Path.cwd(), where="command line")
        config = dataclasses.replace(config, ready_file=args.ready_file)
        return Daemon(config).run()
    except (ConfigError, PackageError, DaemonError) as exc:
        raise CliError(str(exc)) from None


def _replay(args: argparse.Namespace) -> int:
    import time

    from calibration.dicom import DicomError
    from calibration.sources import SourceError, open_source
    from edge_runtime.replay import replay
    from edge_runtime.sender import FrameSender

    try:
        source = open_source(args.source, DicomOutput(args.dicom))
    except (SourceError, DicomError) as exc:
        raise CliError(str(exc)) from None
    print(f"replaying {source.description} to {args.to}" + (" (looping)" if args.loop else ""), file=sys.stderr)
    started = time.perf_counter()
    try:
        sender = FrameSender(args.to, stream_id=args.stream_id, keys=_client_keys(args))
        try:
            stats = replay(source, sender, fps=args.fps, loop=args.loop, max_frames=args.frames)
        finally:
            sender.close(flush_ms=500)  # let the last queued frames leave; never more than half a second
    except (SourceError, DicomError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        return 130
    elapsed = time.perf_counter() - started
    print(
        f"sent {stats.sent} frames in {elapsed:.1f} s ({stats.sent / max(elapsed, 1e-9):.1f} fps), "
        f"dropped {stats.dropped} (daemon absent or behind), late {stats.late}"
        + (f", refused {stats.refused} (over the daemon's limits)" if stats.refused else ""),
        file=sys.stderr,
    )
    if stats.refused and not (stats.sent or stats.dropped):
        print("error: no frame of this source can be sent to the daemon", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _ctl(args: argparse.Namespace) -> int:
    import zmq

    if args.timeout is None:
        args.timeout = 60.0 if args.command == "reload" else 2.0

    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    with sock:
        sock.setsockopt(zmq.LINGER, 0)
        keys = _client_keys(args)
        if keys is not None:
            keys.apply(sock)
        sock.connect(args.control)
        if args.command == "reload":
            if not args.package:
                raise CliError("reload needs a model package path")
            sock.send_string(json.dumps({"cmd": "reload", "package": str(Path(args.package).resolve())}))
        else:
            sock.send_string("status" if args.command == "health" else args.command)
        if not sock.poll(int(args.timeout * 1000)):
            if args.command == "health":
                print(f"unhealthy: no answer from {args.control} within {args.timeout:g} s")
                return EXIT_FAILURE
            raise CliError(f"no answer from the daemon at {args.control} within {args.timeout:g} s")
        reply = json.loads(sock.recv())
    if args.command == "health":  # for scripts and service managers: one line, and the exit status
        healthy = bool(reply.get("ok")) and reply.get("state") == "ready"
        print(f"{'healthy' if healthy else 'unhealthy'}: {reply.get('state', reply.get('error'))}")
        return EXIT_OK if healthy else EXIT_FAILURE
    print(json.dumps(reply, indent=2))
    return EXIT_OK if reply.get("ok") else EXIT_FAILURE


def _key_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-key", type=Path, help="CURVE: the daemon's public .key file")
    p.add_argument("--client-key", type=Path, help="CURVE: this client's .key_secret file")


def _client_keys(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from edge_runtime.security import ClientKeys, SecurityError

    if not args.server_key and not args.client_key:
        return None
    if not (args.server_key and args.client_key):
        raise CliError("CURVE needs both --server-key (the daemon's .key) and --client-key (your .key_secret)")
    try:
        return ClientKeys.from_files(args.server_key, args.client_key)
    except SecurityError as exc:
        raise CliError(str(exc)) from None


def _keys(args: argparse.Namespace) -> int:
    from edge_runtime.security import SecurityError, generate_keys

    try:
        public, secret = generate_keys(args.name, args.dir)
    except SecurityError as exc:
        raise CliError(str(exc)) from None
    print(f"public key  {public}   (give to the other side: the daemon's authorized_clients folder, or clients)")
    print(f"secret key  {secret}   (stays on this device, mode 600)")
    return EXIT_OK


def _package(args: argparse.Namespace) -> int:
    from edge_runtime.package import PackageError, demo_package_path, load_package

    try:
        pkg = load_package(args.package or demo_package_path())
    except PackageError as exc:
        raise CliError(str(exc)) from None
    card = pkg.card
    spec = card.preprocess
    print(f"{card.name} {card.version} ({card.task.name.lower()}) - valid")
    print(f"  onnx      {pkg.onnx_path} sha256 {pkg.sha256}")
    print(f"  input     '{card.input_name}' {list(spec.input_shape)} {spec.layout.value}, color {spec.color.value}, "
          f"resize {spec.resize.value}, mean {list(spec.mean)} std {list(spec.std)}")  # fmt: skip
    print(f"  output    '{card.output.name}' {card.output.decode} over {list(card.output.labels)}")
    if card.metrics:
        print(f"  metrics   {json.dumps(card.metrics)}")
    return EXIT_OK


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


def _progress(started: float) -> Callable[[str], None]:
    import time

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def _convert(args: argparse.Namespace) -> int:
    import time

    from converters.convert import ConvertOptions, Precision, convert_model, summary_text, write_result
    from converters.graph import ConversionError
    from converters.int8 import QuantTarget

    options = ConvertOptions(
        precision=Precision(args.precision),
        calib=args.calib,
        calib_method=args.calib_method,
        percentile=args.percentile,
        target=QuantTarget(args.target),
        fallback=Precision(args.fallback),
        trt_version=args.trt_version,
        stride=args.stride,
        shuffle=args.shuffle,
        seed=args.seed,
        data=args.data,
        samples=args.samples,
        tolerance=args.tolerance,
        target_opset=args.opset,
        input_shape=args.input_shape,
        fix_shapes=args.fix_shapes,
        range_margin=args.range_margin,
        max_fallback=args.max_fallback,
    )
    try:
        result = convert_model(args.model, options, card_path=args.card, progress=_progress(time.perf_counter()))
        files = write_result(result, args.out)
    except (ConversionError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(summary_text(result.report))
    print("wrote   " + ", ".join(str(f) for f in files))
    if result.model is not None and result.card is None:
        print("note    no card was given (--card), so the output is model.onnx without a model.json", file=sys.stderr)
    return EXIT_OK if result.passed else EXIT_FAILURE


def _compare(args: argparse.Namespace) -> int:
    from converters.compare import compare_models, format_table
    from converters.graph import ConversionError

    try:
        mc = compare_models(
            args.reference, args.candidate, args.data, samples=args.samples, card_path=args.card, task=args.task,
            input_shape=args.input_shape, emulate=not args.no_emulate,
        )  # fmt: skip
    except (ConversionError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(format_table(mc))
    passed = args.tolerance is None or mc.comparison.metric >= 1.0 - args.tolerance
    if args.json:
        report = {
            "reference": str(args.reference),
            "candidate": str(args.candidate),
            "data": {
                "description": mc.data.description,
                "samples": len(mc.data.feeds),
                "representative": mc.data.representative,
            },
            "task": mc.task,
            "emulated_fp16": mc.emulated_fp16,
            "tolerance": args.tolerance,
            "passed": passed,
            **mc.comparison.to_json(),
        }
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not passed:
        print(
            f"FAILED: {mc.comparison.metric_name} {mc.comparison.metric:.5f} < {1.0 - args.tolerance:.5f}",
            file=sys.stderr,
        )
    return EXIT_OK if passed else EXIT_FAILURE


def _bench(args: argparse.Namespace) -> int:
    import tempfile

    import onnx

    from converters.convert import ConvertOptions, Precision, convert_model, load_model
    from converters.data import load_feeds
    from converters.graph import ConversionError, real_inputs
    from converters.prepare import PrepareReport, fix_input_shapes
    from edge_runtime.backends import BackendError, BackendKind, create_runner
    from edge_runtime.bench import BenchOptions, ProgressBar, bench_runner

    try:
        model, card, _, _ = load_model(Path(args.model), None)
        conversion = None
        data = args.data or ("synthetic:clip=1" if card else "random")
        if args.precision != "fp32":
            print(f"converting to {args.precision} (accuracy gate on {data}) ...", file=sys.stderr, flush=True)
            options = ConvertOptions(
                precision=Precision(args.precision), data=data, calib=data, input_shape=args.shape, samples=16
            )
            result = convert_model(args.model, options)
            if result.model is None:
                raise CliError(result.report.get("failure", "conversion failed"))
            model = result.model
            acc = result.report["accuracy"]
            conversion = {"precision": args.precision, acc["metric_name"]: acc["metric"], "data": result.report["data"]}
        elif args.shape is not None:
            fix_input_shapes(model, {real_inputs(model.graph)[0].name: args.shape}, PrepareReport())
        feed = load_feeds(data, model, card, 1).feeds[0]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
            runner = create_runner(BackendKind(args.backend), path, threads=args.threads)
            bench = BenchOptions(warmup_ms=args.warmup_ms, duration_s=args.duration_s, min_iterations=args.iterations)
            bar = ProgressBar(args.duration_s)
            with runner:
                result_json = bench_runner(runner, feed, bench, bar.update)
            bar.close()
    except (ConversionError, BackendError, ValueError) as exc:
        raise CliError(str(exc)) from None
    result_json.update(
        model=str(args.model), backend=args.backend, precision=args.precision, threads=args.threads,
        input_shapes={k: list(v.shape) for k, v in feed.items()}, conversion=conversion,
    )  # fmt: skip
    lat = result_json["latency_ms"]
    print(
        f"{args.model} on {args.backend} ({args.precision}, threads {args.threads or 'auto'}), input {result_json['input_shapes']}"
    )
    print(f"  {result_json['iterations']} iterations in {result_json['duration_s']:.2f} s after {result_json['warmup']['iterations']} warm-up: "
          f"{result_json['throughput_per_s']:.1f} inferences/s")  # fmt: skip
    print("  latency ms  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()))
    print(f"  coefficient of variation {result_json['cv'] * 100:.2f}%")
    if result_json["cv_warning"]:
        print(f"  warning: latency varies by more than {bench.cv_warn * 100:.0f}%: the machine is busy or throttling; "
              "numbers from this run are not comparable", file=sys.stderr)  # fmt: skip
    if conversion:
        print(f"  conversion: {conversion}")
    if args.json:
        Path(args.json).write_text(json.dumps(result_json, indent=2) + "\n")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from edge_runtime.demo import DemoError, run_demo

    try:
        return run_demo(args)
    except DemoError as exc:
        raise CliError(str(exc)) from None


def _dicom_argument(p: argparse.ArgumentParser, from_card: bool = False) -> None:
    p.add_argument(
        "--dicom",
        choices=[o.value for o in DicomOutput],
        default=None if from_card else DicomOutput.DISPLAY8.value,
        help="how gray DICOM images are sent: the displayed image in 8 or 16 bits (modality, window and "
        "MONOCHROME1 applied), or the stored values unchanged "
        + ("(default: the model card's preprocessing.dicom, else display8)" if from_card else "(default display8)"),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgert",
        description="edgert: real-time inference for medical imaging devices, from model package to live overlay.",
    )
    parser.add_argument("--version", action="version", version=f"edgert {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = command("demo", "live demo: daemon + DICOM cine replay + overlay subscriber, with a latency summary", _demo)
    p.add_argument("--frames", type=int, default=300, help="frames to stream (default 300)")
    p.add_argument("--source", default=None, help="DICOM file/folder or 'synthetic' (default: bundled US cine)")
    p.add_argument("--model", default=None, help="model package (default: bundled demo model)")
    p.add_argument("--fps", type=float, default=None, help="replay rate (default: the recording's)")
    _dicom_argument(p, from_card=True)
    p.add_argument(
        "--out", type=Path, default=Path("edgert-demo"), help="folder for overlay images (default ./edgert-demo)"
    )

    p = command("serve", "run the inference daemon", _serve)
    p.add_argument("--config", type=Path, help="daemon.toml; the flags below override it")
    p.add_argument("--model", help="model package (default without --config: bundled demo model)")
    p.add_argument("--backend", choices=["onnxruntime"], help="inference backend")
    p.add_argument("--threads", type=int, help="backend threads (0 = one per core)")
    p.add_argument("--ingest", help="frame endpoint, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--ingest-mode", choices=["bind", "connect"])
    p.add_argument("--ingest-pattern", choices=["pull", "sub"])
    p.add_argument("--results", help="result PUB endpoint, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--control", help="control REP endpoint, e.g. tcp://127.0.0.1:5557")
    p.add_argument("--heartbeat-ms", type=int, help="heartbeat interval in ms (50..1000)")
    p.add_argument("--ready-file", type=Path, help="write the bound endpoints here as JSON once ready")
    p.add_argument("--metrics", help="serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9464 (off by default)")
    p.add_argument("--server-key", type=Path, help="CURVE: this daemon's .key_secret (with --authorized-clients)")
    p.add_argument("--authorized-clients", type=Path, help="CURVE: folder of client .key files allowed to connect")

    p = command("replay", "play DICOM, images, video or a synthetic cine to a daemon, as a scanner would", _replay)
    p.add_argument(
        "source", help="a file or folder (DICOM, images, video, .npy), or synthetic[:frames=N,size=HxW,seed=S,fps=F]"
    )
    p.add_argument("--to", default="tcp://127.0.0.1:5555", help="daemon ingest endpoint")
    p.add_argument("--fps", type=float, help="frame rate (default: the recording's Frame Time / Cine Rate, else 30)")
    p.add_argument("--loop", action="store_true", help="start again at the end")
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--stream-id", type=int, default=0)
    _dicom_argument(p)
    _key_arguments(p)

    p = command("convert", "prepare a model and convert it to FP32, FP16 or INT8 behind an accuracy gate", _convert)
    p.add_argument("model", help="ONNX file or model package")
    p.add_argument(
        "-o", "--out", type=Path, required=True, help="output folder (model package, report.json, summary.txt)"
    )
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument("--card", type=Path, help="model.json for a bare ONNX file (preprocessing, task)")
    p.add_argument("--data", help="DICOM file/folder, synthetic[:...] or random[:seed=N]; required for fp16")
    p.add_argument("--samples", type=int, default=32, help="samples from --data (default 32)")
    p.add_argument("--tolerance", type=float, help="allowed drop of the task metric below 1.0 (default: 0.01 "
                   "segmentation Dice / classification top-1, 0.001 cosine otherwise)")  # fmt: skip
    p.add_argument("--opset", type=int, default=17, help="target opset (>= 13, default 17)")
    p.add_argument("--input-shape", type=_shape, help="fix the input's dims, e.g. 1,3,224,224")
    p.add_argument("--fix-shapes", action="store_true", help="fix dynamic dims to the card's input shape")
    p.add_argument("--range-margin", type=float, default=2.0, help="keep FP32 where max |x| > 65504 / margin")
    p.add_argument("--max-fallback", type=int, help="most nodes the gate may keep FP32 (default max(4, 25%% of nodes))")
    p.add_argument("--stride", type=int, default=1, help="take every Nth frame of the data source")
    p.add_argument("--shuffle", action="store_true", help="a seeded random sample of the source instead of its start")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("int8")
    g.add_argument("--calib", help="calibration source (same forms as --data; default: --data)")
    g.add_argument("--calib-method", choices=["auto", "minmax", "percentile", "entropy", "mse"], default="auto",
                   help="activation range method; auto tries each and keeps the most accurate (default)")  # fmt: skip
    g.add_argument("--percentile", type=float, default=99.99, help="for --calib-method percentile")
    g.add_argument("--target", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="Q/DQ placement: ONNX Runtime CPU kernels, or TensorRT explicit quantization")  # fmt: skip
    g.add_argument("--fallback", choices=["fp32", "fp16"], default="fp32", help="precision of layers kept out of INT8")
    g.add_argument("--trt-version", default="10.3.0", help="TensorRT version for calibration.cache (e.g. 8.6.1)")

    p = command("compare", "run two models on the same inputs and report their differences", _compare)
    p.add_argument("reference", help="ONNX file or model package")
    p.add_argument("candidate", help="ONNX file or model package")
    p.add_argument("--data", required=True, help="DICOM file/folder, synthetic[:...] or random[:seed=N]")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--card", type=Path, help="model.json when neither model is a package")
    p.add_argument("--task", choices=["segmentation", "classification", "numeric"], help="override the card's task")
    p.add_argument("--input-shape", type=_shape, help="input dims for random data on a dynamic model")
    p.add_argument("--tolerance", type=float, help="exit 1 if the task metric is below 1 - tolerance")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--no-emulate",
        action="store_true",
        help="run an FP16 candidate as is (ONNX Runtime CPU runs most FP16 ops in FP32)",
    )

    p = command("bench", "measure a model's latency and throughput on a backend (warm-up, then timed runs)", _bench)
    p.add_argument("model", help="ONNX file or model package")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="convert first (behind the accuracy gate) and measure that")  # fmt: skip
    p.add_argument("--backend", choices=["onnxruntime"], default="onnxruntime")
    p.add_argument("--shape", type=_shape, help="input dims for a dynamic model, e.g. 1,3,224,224")
    p.add_argument("--data", help="input source (default: synthetic for a package, random otherwise)")
    p.add_argument("--warmup-ms", type=float, default=200.0)
    p.add_argument("--duration-s", type=float, default=3.0, help="minimum timed duration (default 3)")
    p.add_argument("--iterations", type=int, default=10, help="minimum timed iterations (default 10)")
    p.add_argument("--threads", type=int, default=0, help="backend threads (0 = one per core)")
    p.add_argument("--json", type=Path, help="write the results here")

    p = command("ctl", "status, stats, health or model reload of a running daemon", _ctl)
    p.add_argument("command", choices=["status", "stats", "health", "reload"],
                   help="health: exit 0 only if ready; reload PACKAGE: swap the model without stopping")  # fmt: skip
    p.add_argument("package", nargs="?", help="for reload: the model package to load")
    _key_arguments(p)
    p.add_argument("--control", default="tcp://127.0.0.1:5557")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for an answer (2, or 60 for reload)")

    p = command("keys", "generate a CURVE key pair for the daemon or a client", _keys)
    p.add_argument("action", choices=["generate"])
    p.add_argument("name", help="key name, e.g. daemon or scanner-1")
    p.add_argument("--dir", type=Path, required=True, help="folder to write NAME.key and NAME.key_secret into")

    p = command("package", "validate a model package and show its card", _package)
    p.add_argument("package", nargs="?", help="package folder or archive (default: bundled demo model)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2) if args.command in ("serve", "demo") else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"edgert {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
