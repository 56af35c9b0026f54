"""Daemon counters and recent latencies, updated from several threads and read by control and heartbeats."""

from __future__ import annotations

import enum
import threading
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.core.protocol import RejectReason

_WINDOW = 1024  # latencies kept for the percentiles reported by `stats`
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # Prometheus histogram bounds


class Stage(str, enum.Enum):
    """Where a frame's time goes inside the daemon, in order: together the stages span capture to publish. The
    subscriber's own receive (publish to received) is the only part of the end-to-end latency not among them."""

    RECEIVE = "receive"  # capture (the sender's clock) -> read off the ingest socket: sending and transport
    DECODE = "decode"  # message checks, decoding, admission to the stream table
    QUEUE = "queue"  # waiting in the stream table for the inference thread
    PREPROCESS = "preprocess"  # resize, colour, normalise
    MODEL = "model"  # the backend runner alone
    POSTPROCESS = "postprocess"  # the task head: mask, areas, contours, boxes, scores, tracking
    ENCODE = "encode"  # the result message
    PUBLISH = "publish"  # stamping the publish time and the PUB send, on the inference thread


def percentiles_ms(values_ns: list[int] | np.ndarray) -> dict[str, float] | None:
    if len(values_ns) == 0:
        return None
    arr = np.asarray(values_ns, np.float64) / 1e6
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3), "max": round(float(arr.max()), 3)}


@dataclass
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    total_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[next((i for i, bound in enumerate(BUCKETS_S) if seconds <= bound), len(BUCKETS_S))] += 1
        self.total_s += seconds

    def cumulative(self) -> tuple[list[tuple[str, int]], float]:
        running, buckets = 0, []
        for bound, count in zip([*(str(b) for b in BUCKETS_S), "+Inf"], self.counts):
            running += count
            buckets.append((bound, running))
        return buckets, self.total_s


class DaemonStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames_in = 0  # accepted frames
        self.frames_out = 0  # results published
        self.frames_dropped = 0  # accepted but superseded by a newer frame of the same stream before inference
        self.inference_errors = 0
        self.deadline_misses = 0  # inferences that took longer than the watchdog deadline
        self.frames_stale = 0  # accepted, but waited longer than the age limit: dropped, never served
        self.ingest_resets = 0  # times the ingest socket was re-opened to drop a message too long to read
        self.rejected: Counter[str] = Counter()  # ingest messages, by reason
        self.control_rejected: Counter[str] = Counter()  # control requests refused (each one answered), by reason
        self._hist = {stage: LatencyHistogram() for stage in ("queue", "inference")}
        self._queue_ns: deque[int] = deque(maxlen=_WINDOW)
        self._infer_ns: deque[int] = deque(maxlen=_WINDOW)
        self._stage_ns: dict[Stage, deque[int]] = {stage: deque(maxlen=_WINDOW) for stage in Stage}
        self._stage_hist = {stage: LatencyHistogram() for stage in Stage}

    def accepted(self, replaced: bool) -> None:
        with self._lock:
            self.frames_in += 1
            self.frames_dropped += int(replaced)

    def reject(self, reason: RejectReason) -> int:
        with self._lock:
            self.rejected[reason.value] += 1
            return self.rejected[reason.value]

    def rejected_count(self, *reasons: str) -> dict[str, int]:
        """Counts for these reasons only: cheap enough for every heartbeat (no latency percentiles)."""
        with self._lock:
            return {r: self.rejected.get(r, 0) for r in reasons}

    def reject_control(self, reason: RejectReason) -> int:
        with self._lock:
            self.control_rejected[reason.value] += 1
            return self.control_rejected[reason.value]

    def inferred(
        self,
        queue_ns: int,
        infer_ns: int,
        ok: bool,
        deadline_ns: int | None = None,
        stages: Mapping[Stage, int] | None = None,
    ) -> None:
        """One frame inferred: `queue_ns` from receipt to inference start, `infer_ns` the whole pipeline run, and
        the finer `stages` measured so far (all but PUBLISH, which `published` adds)."""
        with self._lock:
            self.deadline_misses += int(deadline_ns is not None and infer_ns > deadline_ns)
            self._queue_ns.append(queue_ns)
            self._infer_ns.append(infer_ns)
            self._hist["queue"].observe(queue_ns / 1e9)
            self._hist["inference"].observe(infer_ns / 1e9)
            self.inference_errors += int(not ok)
            for stage, ns in (stages or {}).items():
                self._stage(stage, ns)

    def _stage(self, stage: Stage, ns: int) -> None:
        ns = max(0, ns)  # the receive stage compares two processes' clocks; never report a negative time
        self._stage_ns[stage].append(ns)
        self._stage_hist[stage].observe(ns / 1e9)

    def stale(self) -> None:
        with self._lock:
            self.frames_stale += 1

    def ingest_reset(self) -> None:
        with self._lock:
            self.ingest_resets += 1

    def published(self, publish_ns: int | None = None) -> None:
        """A result left the PUB socket, `publish_ns` after it was encoded."""
        with self._lock:
            self.frames_out += 1
            if publish_ns is not None:
                self._stage(Stage.PUBLISH, publish_ns)

    def dropped_at_shutdown(self, n: int) -> None:
        with self._lock:
            self.frames_dropped += n

    def histograms(self) -> dict[str, tuple[list[tuple[str, int]], float]]:
        """Per stage: cumulative Prometheus buckets [(upper bound, count)] and the sum of observations."""
        with self._lock:
            return {stage: h.cumulative() for stage, h in self._hist.items()}

    def stage_histograms(self) -> dict[Stage, tuple[list[tuple[str, int]], float]]:
        """As `histograms`, per fine stage (see `Stage`)."""
        with self._lock:
            return {stage: h.cumulative() for stage, h in self._stage_hist.items()}

    @property
    def frames_rejected(self) -> int:
        with self._lock:
            return sum(self.rejected.values())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            queue, infer = list(self._queue_ns), list(self._infer_ns)
            stages = {stage.value: percentiles_ms(list(ns)) for stage, ns in self._stage_ns.items() if ns}
            return {
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "frames_dropped": self.frames_dropped,
                "frames_stale": self.frames_stale,
                "ingest_resets": self.ingest_resets,
                "frames_rejected": sum(self.rejected.values()),
                "rejected_by_reason": dict(self.rejected),
                "control_rejected_by_reason": dict(self.control_rejected),
                "inference_errors": self.inference_errors,
                "deadline_misses": self.deadline_misses,
                "latency_ms": {"queue": percentiles_ms(queue), "inference": percentiles_ms(infer)},
                "stages_ms": stages,  # the last frames' time per stage, in the order a frame passes them
            }
