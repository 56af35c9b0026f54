"""`edgert bench`: model latency and throughput on a backend, measured the way trtexec measures.

`run_bench(BenchRequest)` is the whole command as a library call: load the model or package, convert it first when a
precision is asked (behind the accuracy gate, as `edgert convert` does), build or find the engine for TensorRT, time
it with `bench_runner`, and return a `BenchReport`.

Warm up for `warmup_ms`, then run at least `min_iterations` and for at least `duration_s`. Report throughput and
latency min / mean / median / p90 / p95 / p99 / max, and the coefficient of variation with a warning above
`cv_warn`. Every backend fills the same JSON schema. Host-to-device, compute and device-to-host times are reported
separately where the backend has them. A CPU backend has no transfers: compute is the whole latency, and the
transfer fields are null.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from converters.kinds import Precision
from edge_runtime.backends import Runner
from edge_runtime.backends.base import BackendKind
from edge_runtime.backends.sessions import CpuSetup
from edge_runtime.backends.triton import TritonOptions
from edge_runtime.core.errors import OptionError

SCHEMA = "edgert.bench/1"


@dataclass(frozen=True)
class BenchOptions:
    warmup_ms: float = 200.0
    duration_s: float = 3.0
    min_iterations: int = 10
    cv_warn: float = 0.05  # CPUs shared with other work vary more than trtexec's 1% GPU threshold

    def __post_init__(self) -> None:
        if self.warmup_ms < 0 or self.duration_s <= 0 or self.min_iterations <= 0:
            raise OptionError("warm-up must be >= 0, duration and iterations > 0")


def latency_stats(samples_ms: np.ndarray) -> dict[str, float]:
    p = np.percentile(samples_ms, [50, 90, 95, 99])
    return {
        "min": round(float(samples_ms.min()), 4),
        "mean": round(float(samples_ms.mean()), 4),
        "median": round(float(p[0]), 4),
        "p90": round(float(p[1]), 4),
        "p95": round(float(p[2]), 4),
        "p99": round(float(p[3]), 4),
        "max": round(float(samples_ms.max()), 4),
    }


class ProgressBar:
    """A one-line bar on stderr, redrawn at most 5 times a second; silent when stderr is not a terminal."""

    def __init__(self, total_s: float, stream: TextIO = sys.stderr, enabled: bool = True) -> None:
        self.total_s, self.stream = total_s, stream
        self.enabled = enabled and stream.isatty()
        self._last = 0.0

    def update(self, elapsed_s: float, iterations: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        done = min(1.0, elapsed_s / self.total_s)
        bar = "#" * int(done * 30)
        self.stream.write(f"\r[{bar:<30}] {elapsed_s:5.1f}/{self.total_s:.1f} s {iterations:7d} it")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def bench_runner(
    runner: Runner,
    feed: Mapping[str, np.ndarray],
    options: BenchOptions = BenchOptions(),
    on_progress: Callable[[float, int], None] | None = None,
) -> dict[str, Any]:
    """Time `runner.infer(feed)` (the runner must be active); returns the common result dict."""
    warm_end = time.perf_counter() + options.warmup_ms / 1000.0
    warm = 0
    while time.perf_counter() < warm_end or warm == 0:
        runner.infer(feed)
        warm += 1
    samples: list[float] = []
    stages: list[tuple[float, float, float]] = []  # h2d, compute, d2h (CUDA events) where the backend has them
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        runner.infer(feed)
        t1 = time.perf_counter()
        samples.append((t1 - t0) * 1000.0)
        times = runner.stage_times()
        if times is not None:
            stages.append((times.h2d_ms, times.compute_ms, times.d2h_ms))
        elapsed = t1 - start
        if on_progress:
            on_progress(elapsed, len(samples))
        if elapsed >= options.duration_s and len(samples) >= options.min_iterations:
            break
    wall = time.perf_counter() - start
    arr = np.asarray(samples)
    cv = float(arr.std() / arr.mean()) if arr.mean() > 0 else 0.0
    lat = latency_stats(arr)
    split = np.asarray(stages) if len(stages) == len(samples) and stages else None
    return {
        "schema": SCHEMA,
        "warmup": {"ms": options.warmup_ms, "iterations": warm},
        "iterations": len(samples),
        "duration_s": round(wall, 3),
        "throughput_per_s": round(len(samples) / wall, 2),
        "latency_ms": lat,
        # A CPU backend has no transfers: compute is the whole latency. A GPU backend splits each inference with
        # CUDA events, as trtexec reports H2D latency, GPU compute time and D2H latency.
        "h2d_ms": latency_stats(split[:, 0]) if split is not None else None,
        "compute_ms": latency_stats(split[:, 1]) if split is not None else lat,
        "d2h_ms": latency_stats(split[:, 2]) if split is not None else None,
        "cv": round(cv, 5),
        "cv_warning": cv > options.cv_warn,
        "machine": machine_info(),
    }


def machine_info() -> dict[str, Any]:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


@dataclass(frozen=True)
class BenchRequest:
    """What `edgert bench` measures: a model or package on a backend, optionally converted first."""

    model: Path
    backend: BackendKind = BackendKind.ONNXRUNTIME
    precision: Precision = Precision.FP32  # anything else: convert first (behind the accuracy gate) and time that
    device: int = 0  # CUDA device for the GPU backends
    input_shape: tuple[int, ...] | None = None  # fix a dynamic model's input dims
    data: str | None = None  # input, calibration and gate data; None: synthetic for a package, random otherwise
    samples: int = 32  # frames for calibration and the gate
    timing: BenchOptions = BenchOptions()
    cpu: CpuSetup = field(default_factory=CpuSetup)
    triton: TritonOptions = field(default_factory=TritonOptions)  # --backend triton: the server; model: the card's

    def __post_init__(self) -> None:
        if self.backend.needs_engine and (self.precision is not Precision.FP32 or self.input_shape is not None):
            raise OptionError(
                "--backend tensorrt benchmarks a converted package as it is: convert first, then bench it"
            )
        if self.samples < 1:
            raise OptionError(f"--samples must be >= 1, got {self.samples}")
        if self.backend is BackendKind.TRITON and self.precision is not Precision.FP32:
            raise OptionError("--backend triton benchmarks the model the server has: convert and deploy it first")


@dataclass(frozen=True)
class BenchReport:
    """The timings in bench_runner's schema (with what was run), or why the conversion before them failed."""

    timed: dict[str, Any] | None
    failure: str | None = None  # the accuracy gate refused the conversion: nothing was timed
    engine: Path | None = None  # the TensorRT engine timed


def run_bench(
    request: BenchRequest,
    say: Callable[[str], None] | None = None,
    on_progress: Callable[[float, int], None] | None = None,
    verbose: bool = False,
) -> BenchReport:
    """Convert (if asked), then time the model as `request` says; `say` gets progress lines."""
    import onnx

    from calibration.kinds import Sampling
    from converters.convert import convert_model, default_data, load_model
    from converters.data import load_feeds
    from converters.graph import real_inputs
    from converters.options import ConvertOptions
    from converters.prepare import PrepareReport, fix_input_shapes
    from edge_runtime.backends import GpuOptions, create_runner
    from edge_runtime.core.card import ModelCard

    tell = say or (lambda _: None)
    engine = _engine(request, tell) if request.backend.needs_engine else None
    model, card, _, _ = load_model(request.model, None)
    conversion = None
    precision = card.precision if isinstance(card, ModelCard) else "fp32"  # what the artifact is, as its card says
    if precision != "fp32" and request.precision is not Precision.FP32:
        raise OptionError(f"{request.model} is already converted ({precision}): bench it as it is, without --precision")
    data = request.data or default_data(card)
    if request.precision is not Precision.FP32:
        tell(f"converting to {request.precision.value} (accuracy gate on {data})")
        source = request.data or (None if card else "random")  # None: convert's own default for a package
        options = ConvertOptions(
            precision=request.precision, data=source, calib=source, input_shape=request.input_shape,
            samples=request.samples, cpu=request.cpu,
        )  # fmt: skip
        result = convert_model(request.model, options, progress=tell if verbose else None)
        if result.model is None:
            return BenchReport(None, failure=result.report.failure)
        model = result.model
        verdict = result.report.verify.comparison if result.report.verify else None  # frames used for nothing else
        conversion = {
            "precision": request.precision.value,
            "shipped": result.report.shipped,
            "metric_name": verdict.metric_name if verdict else None,
            "metric": verdict.metric if verdict else None,
            "lower_bound": verdict.lower_bound if verdict else None,
            "data": result.report.verify_data.description if result.report.verify_data else None,
            "int8_ops": result.report.int8.int8_ops if result.report.int8 else None,
            "quantizable_ops": result.report.int8.quantizable_ops if result.report.int8 else None,
        }
    elif request.input_shape is not None:
        fix_input_shapes(model, {real_inputs(model.graph)[0].name: request.input_shape}, PrepareReport())
    feed = load_feeds(data, model, card, Sampling(1)).feeds[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        runner = create_runner(
            request.backend, path, threads=request.cpu.threads, engine=engine, gpu=GpuOptions(device=request.device),
            cpu=request.cpu.options, triton=request.triton, model_name=card.name if isinstance(card, ModelCard) else "",
        )  # fmt: skip
        with runner:
            timed = bench_runner(runner, feed, request.timing, on_progress)
    timed.update(
        model=str(request.model), backend=request.backend.value,
        precision=request.precision.value if request.precision is not Precision.FP32 else precision,
        identity=f"{card.name} {card.version}" if isinstance(card, ModelCard) else None,
        threads=request.cpu.threads, cpu=request.cpu.describe(),
        input_shapes={k: list(v.shape) for k, v in feed.items()}, conversion=conversion,
    )  # fmt: skip
    if engine is not None:
        timed["engine"] = str(engine)
    return BenchReport(timed, engine=engine)


def _engine(request: BenchRequest, say: Callable[[str], None]) -> Path:
    """The engine `bench --backend tensorrt` times: the package's, from the cache or built here."""
    from converters.engine import BuildOptions, build_engine
    from edge_runtime.core.package import load_package

    package = load_package(request.model)
    return build_engine(package, BuildOptions(device=request.device), say=say).engine
