"""`edgert bench`: a package's latency and throughput on a backend."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from converters.bench import BenchOptions, BenchRequest
from converters.kinds import Precision
from edge_runtime.backends.base import BackendKind
from edge_runtime.backends.triton import TritonOptions
from edge_runtime.cli.common import (
    BACKEND_HELP,
    BACKENDS,
    SOURCE_HELP,
    Command,
    ExitCode,
    Output,
    _cpu_arguments,
    _cpu_setup,
    _input_shape_argument,
    _json_argument,
    _verbosity,
    choices_of,
)


def _bench(args: argparse.Namespace, out: Output) -> int:
    from converters.bench import ProgressBar, run_bench

    request = BenchRequest(
        model=Path(args.model), backend=BackendKind(args.backend), precision=Precision(args.precision),
        device=args.device, input_shape=args.input_shape, data=args.data, samples=args.samples,
        timing=BenchOptions(warmup_ms=args.warmup_ms, duration_s=args.duration_s, min_iterations=args.iterations),
        cpu=_cpu_setup(args), triton=TritonOptions(url=args.triton_url, model=args.triton_model),
    )  # fmt: skip
    bar = ProgressBar(args.duration_s, enabled=not out.quiet)
    report = run_bench(request, say=out.progress, on_progress=bar.update, verbose=_verbosity(args) > 0)
    bar.close()
    if report.timed is None:
        print(f"edgert bench: {report.failure}", file=sys.stderr)
        return ExitCode.GATE_FAILED
    timed = report.timed
    lat = timed["latency_ms"]
    named = f": {timed['identity']}" if timed["identity"] else ""
    out.say(f"{args.model}{named} on {args.backend} ({timed['precision']}, {request.cpu.describe()}), "
            f"input {timed['input_shapes']}")  # fmt: skip
    out.say(f"  {timed['iterations']} iterations in {timed['duration_s']:.2f} s after {timed['warmup']['iterations']} "
            f"warm-up: {timed['throughput_per_s']:.1f} inferences/s")  # fmt: skip
    out.say("  latency ms  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()))
    for part in ("h2d_ms", "compute_ms", "d2h_ms"):
        if timed[part] is not None and timed["h2d_ms"] is not None:
            out.say(f"  {part[:-3]:<10}  " + "  ".join(f"{k} {v:.3f}" for k, v in timed[part].items()))
    out.say(f"  coefficient of variation {timed['cv'] * 100:.2f}%")
    if timed["cv_warning"]:
        print(f"  warning: latency varies by more than {request.timing.cv_warn * 100:.0f}%: the machine is busy or "
              "throttling; numbers from this run are not comparable", file=sys.stderr)  # fmt: skip
    if timed["conversion"]:
        out.say(f"  conversion: {timed['conversion']}")
    out.result(timed)
    return ExitCode.OK


def add_parser(command: Command) -> None:
    p = command("bench", "measure a model's latency and throughput on a backend (warm-up, then timed runs)", _bench)
    p.add_argument("model", help="ONNX file or model package")
    p.add_argument("--precision", choices=choices_of(Precision), default=BenchRequest.precision.value,
                   help="convert first (behind the accuracy gate, default options) and measure that")  # fmt: skip
    p.add_argument("--backend", choices=BACKENDS, default=BenchRequest.backend.value, help=BACKEND_HELP)
    p.add_argument("--device", type=int, default=BenchRequest.device, help="CUDA device for the GPU backends")
    p.add_argument("--triton-url", default=TritonOptions.url, help="--backend triton: the server's gRPC host:port")
    p.add_argument("--triton-model", default=TritonOptions.model,
                   help="--backend triton: the model's name there (default: the card's name)")  # fmt: skip
    _input_shape_argument(p)
    p.add_argument("--data", help="input, calibration and gate data (default: synthetic for a package, random "
                   "otherwise): " + SOURCE_HELP)  # fmt: skip
    p.add_argument("--samples", type=int, default=BenchRequest.samples,
                   help=f"frames for calibration and the gate (default {BenchRequest.samples})")  # fmt: skip
    p.add_argument("--warmup-ms", type=float, default=BenchOptions.warmup_ms)
    p.add_argument("--duration-s", type=float, default=BenchOptions.duration_s,
                   help=f"minimum timed duration (default {BenchOptions.duration_s:g})")  # fmt: skip
    p.add_argument("--iterations", type=int, default=BenchOptions.min_iterations,
                   help=f"minimum timed iterations (default {BenchOptions.min_iterations})")  # fmt: skip
    _cpu_arguments(p)
    _json_argument(p, "the results")
