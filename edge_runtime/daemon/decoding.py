"""Compressed frames wait here, between the receive thread and the decode threads, so that no thread that answers
senders ever decodes.

An 8192x8192 JPEG is 200 MB of pixels and most of a second of CPU to decode. Decoded on the receive thread (which
also answers every REQ sender), one sender's flood of them made every other sender wait for its reply. Now the
receive thread only reads a JPEG's header (its declared size and mode, against `[limits]`), answers, and leaves the
compressed bytes here; `threads` decode threads take them. What keeps one stream from taking the others' share:

- newest wins per stream: a stream has at most one frame waiting; a newer one replaces it (as in the stream table);
- at most one frame of a stream is being decoded at a time, and streams take turns (round robin), so with two
  decode threads a stream that floods holds one thread at most and the others still decode;
- a budget of decoded bytes per second per stream (a token bucket, one second deep, and never shallower than the
  largest frame `[limits]` allow): a frame over its stream's budget is refused at once (`decode_budget`);
- at most `max_waiting_bytes` of compressed bytes wait, all streams together (`decode_queue_full` beyond).

Refusals here are counted, never a reason to call the daemon degraded: anyone who can send could keep it so.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from edge_runtime.core.errors import OptionError
from edge_runtime.core.protocol import RejectReason

Job = TypeVar("Job")


@dataclass(frozen=True)
class DecodeLimits:
    """`[decode]`: the decode threads of compressed ingest (imagezmq's `send_jpg`)."""

    threads: int = 2  # one stream's flood holds one of them at most
    stream_bytes_per_s: int = 512 * 1024 * 1024  # decoded bytes per stream and second: 1080p RGB at 60 fps fits
    max_waiting_bytes: int = 64 * 1024 * 1024  # compressed bytes waiting for a decode thread, all streams

    def __post_init__(self) -> None:
        if not 1 <= self.threads <= 16:
            raise OptionError(f"decode.threads: {self.threads} outside 1..16")
        if min(self.stream_bytes_per_s, self.max_waiting_bytes) <= 0:
            raise OptionError("decode: stream_bytes_per_s and max_waiting_bytes must be positive")


@dataclass
class _Waiting(Generic[Job]):
    job: Job
    compressed: int
    decoded: int  # what the header declares: the budget is charged this


class _Bucket:
    """Decoded bytes a stream may still have decoded this second."""

    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level, self.stamp = level, stamp


class DecodeQueue(Generic[Job]):
    """Per-stream newest-wins slots taken round robin by the decode threads; thread-safe."""

    def __init__(
        self,
        limits: DecodeLimits,
        largest_frame_bytes: int,
        max_streams: int,
        on_drop: Callable[[Job], None] | None = None,
    ) -> None:
        """`on_drop` is told of every queued job that will never be taken (replaced, or dropped at close)."""
        self.limits = limits
        self._on_drop = on_drop
        self._depth = float(max(limits.stream_bytes_per_s, largest_frame_bytes))  # a bucket holds one second
        self._max_streams = max_streams
        self._cond = threading.Condition()
        self._waiting: OrderedDict[int, _Waiting[Job]] = OrderedDict()  # round-robin order
        self._decoding: set[int] = set()  # streams with a frame in a decode thread
        self._buckets: dict[int, _Bucket] = {}
        self._waiting_bytes = 0
        self._closed = False
        self.replaced = 0  # frames dropped for a newer one of their stream before they were decoded

    def offer(
        self, stream_id: int, job: Job, compressed: int, decoded: int, now: float | None = None
    ) -> RejectReason | None:
        """Queue a frame for decoding; None when queued, else why it was refused (nothing kept)."""
        now = time.monotonic() if now is None else now
        with self._cond:
            if self._closed:
                return RejectReason.DECODE_QUEUE_FULL
            bucket = self._bucket(stream_id, now)
            old = self._waiting.get(stream_id)
            refund = old.decoded if old is not None else 0  # a replaced frame is never decoded: its charge returns
            if bucket.level + refund < decoded:
                return RejectReason.DECODE_BUDGET
            freed = old.compressed if old is not None else 0
            if self._waiting_bytes - freed + compressed > self.limits.max_waiting_bytes:
                return RejectReason.DECODE_QUEUE_FULL
            bucket.level += refund - decoded
            self._waiting_bytes += compressed - freed
            self._waiting[stream_id] = _Waiting(job, compressed, decoded)  # a replaced stream keeps its turn
            self._cond.notify()
        if old is not None:
            self.replaced += 1
            if self._on_drop is not None:
                self._on_drop(old.job)
        return None

    def _bucket(self, stream_id: int, now: float) -> _Bucket:
        bucket = self._buckets.get(stream_id)
        if bucket is None:
            if len(self._buckets) >= 4 * self._max_streams:  # forget full buckets: they say nothing
                for sid in [s for s, b in self._buckets.items() if self._refill(b, now) >= self._depth]:
                    del self._buckets[sid]
            bucket = self._buckets[stream_id] = _Bucket(self._depth, now)
        self._refill(bucket, now)
        return bucket

    def _refill(self, bucket: _Bucket, now: float) -> float:
        bucket.level = min(self._depth, bucket.level + (now - bucket.stamp) * self.limits.stream_bytes_per_s)
        bucket.stamp = now
        return bucket.level

    def take(self, timeout: float) -> tuple[int, Job] | None:
        """The next stream's waiting frame whose stream is not being decoded, or None on timeout or close. The caller
        calls `done(stream_id)` when it has finished with it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                for sid in self._waiting:
                    if sid not in self._decoding:
                        waiting = self._waiting.pop(sid)
                        self._waiting_bytes -= waiting.compressed
                        self._decoding.add(sid)
                        return sid, waiting.job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    def done(self, stream_id: int) -> None:
        with self._cond:
            self._decoding.discard(stream_id)
            if stream_id in self._waiting:
                self._cond.notify()

    @property
    def waiting_bytes(self) -> int:
        with self._cond:
            return self._waiting_bytes

    def close(self) -> int:
        """Wake the decode threads and drop what waits; returns how many frames were dropped."""
        with self._cond:
            self._closed = True
            dropped = [w.job for w in self._waiting.values()]
            self._waiting.clear()
            self._waiting_bytes = 0
            self._cond.notify_all()
        if self._on_drop is not None:
            for job in dropped:
                self._on_drop(job)
        return len(dropped)
