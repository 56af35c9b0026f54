"""`edgert build`: a model package to a TensorRT engine on the device that will run it.

Stages, each usable on its own:

1. `plan_build(package, options, trt_version)` (`trt/plan.py`): a `BuildPlan` from the package alone (its card, its graph and
   its calibration cache) and the TensorRT version: which ONNX file, strongly or weakly typed, which builder
   flags, profiles, DLA, sparse weights. Pure, no TensorRT: tested anywhere.
2. `trtexec_command(plan, ...)` (`trt/trtexec.py`): the equivalent `trtexec` command line, for a person to check a build, and the
   build itself where only `trtexec` is installed.
3. `build_engine(...)` (here): the build, through TensorRT's Python API or `trtexec`, stored in the content-keyed
   `EngineCache` with a manifest and a per-layer precision report (`trt/layers.py`).

How the TensorRT versions differ, and what the plan does about it (APIs looked up in NVIDIA's documentation for
each version, cited where the code diverges):

- 8.5 / 8.6 (JetPack 5): networks need the EXPLICIT_BATCH creation flag; no strongly typed networks, so an FP16
  graph is built with BuilderFlag.FP16 and a Q/DQ graph with BuilderFlag.INT8 (plus FP16 when the converter's
  fallback was FP16). `builder_optimization_level`, `hardware_compatibility_level` and VERSION_COMPATIBLE are
  8.6 additions. The DLA wants implicit INT8: the calibration cache on the FP32 graph.
- 10.x (JetPack 6): EXPLICIT_BATCH is deprecated and ignored; the STRONGLY_TYPED creation flag makes TensorRT
  follow the graph's own types, which is exactly what the accuracy gate measured, so typed graphs are built
  strongly typed. Calibrators are deprecated (10.1) but still work, and the DLA still takes implicit INT8.
- 11.x (JetPack 7.2.2+): strong typing is always on and the weak typing APIs are gone (BuilderFlag.FP16/INT8,
  IBuilderConfig.int8_calibrator, trtexec --fp16/--int8/--calib); precision comes from the ONNX only.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from converters.kinds import Builder as Builder  # defined with the other option enums, light to import
from converters.kinds import HardwareCompat as HardwareCompat  # defined with the other option enums, light to import
from converters.kinds import Int8Path as Int8Path  # defined with the other option enums, light to import
from converters.kinds import Sparse as Sparse  # defined with the other option enums, light to import
from converters.trt.layers import LayerInfo, LayerReport, parse_layer_info
from converters.trt.plan import (
    CALIBRATION_CACHE,
    MIN_VERSION,
    PREPARED_FP32,
    BuildError,
    BuildOptions,
    BuildPlan,
    TensorRTMissing,
    TrtVersion,
    parse_shapes,
    plan_build,
    shape_profiles,
)
from converters.trt.trtexec import TRTEXEC_JETPACK, find_trtexec, installed_version, trtexec_command, trtexec_version
from edge_runtime import __version__
from edge_runtime.backends.engine_cache import (
    EngineCache,
    OnMismatch,
    Platform,
    resolve,
)
from edge_runtime.core.package import ModelPackage

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    engine: Path
    plan: BuildPlan
    platform: Platform
    cached: bool  # taken from the cache, not built
    seconds: float = 0.0
    builder: Builder = Builder.PYTHON
    layers: LayerReport = field(default_factory=lambda: LayerReport(()))


def probe_platform(trt_version: TrtVersion, device: int = 0) -> Platform:
    """The GPU here (name, compute capability) through pycuda, else nvidia-smi; 'unknown' parts when neither
    answers (Jetson has no full nvidia-smi), and engines for an unknown GPU are never taken from the cache."""
    name, cc = "unknown", "unknown"
    try:
        import pycuda.driver as cuda  # lazily: optional

        cuda.init()
        dev = cuda.Device(device)
        name, cc = dev.name(), "{}.{}".format(*dev.compute_capability())
    except Exception:  # ImportError, or a driver that cannot be reached: try the next source
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                done = subprocess.run(
                    [smi, f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=20, check=False,
                )  # fmt: skip
                parts = [p.strip() for p in done.stdout.strip().split(",")]
                if done.returncode == 0 and len(parts) == 2 and all(parts):
                    name, cc = parts
            except (OSError, subprocess.TimeoutExpired):
                pass
    return Platform(str(trt_version), name, cc)


class _Heartbeat:
    """Says 'still building' every `every_s` while a build runs, so a many-minute Jetson build is never silent."""

    def __init__(self, say: Progress, every_s: float = 15.0) -> None:
        self._say, self._every = say, every_s
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="edgert-build-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._say(f"still building ({time.monotonic() - self._start:.0f} s)")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _build_python(plan: BuildPlan, say: Progress) -> tuple[bytes, str]:
    """Build with TensorRT's Python API; returns the serialized engine and the layer information JSON."""
    import tensorrt as trt  # lazily: optional

    version = plan.trt_version

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
                say(f"TensorRT error: {msg}")
            elif severity == trt.ILogger.Severity.WARNING:
                say(f"TensorRT warning: {msg}")

    logger = Logger()
    builder = trt.Builder(logger)
    creation = 0
    if version.major < 10:
        creation |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # 8.x; deprecated and ignored in 10
    if plan.strongly_typed and version.major == 10:
        creation |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # 10.x; always on in 11
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {plan.onnx.name}")
    if not parser.parse_from_file(str(plan.onnx)):  # resolves external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser refused {plan.onnx}: {errors}")
    config = builder.create_builder_config()
    if plan.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)  # 8.4+
    if plan.opt_level is not None:
        config.builder_optimization_level = plan.opt_level  # 8.6+
    for name in plan.builder_flags:
        config.set_flag(trt.BuilderFlag.__members__[name])  # FP16/INT8 exist up to 10.x only: the plan never asks 11
    if plan.hardware_compat is HardwareCompat.AMPERE_PLUS:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS  # 8.6+
    elif plan.hardware_compat is HardwareCompat.SAME_COMPUTE_CAPABILITY:
        # 10.?+ (in the 10.13 stubs, not in 8.6): looked up by name so that older bindings say so in one line
        level: trt.HardwareCompatibilityLevel | None = trt.HardwareCompatibilityLevel.__members__.get(
            "SAME_COMPUTE_CAPABILITY"
        )
        if level is None:
            raise BuildError(f"TensorRT {version} has no SAME_COMPUTE_CAPABILITY compatibility level")
        config.hardware_compatibility_level = level
    if plan.dla_core is not None:
        if builder.num_DLA_cores <= plan.dla_core:
            raise BuildError(f"DLA core {plan.dla_core} requested; this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    if plan.profiles:
        profile = builder.create_optimization_profile()
        for p in plan.profiles:
            profile.set_shape(p.name, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
        config.add_optimization_profile(profile)
    if plan.calibration_cache is not None:
        # Implicit INT8 (8.x / 10.x): IInt8EntropyCalibrator2 whose cache answers every question; deprecated in 10.1,
        # removed in 11 with IBuilderConfig.int8_calibrator.
        blob = plan.calibration_cache.read_bytes()

        class CacheCalibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)

            def get_batch_size(self) -> int:
                return 1

            def get_batch(self, names: list[str]) -> list[int]:
                return []  # no data ([] or None: "no more batches"): TensorRT must take every scale from the cache

            def read_calibration_cache(self) -> bytes:
                return blob

            def write_calibration_cache(self, cache: bytes) -> None:
                return None

        config.int8_calibrator = CacheCalibrator()
    timing = None
    if plan.timing_cache is not None:
        data = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
        timing = config.create_timing_cache(data)
        if not config.set_timing_cache(timing, ignore_mismatch=False):  # a cache from another TensorRT or GPU
            say(
                f"note: TensorRT refused the timing cache {plan.timing_cache} (another version or GPU): starting afresh"
            )
            timing = config.create_timing_cache(b"")
            config.set_timing_cache(timing, ignore_mismatch=False)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # for the layer report
    if version.major >= 10:  # IProgressMonitor is 10.0+: the builder reports its phases

        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                if parent_phase is None:
                    say(f"builder: {phase_name} ({num_steps} steps)")

            def step_complete(self, phase_name: str, step: int) -> bool:
                return True  # never cancel

            def phase_finish(self, phase_name: str) -> None:
                return None

        config.progress_monitor = Monitor()
    say(f"building with TensorRT {version} ({', '.join(plan.key_flags())})")
    with _Heartbeat(say):
        serialized: trt.IHostMemory | None = builder.build_serialized_network(network, config)  # None: failed
    if serialized is None:
        raise BuildError(f"TensorRT could not build {plan.onnx}: {'; '.join(logger.errors[-3:]) or 'no reason given'}")
    blob_out = bytes(serialized)
    if timing is not None and plan.timing_cache is not None:
        _write_atomic(plan.timing_cache, bytes(config.get_timing_cache().serialize()))
    runtime = trt.Runtime(logger)
    engine: trt.ICudaEngine | None = runtime.deserialize_cuda_engine(blob_out)
    if engine is None:
        raise BuildError(f"TensorRT cannot load the engine it has just built: {'; '.join(logger.errors[-3:])}")
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return blob_out, str(info)


def _build_trtexec(plan: BuildPlan, exe: str, say: Progress) -> tuple[bytes, str]:
    with tempfile.TemporaryDirectory(prefix="edgert-build-") as tmp:
        engine, layers = Path(tmp) / "engine.plan", Path(tmp) / "layers.json"
        cmd = trtexec_command(plan, engine, layers, trtexec=exe)
        say("building with " + " ".join(cmd))
        tail: list[str] = []
        with _Heartbeat(say):
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                tail = [*tail[-19:], line.rstrip()]
                if "[E]" in line or "[W]" in line:
                    say(f"trtexec: {line.strip()}")
            proc.wait()
        if proc.returncode != 0 or not engine.is_file():
            raise BuildError(f"trtexec failed (exit {proc.returncode}): " + " | ".join(tail[-5:]))
        return engine.read_bytes(), layers.read_text() if layers.is_file() else "{}"


def _write_atomic(path: Path, blob: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)


def build_engine(
    package: ModelPackage,
    options: BuildOptions = BuildOptions(),
    *,
    cache: EngineCache | None = None,
    on_mismatch: OnMismatch = OnMismatch.REBUILD,
    rebuild: bool = False,
    allow_build: bool = True,
    builder: Builder = Builder.AUTO,
    say: Progress = lambda line: None,
) -> BuildResult:
    """The engine for `package` on this device: from the content-keyed cache, or built (and cached). With
    `allow_build` off (a daemon told not to build on start), anything but a cache hit is an EngineCacheError."""
    found = installed_version()
    if found is None:
        raise TensorRTMissing()
    version, available = found
    if builder is Builder.PYTHON and available is not Builder.PYTHON:
        raise BuildError("TensorRT's Python bindings are not importable here (trtexec is): drop --builder")
    if builder is Builder.TRTEXEC or available is Builder.TRTEXEC:
        exe = find_trtexec()
        if exe is None:
            raise BuildError("trtexec is not on the PATH nor in /usr/src/tensorrt/bin")
        chosen = Builder.TRTEXEC
    else:
        exe, chosen = None, Builder.PYTHON
    plan = plan_build(package, options, version, say)
    platform = probe_platform(version, options.device)
    if not platform.known:
        say("note: cannot identify the GPU (no pycuda, no nvidia-smi): the engine is built, never reused from cache")
    cache = cache or EngineCache()
    key = plan.key(platform)
    timings: dict[str, Any] = {}

    def build(reason: str) -> Path:
        start = time.perf_counter()
        blob, info = _build_python(plan, say) if exe is None else _build_trtexec(plan, exe, say)
        seconds = time.perf_counter() - start
        report = parse_layer_info(info)
        path, _ = cache.store(
            key if platform.known else replace(key, flags=(*key.flags, f"unique={time.time_ns()}")),
            blob,
            model_name=plan.model_name,
            build_seconds=seconds,
            builder=chosen.value,
            tool=f"edgert {__version__}",
            layer_precisions=report.counts,
            extra_files={"layers.json": info.encode()},
        )
        timings.update(seconds=seconds, layers=report)
        say(f"built in {seconds:.1f} s: {path} ({path.stat().st_size / 1e6:.1f} MB); layers: {report.summary()}")
        return path

    if not allow_build and (rebuild or not platform.known):
        raise BuildError("building is off, and an engine for an unidentified GPU is never taken from the cache")
    if rebuild or not platform.known:
        engine = build("rebuild requested" if rebuild else "unknown GPU")
    else:
        engine = resolve(cache, key, on_mismatch, build if allow_build else None, say)
    layers = timings.get("layers")
    if layers is None:  # a cache hit: the report was stored beside the engine
        info_path = engine.parent / "layers.json"
        layers = parse_layer_info(info_path.read_text()) if info_path.is_file() else LayerReport(())
    return BuildResult(engine, plan, platform, "seconds" not in timings, timings.get("seconds", 0.0), chosen, layers)


def daemon_engine_source(
    options: BuildOptions, cache_dir: Path | None, build_on_start: bool, on_mismatch: OnMismatch
) -> Callable[[ModelPackage, Progress], Path]:
    """What `edgert serve --backend tensorrt` gives the daemon: package -> engine, from the cache or built before
    the daemon reports ready (or an error, when building on start is off)."""

    def source(package: ModelPackage, say: Progress) -> Path:
        cache = EngineCache(cache_dir) if cache_dir is not None else None
        found = build_engine(
            package, options, cache=cache, on_mismatch=on_mismatch, allow_build=build_on_start, say=say
        )
        return found.engine

    return source


__all__ = [  # the build's parts, importable from here as before the split
    "CALIBRATION_CACHE", "MIN_VERSION", "PREPARED_FP32", "TRTEXEC_JETPACK", "BuildError", "BuildOptions", "BuildPlan",
    "BuildResult", "Builder", "HardwareCompat", "Int8Path", "LayerInfo", "LayerReport", "Sparse", "TensorRTMissing",
    "TrtVersion", "build_engine", "daemon_engine_source", "find_trtexec", "installed_version", "parse_layer_info",
    "parse_shapes", "plan_build", "probe_platform", "shape_profiles", "trtexec_command", "trtexec_version",
]  # fmt: skip
