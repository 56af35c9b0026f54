"""The one runner interface every inference backend implements (activate / infer / deactivate)."""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from types import TracebackType

import numpy as np

from edge_runtime.errors import EdgertError


class BackendKind(str, enum.Enum):
    ONNXRUNTIME = "onnxruntime"


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
