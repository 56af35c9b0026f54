"""`edgert record`: subscribe to the daemon's results and previews and, on a trigger, record the current frame and
its result as DICOM, spooled and sent to a PACS.

Triggers: a request on the recorder's own trigger socket (`edgert capture`, or any REQ client sending "capture"),
and a timer (`every_s`). A capture is refused, with the reason in the reply and the log, when the daemon is not
live or the newest result is older than `max_age_ms`: a record, like an overlay, is never of a stale result. It is
refused too when the spool is at its budget (the PACS down for long): captures already spooled are never dropped.

The trigger socket is a ROUTER read one part at a time, so no bytes a peer sends can put it in a state where it
cannot answer (a REP socket that received a two-part request cannot): a REQ request of one part is answered, a
request of more parts is answered with an error, anything else is dropped, and every such message is counted.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from PIL import Image

from edge_runtime.core.errors import escaped, should_log
from edge_runtime.core.protocol import Preview, Result, ResultStatus
from edge_runtime.integrations.record.objects import RecordError, Series, SourceStudy, build_objects
from edge_runtime.integrations.record.pacs import PacsSender, PacsTarget, Spool, SpoolBudget
from edge_runtime.integrations.view.feed import Feed
from edge_runtime.sdk.liveness import Link, age_ms
from edge_runtime.sdk.security import ClientKeys

log = logging.getLogger("edgert.record")

DEFAULT_TRIGGER = "tcp://127.0.0.1:5559"
TRIGGER_COMMAND = "capture"
MAX_REQUEST_BYTES = 4096  # one part of a trigger request; ZeroMQ drops the connection of a bigger one
MAX_REQUEST_PARTS = 1024  # parts read and dropped from one message before the socket is reopened instead
HANDSHAKE_IVL_MS = 5000  # a connection that has not completed the ZMTP handshake by then is closed


@dataclass(frozen=True)
class RecordOptions:
    results: str = "tcp://127.0.0.1:5556"
    spool: Path = Path("edgert-records")
    preview: str | None = None  # default: the endpoint the daemon's heartbeats announce
    pacs: PacsTarget | None = None  # None: records stay in the spool folder
    trigger: str | None = DEFAULT_TRIGGER  # REP endpoint for capture requests; None: none
    every_s: float | None = None  # also capture on a timer
    stream_id: int | None = None  # default: the first stream that sends
    max_age_ms: float = 1000.0  # the newest result must be younger than this to be recorded
    source: SourceStudy | None = None  # the DICOM the frames came from: its study, patient and instance
    retry_s: float = 1.0  # first wait before sending to a PACS that was down (doubles, up to 30 s)
    spool_budget: SpoolBudget = SpoolBudget()  # captures are refused (counted) once the spool holds this much
    keys: ClientKeys | None = None  # CURVE for the daemon's results and preview sockets

    def __post_init__(self) -> None:
        if self.every_s is not None and self.every_s <= 0:
            raise RecordError("every_s must be positive")
        if self.max_age_ms <= 0:
            raise RecordError("max_age_ms must be positive")


@dataclass
class Captured:
    """One capture: the files spooled, by SOP instance UID."""

    seq: int
    stream_id: int
    instances: dict[str, str] = field(default_factory=dict)  # SOP instance UID -> what it is


class Recorder:
    def __init__(self, options: RecordOptions) -> None:
        self.options = options
        self.spool = Spool(options.spool, options.spool_budget)
        self.series = Series.new(options.source)
        self.captures = 0
        self.refused = 0
        self.spool_full = 0  # of `refused`: captures refused because the spool was at its budget
        self.bad_requests = 0  # trigger messages that were not a one-part REQ request
        self._latest: tuple[Result, Preview] | None = None
        self._lock = threading.Lock()
        self.feed = Feed(options.results, None, on_pair=self._on_pair, preview=options.preview, logger=log,
                         stream_id=options.stream_id, max_age_ms=None, keys=options.keys)  # fmt: skip
        self.sender = PacsSender(options.pacs, self.spool, options.retry_s) if options.pacs else None

    def _on_pair(self, result: Result, preview: Preview) -> None:
        if result.status is ResultStatus.OK:
            with self._lock:
                self._latest = (result, preview)

    def start(self) -> None:
        self.feed.start()
        if self.sender is not None:
            self.sender.start()

    def stop(self) -> None:
        self.feed.stop()
        if self.sender is not None:
            self.sender.stop()

    def capture(self) -> Captured:
        """Record the newest result with its frame now; RecordError says why not."""
        status = self.feed.status()
        if status.link is not Link.ONLINE:
            raise RecordError(f"nothing to record: the AI is {status.link.value} ({status.reason})")
        with self._lock:
            latest = self._latest
        if latest is None:
            raise RecordError("nothing to record yet: no result with its frame has arrived (is --preview on?)")
        result, preview = latest
        age = age_ms(result.capture_ts_ns, time.time_ns())
        if age > self.options.max_age_ms:  # the SDK's freshness rule (edge_runtime.sdk.liveness)
            raise RecordError(f"the newest result is {age:.0f} ms old (limit {self.options.max_age_ms:.0f} ms)")
        image: Image.Image = Image.open(io.BytesIO(bytes(preview.data))).convert("RGB")
        if image.size != (preview.frame_width, preview.frame_height):  # the result's geometry is the frame's
            image = image.resize((preview.frame_width, preview.frame_height), Image.Resampling.BILINEAR)
        objects = build_objects(np.asarray(image), result, self.series, self.captures + 1, self.options.source)
        encoded = [self.spool.encode(ds) for ds in objects]
        full = self.spool.room_for(len(encoded), sum(map(len, encoded)))
        if full is not None:
            self.spool_full += 1
            raise RecordError(
                f"{full}; nothing spooled is dropped, so this capture is refused until the PACS drains it"
            )
        self.captures += 1
        captured = Captured(result.seq, result.stream_id)
        for ds, data in zip(objects, encoded):
            self.spool.put_encoded(str(ds.SOPInstanceUID), data)
            captured.instances[str(ds.SOPInstanceUID)] = str(ds.get("SeriesDescription", ds.Modality))
        if self.sender is not None:
            self.sender.wake()
        log.info("captured stream %d seq %d: %d objects", result.stream_id, result.seq, len(objects))
        return captured

    def try_capture(self) -> dict[str, Any]:
        """`capture` as a reply: {"ok": true, "instances": ...} or {"ok": false, "error": ...}."""
        try:
            captured = self.capture()
        except RecordError as exc:
            self.refused += 1
            log.warning("capture refused: %s", escaped(exc))
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # building or spooling failed (a full disk...): answer, and keep recording
            self.refused += 1
            log.error("capture failed: %s", exc.__class__.__name__)
            return {"ok": False, "error": f"capture failed: {exc.__class__.__name__}"}
        return {"ok": True, "stream": captured.stream_id, "seq": captured.seq, "instances": captured.instances}

    def run(self, stop: threading.Event, max_captures: int | None = None) -> None:
        """Serve triggers until `stop` is set (or `max_captures` were made)."""
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        trigger = _Trigger(ctx, self.options.trigger) if self.options.trigger is not None else None
        try:
            next_timer = time.monotonic() + self.options.every_s if self.options.every_s else None
            while not stop.is_set() and (max_captures is None or self.captures < max_captures):
                if trigger is not None:
                    self._serve_trigger(trigger)
                else:
                    stop.wait(0.05)
                if next_timer is not None and time.monotonic() >= next_timer:
                    self.try_capture()
                    next_timer += self.options.every_s or 0.0
        finally:
            ctx.destroy(linger=0)

    def _serve_trigger(self, trigger: _Trigger) -> None:
        """Answer what waits on the trigger socket (for up to 50 ms); no message ends the recorder."""
        try:
            request = trigger.receive(50)
        except zmq.ZMQError as exc:  # the socket itself failed: open it again, keep recording
            self._bad_request(f"trigger socket: {exc}")
            trigger.reopen()
            return
        if request is None:
            return
        envelope, body, problem = request
        if problem is not None:
            self._bad_request(problem)
            if envelope is None:  # nothing there waits for an answer (not a REQ request)
                return
            reply: dict[str, Any] = {"ok": False, "error": f"{problem}; send one part, {TRIGGER_COMMAND!r}"}
        elif body.strip() == TRIGGER_COMMAND.encode():
            reply = self.try_capture()
        else:
            self._bad_request("unknown request")
            reply = {"ok": False, "error": f"unknown request; send {TRIGGER_COMMAND!r}"}
        if envelope is not None:
            trigger.answer(envelope, json.dumps(reply).encode())

    def _bad_request(self, why: str) -> None:
        self.bad_requests += 1
        n = self.bad_requests
        if should_log(n):  # 1st, 2nd, 4th...: bounded under a flood
            log.warning("trigger: %s (%d bad requests so far)", escaped(why), n)


class _Trigger:
    """The trigger socket: a ROUTER that answers REQ clients by routing id, read one part at a time."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self._ctx, self._endpoint = ctx, endpoint
        self.socket = self._open()

    def _open(self) -> zmq.Socket[bytes]:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        deadline = time.monotonic() + 2.0  # a socket just closed may hold the port for a moment
        while True:
            try:
                sock.bind(self._endpoint)
                return sock
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    sock.close(linger=0)
                    raise RecordError(f"cannot bind the trigger socket to {self._endpoint}: {exc}") from None
                time.sleep(0.01)

    def reopen(self) -> None:
        self.socket.close(linger=0)
        self.socket = self._open()

    def receive(self, timeout_ms: int) -> tuple[bytes | None, bytes, str | None] | None:
        """(routing id if the sender waits for an answer, the request, what is wrong with it) or None."""
        if not self.socket.poll(timeout_ms):
            return None
        envelope = self.socket.recv()
        parts: list[bytes] = []
        more = bool(self.socket.get(zmq.RCVMORE))
        while more:
            if len(parts) == MAX_REQUEST_PARTS:  # drop the rest in C: the sender's connection goes with it
                self.reopen()
                return None, b"", f"more than {MAX_REQUEST_PARTS} parts"
            parts.append(self.socket.recv())
            more = bool(self.socket.get(zmq.RCVMORE))
        if not parts or parts[0] != b"":  # not a REQ request: nobody waits for an answer
            return None, b"", "not a REQ request"
        if len(parts) != 2:
            return envelope, b"", f"{len(parts) - 1} request parts, expected 1"
        return envelope, parts[1], None

    def answer(self, envelope: bytes, reply: bytes) -> None:
        try:
            self.socket.send_multipart([envelope, b"", reply], zmq.NOBLOCK)
        except zmq.ZMQError:  # the client has gone: its answer with it
            pass


def request_capture(endpoint: str = DEFAULT_TRIGGER, timeout_s: float = 10.0) -> dict[str, Any]:
    """Ask a running `edgert record` to capture now; its reply."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(endpoint)
        req.send(TRIGGER_COMMAND.encode())
        if not req.poll(int(timeout_s * 1000)):
            raise RecordError(f"no answer from a recorder at {endpoint} within {timeout_s:.0f} s")
        reply: dict[str, Any] = json.loads(req.recv())
        return reply
    finally:
        ctx.destroy(linger=0)
