"""The bounded stream table between the receiver thread and the inference thread.

Each live stream has one slot: a frame arriving while its stream's slot is still full replaces the older frame
(newest frame wins), so latency stays bounded however fast one stream sends. The table itself is bounded too,
because stream ids are chosen by senders: at most `max_streams` live streams (a stream is forgotten once it has
been idle for `idle_ms` with nothing waiting), at most `max_pending_bytes` of waiting pixels, and a frame that has
waited longer than `max_age_ms` is dropped as stale, never served. A frame beyond those limits is refused, not
queued. Streams are served round robin: a stream that was just served goes to the back, so no stream can starve
another.

An integrator may declare the stream ids that exist (`[streams] ids`): a frame on any other id is refused before it
touches the table (`undeclared_stream`), so senders of made-up ids can neither take a declared stream's place nor
its share of inference. CURVE stays the real door; this is the lock on the inner one.

The table reports pressure (DEGRADED) only when a stream that is being served, or one that was declared, loses a
frame: a stale drop, or a frame refused for bytes on a live or declared stream (declared streams always fit
within `max_streams`). A refused
stranger is counted, never a reason to call the daemon degraded, or anyone who can send could keep it so.

With CURVE, a live stream belongs to the client key that opened it: a frame from another key on that stream id is
refused (`stream_owner`), so one authorized client cannot put its masks on another's display. Ownership ends with
the stream (idle for `idle_ms`). Without CURVE there is no identity to check and any sender may use any stream id.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_runtime.core.errors import OptionError
from edge_runtime.core.protocol import Frame


@dataclass(frozen=True)
class StreamLimits:
    max_streams: int = 8  # a cart has a probe or two, an endoscope, maybe a second display
    idle_ms: int = 5000  # a stream with no frame for this long is forgotten and its place freed
    max_pending_bytes: int = 128 * 1024 * 1024  # pixels waiting for inference, all streams together
    max_age_ms: int = 1000  # a frame that has waited longer is stale: dropped, never served
    # the stream ids that exist; empty: any id (up to max_streams at a time)
    ids: tuple[int, ...] = field(default=(), metadata={"items": "stream ids (integers)"})

    def __post_init__(self) -> None:
        if min(self.max_streams, self.idle_ms, self.max_pending_bytes, self.max_age_ms) <= 0:
            raise OptionError("streams: max_streams, idle_ms, max_pending_bytes and max_age_ms must be positive")
        bad = [i for i in self.ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 2**32]
        if bad:
            raise OptionError(f"streams.ids: {bad[0]!r} is not a stream id (0..2**32-1)")
        if len(set(self.ids)) != len(self.ids):
            raise OptionError("streams.ids: an id is declared twice")
        if len(self.ids) > self.max_streams:
            raise OptionError(
                f"streams.ids: {len(self.ids)} streams declared, but streams.max_streams is {self.max_streams}"
            )


class Admission(enum.Enum):
    """What became of a frame offered to the table."""

    ACCEPTED = "accepted"
    REPLACED = "replaced"  # accepted; an older frame of the same stream was waiting and is dropped
    STREAM_LIMIT = "stream_limit"  # refused: a new stream while `max_streams` are live
    PENDING_BYTES = "pending_bytes"  # refused: waiting pixels would exceed `max_pending_bytes`
    STREAM_OWNER = "stream_owner"  # refused: the stream belongs to another client key
    UNDECLARED_STREAM = "undeclared_stream"  # refused: stream ids are declared and this is not one of them

    @property
    def accepted(self) -> bool:
        return self in (Admission.ACCEPTED, Admission.REPLACED)


@dataclass(frozen=True)
class Pending:
    frame: Frame
    recv_ts_ns: int  # wall clock, for latency reports
    recv_mono_ns: int = 0  # monotonic, for the age limit
    admitted_ts_ns: int = 0  # wall clock once decoded and admitted (0: not recorded), for the stage breakdown


class StreamTable:
    def __init__(self, limits: StreamLimits = StreamLimits(), on_stale: Callable[[], None] | None = None) -> None:
        self.limits = limits
        self._on_stale = on_stale
        self._cond = threading.Condition()
        self._pending: OrderedDict[int, Pending] = OrderedDict()  # round-robin order of streams with a frame
        self._last_seen: dict[int, int] = {}  # live streams: monotonic ns of their last accepted frame
        self._owner: dict[int, str] = {}  # live streams opened by an authenticated client: its key (z85)
        self._pending_bytes = 0
        self._declared = frozenset(limits.ids)
        self._closed = False
        self.stale = 0  # frames dropped for age
        self.last_pressure_ns = 0  # monotonic ns of the last refusal or stale drop; 0: never

    def put(
        self,
        frame: Frame,
        recv_ts_ns: int,
        now_ns: int | None = None,
        owner: str | None = None,
        admitted_ts_ns: int = 0,
    ) -> Admission:
        """Offer a frame; `owner` is the sender's authenticated identity (CURVE), None without one."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        size = frame.pixels.nbytes
        sid = frame.stream_id
        if self._declared and sid not in self._declared:
            return Admission.UNDECLARED_STREAM
        with self._cond:
            self._expire(now)
            old = self._pending.get(sid)
            live = sid in self._last_seen
            if live:
                if self._owner.get(sid) != owner:
                    return Admission.STREAM_OWNER
            elif len(self._last_seen) >= self.limits.max_streams:  # never a declared one: they all fit
                return Admission.STREAM_LIMIT
            freed = old.frame.pixels.nbytes if old is not None else 0
            if self._pending_bytes - freed + size > self.limits.max_pending_bytes:
                if live or self._declared:  # a stream being served (or declared) loses a frame
                    self.last_pressure_ns = now
                return Admission.PENDING_BYTES
            self._last_seen[sid] = now
            if owner is not None:
                self._owner[sid] = owner
            self._pending_bytes += size - freed
            self._pending[sid] = Pending(frame, recv_ts_ns, now, admitted_ts_ns)  # a replaced stream keeps its turn
            self._cond.notify()
            return Admission.REPLACED if old is not None else Admission.ACCEPTED

    def refuses_at_once(self, stream_id: int, size: int) -> Admission | None:
        """What `put` would refuse whatever else waits: an undeclared stream, a frame over the byte budget on its
        own. Lets a decode queue refuse a compressed frame before the work of decoding it."""
        if self._declared and stream_id not in self._declared:
            return Admission.UNDECLARED_STREAM
        if size > self.limits.max_pending_bytes:
            return Admission.PENDING_BYTES
        return None

    def _expire(self, now: int) -> None:
        horizon = now - self.limits.idle_ms * 1_000_000
        for sid in [s for s, seen in self._last_seen.items() if seen < horizon and s not in self._pending]:
            del self._last_seen[sid]
            self._owner.pop(sid, None)

    def take(self, timeout: float) -> Pending | None:
        """The newest frame of the next stream in turn, or None on timeout or close. Stale frames are dropped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                now = time.monotonic_ns()
                while self._pending:
                    sid, pending = self._pending.popitem(last=False)
                    self._pending_bytes -= pending.frame.pixels.nbytes
                    if now - pending.recv_mono_ns <= self.limits.max_age_ms * 1_000_000:
                        return pending
                    self.stale += 1
                    self.last_pressure_ns = now
                    if self._on_stale is not None:
                        self._on_stale()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    @property
    def live_streams(self) -> int:
        with self._cond:
            return len(self._last_seen)

    @property
    def pending_bytes(self) -> int:
        with self._cond:
            return self._pending_bytes

    def close(self) -> int:
        """Wake the consumer and discard pending frames; returns how many were discarded."""
        with self._cond:
            self._closed = True
            discarded = len(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._cond.notify_all()
            return discarded
