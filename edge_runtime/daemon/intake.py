"""Frames from the ingest socket into the stream table, decoded and checked; the one place a refusal is counted.

Our own frames are decoded on the receive thread (`decode_frame`: headers and sizes, pixels viewed in place).
imagezmq messages are checked there too, but a JPEG (or float32 pixels to check) goes through `decoding.py` to the
decode threads, so the thread that answers REQ senders never decodes. Every refusal goes through `rejected`:
counted by reason, logged at its 1st, 2nd, 4th... occurrence with the outside text escaped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from edge_runtime.core.errors import escaped, should_log
from edge_runtime.core.protocol import Buffer, Frame, ProtocolError, RejectReason, decode_frame
from edge_runtime.daemon.config import DaemonConfig, IngestFormat
from edge_runtime.daemon.decoding import DecodeQueue
from edge_runtime.daemon.imagezmq import ImagezmqDecoder, Parsed, StreamNames
from edge_runtime.daemon.ingest import Received
from edge_runtime.daemon.slots import Admission, StreamTable
from edge_runtime.daemon.stats import DaemonStats

log = logging.getLogger("edgert.daemon")

DECODE_NICE = 10  # decode threads yield the CPU to the receive and inference threads
POLL_S = 0.05  # how long a decode thread waits for work before it looks at the stop event again


class Intake:
    """Decodes, checks and admits frames; the receive thread calls `admit`, each decode thread runs `decode_loop`."""

    def __init__(self, config: DaemonConfig, stats: DaemonStats, slots: StreamTable) -> None:
        self.config = config
        self.stats = stats
        self.slots = slots
        self.imagezmq: ImagezmqDecoder | None = None
        self.decoding: DecodeQueue[tuple[Parsed, str | None]] | None = None  # JPEGs waiting for a decode thread
        if config.ingest.format is IngestFormat.IMAGEZMQ:
            names = StreamNames(config.ingest.streams, config.ingest.auto_streams, idle_ms=config.streams.idle_ms)
            self.imagezmq = ImagezmqDecoder(names, config.limits)
            largest = config.limits.max_width * config.limits.max_height * 3
            self.decoding = DecodeQueue(
                config.decode, largest, config.streams.max_streams, on_drop=lambda job: names.release(job[0].name)
            )

    @property
    def decode_threads(self) -> int:
        return self.config.decode.threads if self.decoding is not None else 0

    def status(self) -> dict[str, object]:
        """What `status` shows of the intake: the imagezmq name table and the decode queue, where there are."""
        if self.imagezmq is None or self.decoding is None:
            return {}
        return {
            "imagezmq_streams": self.imagezmq.names.snapshot(),
            "decode": {"waiting_bytes": self.decoding.waiting_bytes, "replaced": self.decoding.replaced},
        }

    def close(self) -> int:
        """Drop what waits for a decode thread (and wake them); returns how many frames were dropped."""
        return self.decoding.close() if self.decoding is not None else 0

    def admit(self, message: Received) -> RejectReason | None:
        """Decode one message and offer it to the stream table (a compressed one: to the decode threads); a refusal
        is counted and returned. Holds no reference after, but for a frame handed to the decode threads."""
        recv_ts = time.time_ns()
        buffers = [p.buffer for p in message.parts]
        if self.imagezmq is not None:
            return self._admit_imagezmq(buffers, recv_ts, message.user_id)
        try:
            frame = decode_frame(buffers, self.config.limits)
        except ProtocolError as exc:
            self.rejected(exc.reason, exc.detail)
            return exc.reason
        except Exception as exc:  # a decoder bug must not end the receive loop
            self.rejected(RejectReason.DECODER_ERROR, f"{exc.__class__.__name__}: {exc}")
            return RejectReason.DECODER_ERROR
        return self._offer(frame, recv_ts, message.user_id)

    def _admit_imagezmq(self, buffers: Sequence[Buffer], recv_ts: int, owner: str | None) -> RejectReason | None:
        """The receive thread's part of an imagezmq message: every check short of decoding; a JPEG (or float32
        pixels to check) goes to the decode threads, anything else to the stream table at once."""
        decoder, queue = self.imagezmq, self.decoding
        assert decoder is not None and queue is not None
        try:
            parsed = decoder.parse(buffers, recv_ts)
            stream_id = decoder.names.claim(parsed.name)
        except ProtocolError as exc:
            self.rejected(exc.reason, exc.detail)
            return exc.reason
        except Exception as exc:
            self.rejected(RejectReason.DECODER_ERROR, f"{exc.__class__.__name__}: {exc}")
            return RejectReason.DECODER_ERROR
        if parsed.ready:
            return self._offer_parsed(parsed, stream_id, owner)
        early = self.slots.refuses_at_once(stream_id, parsed.decoded_bytes)
        if early is not None:  # never decode what the stream table would refuse anyway
            decoder.names.release(parsed.name)
            return self._refused_admission(early, stream_id)
        compressed = memoryview(parsed.jpeg).nbytes if parsed.jpeg is not None else 0
        refused = queue.offer(stream_id, (parsed, owner), compressed, parsed.decoded_bytes)
        if refused is not None:
            decoder.names.release(parsed.name)
            self.rejected(refused, lambda: f"{parsed.decoded_bytes} decoded bytes on stream {stream_id}")
        return refused

    def decode_loop(self, stop: threading.Event) -> None:
        """A decode thread: JPEGs (and float32 checks) off the receive thread, then into the stream table. It runs
        at a lower priority (nice +DECODE_NICE): on a small board the receive and inference threads come first, so a
        flood of large JPEGs costs the other streams as little CPU as possible."""
        decoder, queue = self.imagezmq, self.decoding
        assert decoder is not None and queue is not None
        with contextlib.suppress(
            OSError, AttributeError
        ):  # Linux: a thread's own nice value; raising it needs no right
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + DECODE_NICE)
        while not stop.is_set():
            taken = queue.take(POLL_S)
            if taken is None:
                continue
            stream_id, (parsed, owner) = taken
            try:
                try:
                    parsed = decoder.finish(parsed)
                except ProtocolError as exc:
                    decoder.names.release(parsed.name)
                    self.rejected(exc.reason, exc.detail)
                    continue
                except Exception as exc:  # a decoder bug must not end the thread
                    decoder.names.release(parsed.name)
                    self.rejected(RejectReason.DECODER_ERROR, f"{exc.__class__.__name__}: {exc}")
                    continue
                self._offer_parsed(parsed, stream_id, owner)
            finally:
                queue.done(stream_id)
            del parsed, taken  # the compressed and decoded buffers are the table's (or nobody's) now

    def _offer_parsed(self, parsed: Parsed, stream_id: int, owner: str | None) -> RejectReason | None:
        names = self.imagezmq.names if self.imagezmq is not None else None
        assert names is not None
        refused = self._offer(parsed.frame(stream_id, names.next_seq(parsed.name)), parsed.recv_ts_ns, owner)
        if refused is None:
            names.admitted(parsed.name)
        else:
            names.release(parsed.name)
        return refused

    def _offer(self, frame: Frame, recv_ts: int, owner: str | None) -> RejectReason | None:
        """Offer a decoded frame to the stream table; a refusal is counted and returned."""
        admission = self.slots.put(frame, recv_ts, owner=owner, admitted_ts_ns=time.time_ns())
        if admission.accepted:
            self.stats.accepted(admission is Admission.REPLACED)
            return None
        return self._refused_admission(admission, frame.stream_id)

    def _refused_admission(self, admission: Admission, stream_id: int) -> RejectReason:
        if admission is Admission.STREAM_OWNER:
            self.rejected(RejectReason.STREAM_OWNER, f"stream {stream_id} belongs to another client key")
            return RejectReason.STREAM_OWNER
        if admission is Admission.UNDECLARED_STREAM:
            self.rejected(RejectReason.UNDECLARED_STREAM, f"stream {stream_id} is not in streams.ids")
            return RejectReason.UNDECLARED_STREAM
        reason = RejectReason(admission.value)
        self.rejected(reason, lambda: self._table_detail(stream_id))
        return reason

    def rejected(self, reason: RejectReason, detail: str | Callable[[], str]) -> None:
        """Count a refusal; log it at the 1st, 2nd, 4th... of its reason (a callable detail is built only then)."""
        n = self.stats.reject(reason)
        if should_log(n):  # bounded logging under a flood, never silent
            text = detail() if callable(detail) else detail
            log.warning("refused (%s, %d so far): %s", reason.value, n, escaped(text))

    def _table_detail(self, stream_id: int) -> str:
        limits = self.config.streams
        return (
            f"stream {stream_id}: {self.slots.live_streams} of {limits.max_streams} live streams, "
            f"{self.slots.pending_bytes} of {limits.max_pending_bytes} bytes waiting"
        )
