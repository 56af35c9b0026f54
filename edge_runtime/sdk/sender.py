"""Scanner side of the SDK: send frames to the daemon without ever blocking the acquisition loop."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import zmq

from edge_runtime.core.errors import EndpointError
from edge_runtime.core.protocol import PixelFormat, encode_frame
from edge_runtime.sdk.security import ClientKeys, HandshakeWatch

RECONNECT_IVL_MS = 10


class SenderPattern(str, enum.Enum):
    PUSH = "push"  # to a daemon's PULL: drops are counted here
    PUB = "pub"  # to any number of SUB daemons: ZeroMQ drops silently at the high-water mark


@dataclass
class SenderStats:
    sent: int = 0
    dropped: int = 0  # not queued because the daemon was absent or behind


class FrameSender:
    """Sends frames as protocol v1 messages.

    `send` never blocks: when the daemon is absent or its queue is full the frame is dropped and counted, as a
    scanner must keep acquiring. The pixel buffer is sent without a copy: do not write into an array after
    passing it to `send` (pass a fresh array per frame, as acquisition loops normally do).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        stream_id: int = 0,
        pattern: SenderPattern = SenderPattern.PUSH,
        bind: bool = False,
        high_water_mark: int = 2,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        keys: ClientKeys | None = None,
    ) -> None:
        """`keys`: CURVE keys when the daemon requires them (see `edgert keys generate`)."""
        self.stream_id = stream_id
        self.stats = SenderStats()
        self._next_seq = 0
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH if pattern is SenderPattern.PUSH else zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, high_water_mark)
        # Reconnect quickly after the daemon drops the connection (a restart, or its ingest socket re-opened to
        # shed a hostile message), backing off to once a second while it stays away.
        self._sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if pattern is SenderPattern.PUSH:
            self._sock.setsockopt(zmq.IMMEDIATE, 1)
        if keys is not None:
            keys.apply(self._sock)  # no queueing towards a daemon that is not connected
        self._watch = HandshakeWatch(self._sock, keys) if not bind else None
        try:
            self._sock.bind(endpoint) if bind else self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            if self._watch is not None:
                self._watch.close()
            self._sock.close()
            raise EndpointError(f"cannot {'bind' if bind else 'connect'} frame sender to {endpoint}: {exc}") from None
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else endpoint

    def send(
        self,
        array: np.ndarray,
        seq: int | None = None,
        capture_ts: int | None = None,
        spacing: tuple[float, float] | None = None,
        meta: Mapping[str, Any] | None = None,
        pixel_format: PixelFormat | None = None,
    ) -> bool:
        """Queue one frame; returns False (and counts a drop) if it could not be queued right now.

        `seq` defaults to a counter, `capture_ts` (ns since the Unix epoch) to now, `spacing` is (x, y) in mm.
        """
        if seq is None:
            seq = self._next_seq
        self._next_seq = seq + 1
        now = time.time_ns()
        parts = encode_frame(
            array,
            stream_id=self.stream_id,
            seq=seq,
            capture_ts_ns=capture_ts if capture_ts is not None else now,
            send_ts_ns=now,
            pixel_format=pixel_format,
            spacing_mm=spacing,
            meta=meta,
        )
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.stats.dropped += 1
            return False
        self.stats.sent += 1
        return True

    def refusal(self) -> str | None:
        """Why the daemon refused this sender's connection (a CURVE key missing or not authorized), if it did: frames
        then drop as if the daemon were absent, and this tells the two apart."""
        return self._watch.refusal() if self._watch is not None else None

    def close(self, flush_ms: int = 0) -> None:
        """Close the socket. By default frames still queued are discarded (a scanner must never hang on close);
        `flush_ms` gives them that long to leave, for the end of a finite stream such as a replay."""
        if self._watch is not None:
            self._watch.refusal()  # what it saw stays readable after close
            self._watch.close()
        self._sock.close(linger=flush_ms)

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
