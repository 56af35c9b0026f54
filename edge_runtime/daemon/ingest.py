"""The ingest socket, read one part at a time, and the connection events of the daemon's listening sockets.

Why the ingest socket is more than `recv_multipart`:

- ZeroMQ delivers a multipart message only once every part has arrived, and its one size option, MAXMSGSIZE, bounds
  each part, not the message: no option bounds the number of parts. A message of a million empty parts (2 MB on
  the wire) is held by libzmq at about 64 bytes a part before the first part can be read, and reading it whole into
  Python costs far more (768 MB and 4.8 s with `recv_multipart(copy=False)`).
- So parts are read one at a time and at most `MessageBounds.max_parts` of them, and at most `max_bytes`, are kept.
  The rest of a refused message is read and dropped for at most `DISCARD_BUDGET_S`; a message longer than that is
  dropped in C by closing the socket and opening it again on the same endpoint (0.6 ms; libzmq frees the message in
  its own thread). Peers reconnect by themselves: the SDK's senders retry after 10 ms. No reference to a refused
  message outlives `receive`.

`PeerEvents` reads a socket's ZeroMQ monitor and counts the connections refused at the handshake (a wrong server key,
a mismatched key pair, no CURVE or PLAIN against a CURVE server, an incompatible socket type, raw bytes that are
not ZMTP), which never reach the application as messages. An oversize part makes libzmq drop the connection with
no event that tells it from a peer leaving: those are not counted.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from edge_runtime.core.protocol import RejectReason

log = logging.getLogger("edgert.daemon")

DISCARD_BUDGET_S = 0.002  # longest time spent reading and dropping the rest of one refused message
REBIND_TIMEOUT_S = 2.0  # libzmq closes a listener asynchronously: the same endpoint may be busy for a moment
HANDSHAKE_IVL_MS = 5000  # a connection that has not completed the ZMTP handshake by then is closed (default 30 s)
_MONITOR_IDS = itertools.count()


@dataclass(frozen=True)
class MessageBounds:
    """What one ingest message may hold, all parts together."""

    max_parts: int  # a frame has 2 or 3 parts: the slack lets the decoder name a wrong count
    max_bytes: int  # all parts together

    def __post_init__(self) -> None:
        if self.max_parts <= 0 or self.max_bytes <= 0:
            raise ValueError("message bounds must be positive")


@dataclass(frozen=True)
class Received:
    """One message read within bounds: the parts and, with CURVE, the authenticated identity that sent it."""

    parts: list[zmq.Frame]
    user_id: str | None
    envelope: bytes | None = None  # a ROUTER socket's routing id of the sender, to answer it


@dataclass(frozen=True)
class Refused:
    reason: RejectReason
    detail: str
    reset: bool  # the socket was reopened to drop the rest of the message
    envelope: bytes | None = None  # a ROUTER socket's routing id of the sender, to answer it (None after a reset)


class IngestSocket:
    """The daemon's ingest socket: created by `factory`, re-created (same endpoint) when a message must be dropped
    faster than it can be read. Used by one thread only, like every ZeroMQ socket."""

    def __init__(self, factory: Callable[[], zmq.Socket[bytes]], bounds: MessageBounds) -> None:
        self._factory = factory
        self.bounds = bounds
        self.socket = factory()
        self._curve = bool(self.socket.get(zmq.CURVE_SERVER))  # ZAP then names each message's sender
        self.routed = self.socket.type == zmq.ROUTER  # REQ senders: [routing id, empty, parts...], to be answered
        self.resets = 0

    def receive(self) -> Received | Refused | None:
        """The next message, a refusal, or None when nothing is waiting. Never blocks on a partial message."""
        try:
            first = self.socket.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        envelope = None
        if self.routed:  # the routing id and the REQ delimiter are the socket's, not the sender's, parts
            envelope = first.bytes
            if not first.more:
                return Refused(RejectReason.BAD_PART_COUNT, "an empty message", reset=False)
            delimiter = self.socket.recv(copy=False)
            if len(delimiter) or not delimiter.more:  # not a REQ socket's request: nothing there expects an answer
                if delimiter.more:
                    return self._discard(RejectReason.BAD_PART_COUNT, "not a REQ request", None)
                return Refused(RejectReason.BAD_PART_COUNT, "not a REQ request", reset=False)
            first = self.socket.recv(copy=False)
        parts, size, part = [first], len(first), first
        while part.more:  # the remaining parts are already here: ZeroMQ delivers whole messages
            if len(parts) == self.bounds.max_parts:
                return self._discard(RejectReason.BAD_PART_COUNT, f"more than {self.bounds.max_parts} parts", envelope)
            part = self.socket.recv(copy=False)
            parts.append(part)
            size += len(part)
            if size > self.bounds.max_bytes:
                detail = f"over {self.bounds.max_bytes} bytes in {len(parts)} or more parts"
                parts.clear()  # let go of what was read before dropping the rest
                if not part.more:
                    return Refused(RejectReason.MESSAGE_TOO_LARGE, detail, reset=False, envelope=envelope)
                return self._discard(RejectReason.MESSAGE_TOO_LARGE, detail, envelope)
        return Received(parts, frame_user_id(first) if self._curve else None, envelope)

    def _discard(self, reason: RejectReason, detail: str, envelope: bytes | None) -> Refused:
        """Read and drop the rest of the current message for up to DISCARD_BUDGET_S, then reopen the socket."""
        deadline = time.perf_counter() + DISCARD_BUDGET_S
        dropped = 0
        while True:
            part = self.socket.recv(copy=False)
            dropped += 1
            if not part.more:
                return Refused(reason, f"{detail}; {dropped} more parts dropped", reset=False, envelope=envelope)
            if dropped % 256 == 0 and time.perf_counter() > deadline:
                self.reset()  # the sender's connection goes with the socket: it cannot be answered
                return Refused(reason, f"{detail}; too long to read, dropped by reopening the socket", reset=True)

    def answer(self, envelope: bytes, reply: bytes) -> None:
        """Answer a REQ sender (ROUTER only); a sender that has gone away, or a full pipe, loses its answer."""
        try:
            self.socket.send_multipart([envelope, b"", reply], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def reset(self) -> None:
        """Close the socket (libzmq frees whatever it holds in its own thread) and open it again."""
        self.socket.close(linger=0)
        deadline = time.monotonic() + REBIND_TIMEOUT_S
        while True:
            try:
                self.socket = self._factory()
                break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
        self.resets += 1
        _give_back_freed_memory()

    def close(self, linger_ms: int = 0) -> None:
        self.socket.close(linger=linger_ms)


def frame_user_id(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id of a received message part (with CURVE, the sender's public key in Z85), or None."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:  # no ZAP identity on this message
        return None
    return value if isinstance(value, str) and value else None


def _give_back_freed_memory() -> None:
    """Return freed heap pages to the system after a large message was dropped (glibc only; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
_OPENED = zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED
_WATCHED = _OPENED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | _FAILED
_PROTOCOL_REASONS = {
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: RejectReason.BAD_KEY,
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: RejectReason.WRONG_MECHANISM,
}


class PeerEvents:
    """Counts connections a socket refused during the ZMTP handshake, from its ZeroMQ monitor.

    libzmq reports a wrong server key or a mismatched key pair (`bad_key`), a client without CURVE or with PLAIN
    (`wrong_mechanism`) and bytes that are not ZMTP (`handshake_failed`, no detail) as handshake failures; an
    allow-list refusal is counted by the authenticator as `unauthorized`, so it is not counted again here. An
    incompatible socket type (a PUB connecting to the PULL ingest) produces no failure event: the connection just
    closes. Such a connection, closed before its handshake ended, is counted as `incomplete_handshake`.

    Handshake results carry no connection id, so they are matched to open connections oldest first. When handshakes
    finish out of order that guess can be wrong, so a connection that closes without a result is counted only after
    `settle_s` (by then every handshake that could still report has ended), and a result that finds no open
    connection cancels one such pending count. The total is right; it may lag by `settle_s`.
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        socket: zmq.Socket[bytes],
        on_refused: Callable[[RejectReason, str], None],
        settle_s: float = HANDSHAKE_IVL_MS / 1000,
        on_peer: Callable[[bool], None] | None = None,
    ) -> None:
        self._on_refused = on_refused
        self._on_peer = on_peer  # (True: a peer connected, False: one left), for the audit log
        self._settle_ns = int(settle_s * 1e9)
        address = f"inproc://edgert-monitor-{next(_MONITOR_IDS)}"
        socket.monitor(address, _WATCHED)
        self.pipe = context.socket(zmq.PAIR)
        self.pipe.setsockopt(zmq.LINGER, 0)
        self.pipe.connect(address)
        self._socket = socket
        self._handshaking: OrderedDict[int, None] = OrderedDict()  # open connections (fds) without a result yet
        self._closed_early: deque[int] = deque()  # when each connection closed without a result (monotonic ns)

    def drain(self) -> None:
        """Handle every event waiting, then count the incomplete handshakes that have settled; cheap when idle."""
        while True:
            try:
                event = recv_monitor_message(self.pipe, zmq.NOBLOCK)
            except zmq.Again:
                break
            except (zmq.ZMQError, ValueError):  # a monitor message we cannot parse: never stop the caller
                continue
            self._handle(event)
        horizon = time.monotonic_ns() - self._settle_ns
        while self._closed_early and self._closed_early[0] <= horizon:
            self._closed_early.popleft()
            self._on_refused(RejectReason.INCOMPLETE_HANDSHAKE, "closed before the handshake completed")

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind, value = event["event"], event["value"]
        if kind & _OPENED:
            self._handshaking[value] = None
            if self._on_peer is not None:
                self._on_peer(True)
        elif kind & (_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED):
            if self._handshaking:
                self._handshaking.popitem(last=False)
            elif self._closed_early:  # this result belonged to a connection already taken as incomplete
                self._closed_early.pop()
            if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self._on_refused(_PROTOCOL_REASONS.get(value, RejectReason.HANDSHAKE_FAILED), _protocol_error(value))
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self._on_refused(RejectReason.HANDSHAKE_FAILED, "no detail from ZeroMQ")
        elif kind == zmq.EVENT_DISCONNECTED:
            if self._on_peer is not None:
                self._on_peer(False)
            if value in self._handshaking:
                del self._handshaking[value]
                self._closed_early.append(time.monotonic_ns())

    def close(self) -> None:
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self.pipe.close(linger=0)


def _protocol_error(code: int) -> str:
    try:
        name = zmq.Event(code).name  # pyzmq lists the protocol error codes among its event constants
    except ValueError:
        name = None
    return name or f"protocol error {code:#x}"
