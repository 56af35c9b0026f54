"""ONNX Runtime on the CPU: the embedded default backend, available everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import BackendError, Runner


class OnnxRuntimeRunner(Runner):
    def __init__(self, model_path: str | Path, threads: int = 0) -> None:
        """`threads` = 0 lets ONNX Runtime use one thread per physical core."""
        super().__init__(f"onnxruntime[{Path(model_path).name}]")
        self.model_path = Path(model_path)
        self.threads = threads
        self._session: Any = None  # onnxruntime.InferenceSession once active; ORT is imported lazily
        self._outputs: list[str] = []

    def _activate(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped exceptions for a broken or unsupported graph
            raise BackendError(f"{self.name}: cannot load {self.model_path}: {exc}") from exc
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
