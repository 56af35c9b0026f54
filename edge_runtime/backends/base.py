"""The one runner interface every inference backend implements (activate / infer / deactivate)."""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from edge_runtime.core.errors import EdgertError


class BackendKind(str, enum.Enum):
    ONNXRUNTIME = "onnxruntime"  # ONNX Runtime on the CPU: the embedded default
    ONNXRUNTIME_CUDA = "onnxruntime-cuda"  # onnxruntime-gpu, CUDA execution provider
    ONNXRUNTIME_TENSORRT = "onnxruntime-tensorrt"  # onnxruntime-gpu, TensorRT execution provider
    TENSORRT = "tensorrt"  # a TensorRT engine built on this device (`edgert build`)
    TRITON = "triton"  # the model on a Triton Inference Server ([triton]); the rest of the pipeline stays here

    @property
    def needs_engine(self) -> bool:
        return self is BackendKind.TENSORRT


@dataclass(frozen=True)
class StageTimes:
    """One inference split where the backend can measure it (CUDA events): copies in, compute, copies out."""

    h2d_ms: float
    compute_ms: float
    d2h_ms: float


@dataclass(frozen=True)
class GpuOptions:
    """The provider options that matter on a cart."""

    device: int = 0
    fp16: bool | None = None  # TensorRT provider: FP16 kernels; None: on for a graph with FP16 weights
    int8: bool | None = None  # TensorRT provider: the graph's explicit Q/DQ pairs; None: on when it has them
    workspace_mib: int | None = None
    cache_dir: Path | None = None  # engine caches (TensorRT); default: edgert's engine cache


class Spin(str, enum.Enum):
    """When ONNX Runtime's intra-op workers busy-wait for work instead of sleeping."""

    ALWAYS = "always"  # ONNX Runtime's own default: they go on spinning for a while after each run (ours too)
    RUN = "run"  # while a run is in progress only; they stop at once when it returns: half the CPU, slower
    NEVER = "never"  # they always sleep: the least CPU, the slowest model


@dataclass(frozen=True)
class CpuOptions:
    """How a CPU backend uses the cores. Spinning after a run (ONNX Runtime's default, kept) costs a core while
    idle: on a 2-core board it doubled the daemon's CPU use (74% -> 130% at 30 fps) and added 0.3 ms to publishing,
    but workers that sleep between runs wake late, which cost 0.9 ms per inference and a far worse p99
    (docs/LATENCY.md). Spin.RUN is the choice for a cart short of CPU or power."""

    spin: Spin = Spin.ALWAYS
    worker_cpus: tuple[int, ...] = ()  # pin ONNX Runtime's intra-op workers to these CPUs, in turn; () leaves them

    def threads(self, threads: int) -> int:
        """Intra-op threads for a requested count: with worker CPUs and no count, one per worker CPU plus the
        calling thread (which runs part of every parallel section itself)."""
        return threads or (len(self.worker_cpus) + 1 if self.worker_cpus else 0)

    def session_config(self, threads: int) -> dict[str, str]:
        """ONNX Runtime session config entries for these options and an intra-op thread count (0: ORT's)."""
        config = {
            Spin.RUN: {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
            Spin.ALWAYS: {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "0"},
            Spin.NEVER: {"session.intra_op.allow_spinning": "0"},
        }[self.spin]
        workers = self.threads(threads) - 1
        if self.worker_cpus and workers > 0:  # one entry per worker; the calling thread is not among them
            cpus = [str(self.worker_cpus[i % len(self.worker_cpus)]) for i in range(workers)]
            config["session.intra_op_thread_affinities"] = ";".join(cpus)
        return config


class BackendError(EdgertError, RuntimeError):
    """A backend failed to load a model or to run it; the message names the backend and the model."""


class Runner(abc.ABC):
    """Runs one model. `activate` loads it, `infer` runs one feed, `deactivate` frees it.

    Usable as a context manager. `infer` is called from one thread at a time.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._active = False

    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> None:
        if not self._active:
            self._activate()
            self._active = True

    def deactivate(self) -> None:
        if self._active:
            self._active = False
            self._deactivate()

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._active:
            raise BackendError(f"{self.name}: infer() called before activate()")
        return self._infer(feed)

    def stage_times(self) -> StageTimes | None:
        """The last inference's host-to-device, compute and device-to-host times; None where there are no
        transfers (a CPU backend: compute is the whole latency)."""
        return None

    def unavailable(self) -> str | None:
        """Why the backend cannot serve now, for a backend that can lose what it runs on (a remote server); None
        while it can. The daemon is DEGRADED while this says something (daemon/health.py)."""
        return None

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()
