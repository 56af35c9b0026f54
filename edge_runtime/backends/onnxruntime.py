"""ONNX Runtime: on the CPU (the embedded default, available everywhere), or on an NVIDIA GPU through the CUDA
or TensorRT execution providers of `onnxruntime-gpu`.

ONNX Runtime quietly runs a session on the CPU when a requested GPU provider cannot load (a missing CUDA or
TensorRT library prints a warning and carries on). A cart that believes it runs on the GPU and runs on the CPU
misses every deadline, so here a provider that is not available is an error before the session is made, and a
session that came up without the provider it was asked for is an error after.

The TensorRT provider's engine and timing caches go under a folder named by the ONNX file's sha256 and the
provider options, inside edgert's engine cache: ORT's own cache names have collided between models of the same
structure (onnxruntime issue 6455) and drifted between runs (issue 14999); a folder per content cannot collide.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import BackendError, BackendKind, CpuOptions, GpuOptions, Runner
from edge_runtime.backends.engine_cache import default_cache_dir
from edge_runtime.backends.sessions import CPU_PROVIDER, CpuSetup, ort_error, session_options
from edge_runtime.core.archives import file_sha256

CPU = CPU_PROVIDER
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_HINT = (
    "install onnxruntime-gpu in place of onnxruntime (`pip uninstall onnxruntime && pip install onnxruntime-gpu`) "
    "with CUDA and cuDNN libraries of the versions it was built for (and TensorRT for the TensorRT provider; on "
    "Jetson, the wheel for your JetPack from the Jetson Zoo)"
)


def provider_chain(kind: BackendKind, options: GpuOptions, cache: Path | None) -> list[tuple[str, dict[str, Any]]]:
    """The providers to ask for, first choice first; nodes the first cannot run fall to the next, CPU last."""
    cuda = (CUDA, {"device_id": options.device, "cudnn_conv_algo_search": "EXHAUSTIVE"})
    if kind is BackendKind.ONNXRUNTIME:
        return [(CPU, {})]
    if kind is BackendKind.ONNXRUNTIME_CUDA:
        return [cuda, (CPU, {})]
    if kind is BackendKind.ONNXRUNTIME_TENSORRT:
        trt: dict[str, Any] = {
            "device_id": options.device,
            "trt_fp16_enable": bool(options.fp16),
            "trt_int8_enable": bool(options.int8),
            "trt_int8_use_native_calibration_table": False,
        }
        if options.workspace_mib is not None:
            trt["trt_max_workspace_size"] = options.workspace_mib << 20
        if cache is not None:
            trt.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(cache),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(cache),
            )
        return [(TENSORRT, trt), cuda, (CPU, {})]
    raise BackendError(f"backend '{kind.value}' is not an ONNX Runtime backend")


def check_available(chain: Sequence[tuple[str, dict[str, Any]]], available: Sequence[str]) -> None:
    """Refuse a chain whose first provider this onnxruntime build does not have."""
    wanted = chain[0][0]
    if wanted not in available:
        raise BackendError(f"ONNX Runtime has no {wanted} here (this build has {', '.join(available)}); {GPU_HINT}")


def check_session(chain: Sequence[tuple[str, dict[str, Any]]], active: Sequence[str]) -> None:
    """Refuse a session that came up without the provider it was asked for: ONNX Runtime's silent CPU fallback."""
    wanted = chain[0][0]
    if wanted not in active:
        raise BackendError(
            f"ONNX Runtime fell back to {', '.join(active)}: {wanted} did not load (its CUDA, cuDNN or TensorRT "
            f"libraries are missing or of the wrong version; ONNX Runtime's warning above says which); {GPU_HINT}"
        )


def ort_cache_dir(model_path: Path, chain: Sequence[tuple[str, dict[str, Any]]], root: Path, ort_version: str) -> Path:
    """A folder per (ONNX content, provider options, ONNX Runtime version) for the TensorRT provider's caches."""
    options = {name: {k: v for k, v in opts.items() if "cache" not in k} for name, opts in chain}
    text = json.dumps({"onnx": file_sha256(model_path), "ort": ort_version, "providers": options}, sort_keys=True)
    return root / "onnxruntime-tensorrt" / hashlib.sha256(text.encode()).hexdigest()[:24]


def graph_precisions(model_path: Path) -> tuple[bool, bool]:
    """(FP16, Q/DQ) of the file: what the TensorRT provider must enable to run the graph as converted."""
    import onnx

    from edge_runtime.core.package import graph_precisions as of_model

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for a broken file
        raise BackendError(f"{model_path}: not a readable ONNX model ({exc.__class__.__name__})") from None
    return of_model(model)


class OnnxRuntimeRunner(Runner):
    def __init__(
        self,
        model_path: str | Path,
        threads: int = 0,
        kind: BackendKind = BackendKind.ONNXRUNTIME,
        gpu: GpuOptions = GpuOptions(),
        cpu: CpuOptions = CpuOptions(),
    ) -> None:
        """`threads` = 0 lets ONNX Runtime use one thread per physical core (or one per `cpu.worker_cpus`, plus
        the calling thread, when those are given)."""
        label = "onnxruntime" if kind is BackendKind.ONNXRUNTIME else kind.value
        super().__init__(f"{label}[{Path(model_path).name}]")
        self.model_path = Path(model_path)
        self.threads = threads
        self.kind = kind
        self.gpu = gpu
        self.cpu = cpu
        self.providers: list[str] = []  # what the session runs on, once active
        self._session: Any = None  # onnxruntime.InferenceSession once active; ORT is imported lazily
        self._outputs: list[str] = []

    def _activate(self) -> None:
        import onnxruntime as ort

        options = session_options(CpuSetup(self.threads, self.cpu))
        gpu = self.gpu
        if self.kind is BackendKind.ONNXRUNTIME_TENSORRT and (gpu.fp16 is None or gpu.int8 is None):
            fp16, int8 = graph_precisions(self.model_path)
            gpu = replace(gpu, fp16=fp16 if gpu.fp16 is None else gpu.fp16, int8=int8 if gpu.int8 is None else gpu.int8)
        chain = provider_chain(self.kind, gpu, None)
        check_available(chain, ort.get_available_providers())
        if self.kind is BackendKind.ONNXRUNTIME_TENSORRT:
            cache = ort_cache_dir(self.model_path, chain, gpu.cache_dir or default_cache_dir(), ort.__version__)
            cache.mkdir(parents=True, exist_ok=True)
            chain = provider_chain(self.kind, gpu, cache)
        try:
            session = ort.InferenceSession(
                str(self.model_path),
                options,
                providers=[name for name, _ in chain],
                provider_options=[o for _, o in chain],
            )
        except Exception as exc:  # ORT raises its own untyped exceptions for a broken or unsupported graph
            raise BackendError(f"{self.name}: cannot load {self.model_path}: {ort_error(exc)}") from exc
        check_session(chain, session.get_providers())
        self.providers = list(session.get_providers())
        self._outputs = [o.name for o in session.get_outputs()]
        self._session = session

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None
        try:
            values = self._session.run(self._outputs, dict(feed))
        except Exception as exc:
            raise BackendError(f"{self.name}: inference failed: {exc}") from exc
        return dict(zip(self._outputs, values))

    def _deactivate(self) -> None:
        self._session = None
