"""Daemon counters and recent latencies, updated from several threads and read by control and heartbeats."""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

import numpy as np

from edge_runtime.protocol import RejectReason

_WINDOW = 1024  # latencies kept for the percentiles reported by `stats`


def percentiles_ms(values_ns: list[int] | np.ndarray) -> dict[str, float] | None:
    if len(values_ns) == 0:
        return None
    arr = np.asarray(values_ns, np.float64) / 1e6
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3), "max": round(float(arr.max()), 3)}


class DaemonStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames_in = 0  # accepted frames
        self.frames_out = 0  # results published
        self.frames_dropped = 0  # accepted but superseded by a newer frame of the same stream before inference
        self.inference_errors = 0
        self.deadline_misses = 0  # inferences that took longer than the watchdog deadline
        self.rejected: Counter[str] = Counter()
        self._queue_ns: deque[int] = deque(maxlen=_WINDOW)
        self._infer_ns: deque[int] = deque(maxlen=_WINDOW)

    def accepted(self, replaced: bool) -> None:
        with self._lock:
            self.frames_in += 1
            self.frames_dropped += int(replaced)

    def reject(self, reason: RejectReason) -> int:
        with self._lock:
            self.rejected[reason.value] += 1
            return self.rejected[reason.value]

    def inferred(self, queue_ns: int, infer_ns: int, ok: bool, deadline_ns: int | None = None) -> None:
        with self._lock:
            self.deadline_misses += int(deadline_ns is not None and infer_ns > deadline_ns)
            self._queue_ns.append(queue_ns)
            self._infer_ns.append(infer_ns)
            self.inference_errors += int(not ok)

    def published(self) -> None:
        with self._lock:
            self.frames_out += 1

    def dropped_at_shutdown(self, n: int) -> None:
        with self._lock:
            self.frames_dropped += n

    @property
    def frames_rejected(self) -> int:
        with self._lock:
            return sum(self.rejected.values())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            queue, infer = list(self._queue_ns), list(self._infer_ns)
            return {
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "frames_dropped": self.frames_dropped,
                "frames_rejected": sum(self.rejected.values()),
                "rejected_by_reason": dict(self.rejected),
                "inference_errors": self.inference_errors,
                "deadline_misses": self.deadline_misses,
                "latency_ms": {"queue": percentiles_ms(queue), "inference": percentiles_ms(infer)},
            }
