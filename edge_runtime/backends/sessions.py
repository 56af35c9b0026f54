"""The one place edgert sets ONNX Runtime's session options on the CPU.

The daemon's runner, every decision a conversion takes on measured time (INT8 placement, pruning's timings, the
shipped model's latency), the accuracy gate and `bench` open their sessions here, so a model is timed the way the
cart will run it: the same intra-op thread count, the same spinning and the same worker affinity ([cpu] of the
daemon's config, `CpuOptions`). A conversion timed with ORT's defaults on a 2-core machine and shipped to a cart
that pins two workers and stops spinning after each run would have been measured on a different machine.

ONNX Runtime is imported when a session is made, never at import: this module is part of the core.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.backends.base import CpuOptions
from edge_runtime.core.errors import OptionError

CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class CpuSetup:
    """How one model's sessions use the CPUs: intra-op threads (0: ORT's choice, or one per worker CPU plus the
    calling thread) and the spinning and worker affinity of `CpuOptions`. The daemon builds it from its config's
    `model.threads` and `[cpu]`; `edgert convert --config` and `edgert bench --config` read the same file."""

    threads: int = 0
    options: CpuOptions = CpuOptions()

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise OptionError(f"threads must be >= 0 (0: ONNX Runtime's choice), got {self.threads}")

    def describe(self) -> str:
        threads = self.options.threads(self.threads)
        cpus = ",".join(map(str, self.options.worker_cpus))
        return f"{threads or 'auto'} threads, spin {self.options.spin.value}" + (
            f", workers on CPUs {cpus}" if cpus else ""
        )


def session_options(
    setup: CpuSetup = CpuSetup(),
    *,
    optimize: bool = True,
    profile_prefix: Path | None = None,
    optimized_path: Path | None = None,
) -> Any:
    """`onnxruntime.SessionOptions` for `setup`. `optimize=False` keeps the graph as written (the FP16 emulation depends on its rounding Casts);
    `profile_prefix` turns on ORT's profiler; `optimized_path` saves the graph as ORT optimized it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = setup.options.threads(setup.threads)
    options.inter_op_num_threads = 1  # one model, one sequential executor: a second pool would only compete
    options.log_severity_level = 3  # errors only: ORT's warnings (unused initializers, ...) are not ours to show
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    for key, value in setup.options.session_config(setup.threads).items():
        options.add_session_config_entry(key, value)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_ORT_WHERE = re.compile(r"\S+\.(?:cc|cpp|h):\d+ (?:[\w:~<>]+\(.*?\)(?: const)? )?")  # file:line and C++ signature


def ort_error(exc: BaseException, limit: int = 300) -> str:
    """ONNX Runtime's message without its status prefix and C++ source location, bounded: what a person needs
    ("Unsupported model IR version: 14, max supported IR version: 11") would otherwise come after 250 characters of
    `/onnxruntime_src/...model.cc:181 onnxruntime::Model::Model(onnx::ModelProto&&, ...)`."""
    text = _ORT_PREFIX.sub("", str(exc).strip())
    text = _ORT_WHERE.sub("", text, count=1).strip()
    return text[:limit] + ("..." if len(text) > limit else "")


def cpu_session(
    model: bytes | str | Path,
    setup: CpuSetup = CpuSetup(),
    *,
    optimize: bool = True,
    profile_prefix: Path | None = None,
    optimized_path: Path | None = None,
) -> Any:
    """An `onnxruntime.InferenceSession` on the CPU provider for a serialized model or a model file. ORT's own
    exceptions pass through; callers name the model in their error."""
    import onnxruntime as ort

    options = session_options(setup, optimize=optimize, profile_prefix=profile_prefix, optimized_path=optimized_path)
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=[CPU_PROVIDER])


__all__ = ["CPU_PROVIDER", "CpuSetup", "cpu_session", "ort_error", "session_options"]
