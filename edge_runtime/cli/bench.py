"""`edgert bench`: a package's latency and throughput on a backend."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from converters.kinds import Precision
from edge_runtime.backends.base import BackendKind
from edge_runtime.cli.common import (
    BACKEND_HELP,
    BACKENDS,
    SOURCE_HELP,
    Command,
    ExitCode,
    Output,
    UsageError,
    _cpu_arguments,
    _cpu_setup,
    _input_shape_argument,
    _json_argument,
    _verbosity,
    choices_of,
)
from edge_runtime.tools.bench import BenchOptions


def _bench(args: argparse.Namespace, out: Output) -> int:
    import tempfile

    import onnx

    from calibration.kinds import Sampling
    from converters.convert import convert_model, load_model
    from converters.data import load_feeds
    from converters.graph import real_inputs
    from converters.options import ConvertOptions
    from converters.prepare import PrepareReport, fix_input_shapes
    from edge_runtime.backends import GpuOptions, create_runner
    from edge_runtime.tools.bench import ProgressBar, bench_runner

    kind = BackendKind(args.backend)
    setup = _cpu_setup(args)
    engine = None
    if kind.needs_engine:
        engine = _bench_engine(args, out)
    model, card, _, _ = load_model(Path(args.model), None)
    conversion = None
    data = args.data or ((card.data_source or "synthetic") if card else "random")
    if args.precision != Precision.FP32.value:
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

    if args.precision != Precision.FP32.value or args.input_shape is not None:
        raise UsageError("--backend tensorrt benchmarks a converted package as it is: convert first, then bench it")
    package = load_package(args.model)
    return build_engine(package, BuildOptions(device=args.device), say=out.progress).engine


def add_parser(command: Command) -> None:
    p = command("bench", "measure a model's latency and throughput on a backend (warm-up, then timed runs)", _bench)
    p.add_argument("model", help="ONNX file or model package")
    p.add_argument("--precision", choices=choices_of(Precision), default=Precision.FP32.value,
                   help="convert first (behind the accuracy gate, default options) and measure that")  # fmt: skip
    p.add_argument("--backend", choices=BACKENDS, default=BackendKind.ONNXRUNTIME.value, help=BACKEND_HELP)
    p.add_argument("--device", type=int, default=0, help="CUDA device for the GPU backends (default 0)")
    _input_shape_argument(p)
    p.add_argument("--data", help="input, calibration and gate data (default: synthetic for a package, random "
                   "otherwise): " + SOURCE_HELP)  # fmt: skip
    p.add_argument("--samples", type=int, default=32, help="frames for calibration and the gate (default 32)")
    p.add_argument("--warmup-ms", type=float, default=BenchOptions.warmup_ms)
    p.add_argument("--duration-s", type=float, default=BenchOptions.duration_s,
                   help=f"minimum timed duration (default {BenchOptions.duration_s:g})")  # fmt: skip
    p.add_argument("--iterations", type=int, default=BenchOptions.min_iterations,
                   help=f"minimum timed iterations (default {BenchOptions.min_iterations})")  # fmt: skip
    _cpu_arguments(p)
    _json_argument(p, "the results")
