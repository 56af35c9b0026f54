"""Inference backends behind one `Runner` interface; heavy or optional ones are imported only when chosen."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.backends.base import BackendError, BackendKind, Runner

__all__ = ["BackendError", "BackendKind", "Runner", "create_runner"]


def create_runner(kind: BackendKind, model_path: str | Path, threads: int = 0) -> Runner:
    """A runner of the given kind for an ONNX model (not yet activated)."""
    if kind is BackendKind.ONNXRUNTIME:
        from edge_runtime.backends.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model_path, threads=threads)
    raise BackendError(f"backend '{kind.value}' is not available in this build")
