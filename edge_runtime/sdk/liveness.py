"""The one rule for "is the AI live" and "is this overlay fresh", shared by every display.

`ResultSubscriber` (the SDK), `edgert view`, `edgert igtl` and `edgert record` all decide with `Liveness` and
`is_fresh`, so an integrator's display and the browser never disagree about the same daemon:

- The daemon is OFFLINE after `misses` of its own announced heartbeat intervals without a heartbeat or a result
  (PROTOCOL.md: two), or at once when the transport reports a disconnect; STOPPED after a STOPPING heartbeat until
  it speaks again; ONLINE otherwise, with DEGRADED from its heartbeat shown as "AI live (degraded)".
- After a disconnect only a message that came over a new connection (the socket's monitor reports a completed
  handshake first) brings the daemon back: a heartbeat still queued from before the drop is history, not life.
- A result is fresh while its frame's capture time is at most `max_age_ms` ago. A result without a capture time
  (0) has an unknown age and is never fresh: an overlay of unknown age is not drawn.

Pure: times are arguments (monotonic seconds for liveness, epoch ns for ages), so tests replay sequences exactly.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import zmq

from edge_runtime.core.protocol import DaemonState, Heartbeat, ModelId

DEFAULT_MISSES = 2.0  # heartbeat intervals without a sign of life before the daemon is offline (PROTOCOL.md)
DEFAULT_INTERVAL_MS = 500.0  # until the first heartbeat says otherwise
MIN_INTERVAL_MS, MAX_INTERVAL_MS = 10.0, 10_000.0  # an announced interval outside this is ignored
# what a subscriber's socket monitor reports (zmq's get_monitor_socket(MONITOR_EVENTS)) for `Liveness.on_monitor`
MONITOR_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
MONITOR_HEAD = struct.Struct(
    "=Hi"
)  # a monitor message's first frame: event id, event value (libzmq's zmq_socket_monitor)


class Link(str, enum.Enum):
    """What a display may say about the AI; the values are what the view's page receives."""

    WAITING = "waiting"  # nothing heard from the daemon yet
    ONLINE = "online"
    OFFLINE = "offline"  # no heartbeat or result within the timeout, or the connection dropped
    STOPPED = "stopped"  # the daemon said it is stopping


@dataclass(frozen=True)
class LinkStatus:
    link: Link
    reason: str  # one line for the banner
    state: DaemonState | None = None  # the daemon's own state from its last heartbeat
    model: ModelId | None = None
    preview: str | None = None  # the preview endpoint in use, None when the daemon has no preview stream

    @property
    def live(self) -> bool:
        return self.link is Link.ONLINE

    @property
    def banner(self) -> str:
        """The short text every display shows beside the image."""
        if self.link is Link.ONLINE:
            return "AI live (degraded)" if self.state is DaemonState.DEGRADED else "AI live"
        if self.link is Link.STOPPED:
            return "AI offline (stopped)"
        if self.link is Link.WAITING:
            return "AI offline (waiting for the daemon)"
        return "AI offline"


class Liveness:
    """Whether the daemon is alive, from heartbeats, results and connection events; times are monotonic seconds."""

    def __init__(self, misses: float = DEFAULT_MISSES) -> None:
        if not misses > 0:
            raise ValueError(f"misses must be positive, not {misses}")
        self.misses = misses
        self.interval_ms = DEFAULT_INTERVAL_MS
        self.last_seen: float | None = None
        self.heartbeat: Heartbeat | None = None
        self.disconnected = False  # the transport dropped (the daemon's process is gone) and no sign of life since
        self.reconnected = True  # a connection came up since the last drop: what arrives now is news
        self.stopping = False

    @property
    def timeout_s(self) -> float:
        return self.misses * self.interval_ms / 1000.0

    def on_heartbeat(self, hb: Heartbeat, now: float) -> None:
        if not self.reconnected:  # queued before the drop: it may say the daemon stopped, never that it lives
            if hb.state is DaemonState.STOPPING:
                self.heartbeat, self.stopping = hb, True
            return
        self.heartbeat = hb
        interval = hb.info.get("interval_ms")
        if isinstance(interval, int | float) and not isinstance(interval, bool):
            if MIN_INTERVAL_MS <= interval <= MAX_INTERVAL_MS:  # also false for NaN
                self.interval_ms = float(interval)
        self.stopping = hb.state is DaemonState.STOPPING
        self.last_seen = now
        self.disconnected = False

    def on_result(self, now: float) -> None:
        if not self.reconnected:
            return
        self.last_seen = now
        self.disconnected = False
        self.stopping = False  # results again: a restarted daemon

    def on_disconnect(self) -> None:
        self.disconnected = True
        self.reconnected = False

    def on_connect(self) -> None:
        """A connection to the daemon completed its handshake; the daemon is live again once it speaks."""
        self.reconnected = True

    def on_monitor(self, parts: list[bytes]) -> None:
        """One message from a socket monitor (MONITOR_EVENTS); other events and malformed ones are ignored."""
        if len(parts) != 2 or len(parts[0]) != MONITOR_HEAD.size:
            return
        event, _value = MONITOR_HEAD.unpack(parts[0])
        if event == zmq.EVENT_DISCONNECTED:
            self.on_disconnect()
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.on_connect()

    def status(self, now: float, preview: str | None = None) -> LinkStatus:
        hb = self.heartbeat
        state, model = (hb.state, hb.model) if hb is not None else (None, None)

        def say(link: Link, reason: str) -> LinkStatus:
            return LinkStatus(link, reason, state, model, preview)

        if self.last_seen is None:
            return say(Link.WAITING, "waiting for the AI daemon")
        if self.stopping:
            return say(Link.STOPPED, "AI daemon stopped")
        silent = now - self.last_seen
        if self.disconnected:
            return say(Link.OFFLINE, f"connection to the AI daemon lost {silent:.1f} s ago")
        if silent > self.timeout_s:
            return say(Link.OFFLINE, f"no heartbeat from the AI daemon for {silent:.1f} s")
        return say(Link.ONLINE, "AI live" if state is not DaemonState.DEGRADED else "AI live (degraded)")


def age_ms(capture_ts_ns: int, now_ns: int) -> float:
    """How old a frame is, capture to `now_ns` (both epoch ns); infinite when the frame has no capture time."""
    if capture_ts_ns <= 0:
        return float("inf")
    return (now_ns - capture_ts_ns) / 1e6


def is_fresh(capture_ts_ns: int, now_ns: int, max_age_ms: float | None) -> bool:
    """Whether an overlay of a frame captured at `capture_ts_ns` may still be drawn; `max_age_ms=None` keeps all."""
    return max_age_ms is None or age_ms(capture_ts_ns, now_ns) <= max_age_ms
