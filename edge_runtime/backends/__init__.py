"""Inference backends behind one `Runner` interface; heavy or optional ones are imported only when chosen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.backends.base import BackendError, BackendKind, CpuOptions, GpuOptions, Runner, Spin, StageTimes

if TYPE_CHECKING:
    from edge_runtime.backends.triton import TritonOptions

__all__ = [
    "BackendError",
    "BackendKind",
    "CpuOptions",
    "GpuOptions",
    "Runner",
    "Spin",
    "StageTimes",
    "create_runner",
]


def create_runner(
    kind: BackendKind,
    model_path: str | Path,
    threads: int = 0,
    *,
    engine: str | Path | None = None,
    gpu: GpuOptions = GpuOptions(),
    cpu: CpuOptions = CpuOptions(),
    triton: TritonOptions | None = None,
    model_name: str = "",
) -> Runner:
    """A runner of the given kind (not yet activated). ONNX Runtime kinds run `model_path`; the TensorRT kind runs
    `engine`, a plan built on this device for that model (see `converters.engine.build_engine`); the Triton kind
    sends each feed to the server `triton` names, whose model (by default `model_name`) must match `model_path`."""
    if kind is BackendKind.TRITON:
        from edge_runtime.backends.triton import TritonOptions, TritonRunner

        return TritonRunner(model_path, model_name, triton or TritonOptions())
    if kind is BackendKind.TENSORRT:
        if engine is None:
            raise BackendError(f"the tensorrt backend runs a built engine; none was given for {model_path}")
        from edge_runtime.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(engine, device=gpu.device)
    from edge_runtime.backends.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(model_path, threads=threads, kind=kind, gpu=gpu, cpu=cpu)
