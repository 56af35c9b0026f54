"""Display side of the SDK: receive results, discard those too old to show, and know whether the daemon is alive."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import zmq

from edge_runtime.core.errors import EndpointError, escaped
from edge_runtime.core.protocol import (
    Heartbeat,
    Limits,
    MessageType,
    ProtocolError,
    Result,
    decode_heartbeat,
    decode_result,
    message_type,
)
from edge_runtime.core.results import TaskResult, typed
from edge_runtime.sdk.liveness import DEFAULT_MISSES, MONITOR_EVENTS, LinkStatus, Liveness, is_fresh
from edge_runtime.sdk.security import ClientKeys

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
    `link_status()` (and `daemon_alive`, `status_text`) follow the one liveness rule of `edge_runtime.sdk.liveness`,
    the same as `edgert view`, `igtl` and `record`: offline after `misses` of the daemon's announced heartbeat
    intervals without a sign of life, at once when the connection drops, stopped after a STOPPING heartbeat.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        max_age_ms: float | None = 250.0,
        misses: float = DEFAULT_MISSES,
        stream_id: int | None = None,
        limits: Limits = Limits(),
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        keys: ClientKeys | None = None,
    ) -> None:
        """`keys`: CURVE, for a daemon whose results socket is encrypted (`[security]`): its public key and this
        display's key pair, which must be in the daemon's allow-list."""
        self.max_age_ms = max_age_ms
        self.stream_id = stream_id
        self.limits = limits
        self.stats = SubscriberStats()
        self._liveness = Liveness(misses)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 16)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)  # back quickly when the daemon restarts
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        if keys is not None:
            keys.apply(self._sock)
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close()
            raise EndpointError(f"cannot connect result subscriber to {endpoint}: {exc}") from None
        self._monitor: zmq.Socket[bytes] | None = self._sock.get_monitor_socket(MONITOR_EVENTS)

    @property
    def last_heartbeat(self) -> Heartbeat | None:
        return self._liveness.heartbeat

    def link_status(self) -> LinkStatus:
        """Whether the AI is live now, and why not: the same answer `edgert view` gives for the same daemon."""
        self._poll_disconnects()
        return self._liveness.status(time.monotonic())

    @property
    def daemon_alive(self) -> bool:
        """A heartbeat or a result lately, no dropped connection or STOPPING heartbeat since."""
        return self.link_status().live

    @property
    def status_text(self) -> str:
        """What a display shows beside the image: never an old overlay without saying the AI is offline."""
        return self.link_status().banner

    def _poll_disconnects(self) -> None:
        monitor = self._monitor
        if monitor is None or monitor.closed:
            return
        while True:
            try:
                parts = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._liveness.on_monitor(parts)

    def _handle(self, parts: list[bytes]) -> Result | None:
        kind = message_type(parts)
        now = time.monotonic()
        try:
            if kind is MessageType.HEARTBEAT:
                hb = decode_heartbeat(parts)
                self._poll_disconnects()  # drops and reconnects first: they decide whether this message is news
                self._liveness.on_heartbeat(hb, now)
                self.stats.heartbeats += 1
                return None
            result = decode_result(parts, self.limits)
        except ProtocolError as exc:
            self.stats.rejected += 1
            log.warning("ignored undecodable message: %s", escaped(exc))
            return None
        self._poll_disconnects()
        self._liveness.on_result(now)  # a result is as good a sign of life as a heartbeat
        if self.stream_id is not None and result.stream_id != self.stream_id:
            return None
        if not is_fresh(result.capture_ts_ns, time.time_ns(), self.max_age_ms):
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
        """Like `recv`, as the typed view of the result's task (`edge_runtime.core.results`)."""
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
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._sock.close(linger=0)

    def __enter__(self) -> ResultSubscriber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
