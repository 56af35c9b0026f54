"""Display side of the SDK: receive results, discard those too old to show, and know whether the daemon is alive."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import zmq

from edge_runtime.errors import EndpointError, escaped
from edge_runtime.protocol import (
    DaemonState,
    Heartbeat,
    Limits,
    MessageType,
    ProtocolError,
    Result,
    decode_heartbeat,
    decode_result,
    message_type,
)
from edge_runtime.results import TaskResult, typed

log = logging.getLogger("edgert.subscriber")


@dataclass
class SubscriberStats:
    results: int = 0  # delivered to the caller
    stale: int = 0  # discarded: older than max_age_ms
    skipped: int = 0  # discarded by recv_latest in favour of a newer result
    heartbeats: int = 0
    rejected: int = 0  # undecodable messages


class ResultSubscriber:
    """Subscribes to a daemon's result socket.

    Results whose frame was captured more than `max_age_ms` ago are discarded and counted, never returned: an
    overlay that old would show the surgeon anatomy that has moved. Ages use the capture timestamp, so scanner and
    display clocks must agree (same cart, or NTP/PTP); pass `max_age_ms=None` to keep every result.
    `daemon_alive` turns False when no heartbeat came for `heartbeat_timeout_ms` or the daemon said it is stopping.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        max_age_ms: float | None = 250.0,
        heartbeat_timeout_ms: float = 2000.0,
        stream_id: int | None = None,
        limits: Limits = Limits(),
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.max_age_ms = max_age_ms
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.stream_id = stream_id
        self.limits = limits
        self.stats = SubscriberStats()
        self.last_heartbeat: Heartbeat | None = None
        self._last_heartbeat_at: float | None = None  # monotonic seconds of the last heartbeat or result
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 16)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close()
            raise EndpointError(f"cannot connect result subscriber to {endpoint}: {exc}") from None

    @property
    def daemon_alive(self) -> bool:
        """A heartbeat or a result within the timeout, and no STOPPING heartbeat since."""
        if self._last_heartbeat_at is None:
            return False
        if self.last_heartbeat is not None and self.last_heartbeat.state is DaemonState.STOPPING:
            return False
        return (time.monotonic() - self._last_heartbeat_at) * 1000.0 < self.heartbeat_timeout_ms

    @property
    def status_text(self) -> str:
        """What a display shows beside the image: never an old overlay without saying the AI is offline."""
        if self.daemon_alive:
            return "AI live"
        if self.last_heartbeat is not None and self.last_heartbeat.state is DaemonState.STOPPING:
            return "AI offline (stopped)"
        return "AI offline"

    def _handle(self, parts: list[bytes]) -> Result | None:
        kind = message_type(parts)
        try:
            if kind is MessageType.HEARTBEAT:
                self.last_heartbeat = decode_heartbeat(parts)
                self._last_heartbeat_at = time.monotonic()
                self.stats.heartbeats += 1
                return None
            result = decode_result(parts, self.limits)
        except ProtocolError as exc:
            self.stats.rejected += 1
            log.warning("ignored undecodable message: %s", escaped(exc))
            return None
        self._last_heartbeat_at = time.monotonic()  # a result is as good a sign of life as a heartbeat
        if self.last_heartbeat is not None and self.last_heartbeat.state is DaemonState.STOPPING:
            self.last_heartbeat = None  # results again: a restarted daemon
        if self.stream_id is not None and result.stream_id != self.stream_id:
            return None
        if self.max_age_ms is not None:
            origin = result.capture_ts_ns or result.recv_ts_ns
            if (time.time_ns() - origin) / 1e6 > self.max_age_ms:
                self.stats.stale += 1
                return None
        return result

    def recv(self, timeout_ms: float = 1000.0) -> Result | None:
        """The next fresh result, or None if none arrived within `timeout_ms` (heartbeats are consumed meanwhile)."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            remaining = int(max(0.0, deadline - time.monotonic()) * 1000)
            if not self._sock.poll(remaining):
                return None
            result = self._handle(self._sock.recv_multipart())
            if result is not None:
                self.stats.results += 1
                return result
            if time.monotonic() >= deadline:
                return None

    def recv_typed(self, timeout_ms: float = 1000.0) -> TaskResult | None:
        """Like `recv`, as the typed view of the result's task (`edge_runtime.results`)."""
        result = self.recv(timeout_ms)
        return typed(result) if result is not None else None

    def recv_latest(self, timeout_ms: float = 1000.0) -> Result | None:
        """Like `recv`, but drains everything queued and returns only the newest fresh result (for slow displays)."""
        latest = self.recv(timeout_ms)
        while latest is not None and self._sock.poll(0):
            newer = self._handle(self._sock.recv_multipart())
            if newer is not None:
                self.stats.skipped += 1
                latest = newer
        return latest

    def __iter__(self) -> Iterator[Result]:
        """Fresh results until the socket is closed."""
        while not self._sock.closed:
            result = self.recv(200)
            if result is not None:
                yield result

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> ResultSubscriber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
