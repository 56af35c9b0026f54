"""The ZeroMQ side of `edgert view`: results and previews in, paired display frames and the daemon's liveness out.

No asyncio and no web code here: `Pairer` is pure, liveness and freshness follow the SDK's one rule
(`edge_runtime.sdk.liveness`), `display_frame` builds what the page draws, and `Feed` is the one thread that owns the
ZeroMQ sockets.

A result is shown only with the preview of the same stream, seq and capture time, whose frame has the result's
geometry; anything else is counted and dropped, so an overlay is never drawn on a frame it does not belong to.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
from PIL import Image

from edge_runtime.core.errors import escaped, should_log
from edge_runtime.core.protocol import (
    Limits,
    MessageType,
    Preview,
    ProtocolError,
    Result,
    ResultStatus,
    Task,
    decode_heartbeat,
    decode_preview,
    decode_result,
    message_type,
)
from edge_runtime.sdk.liveness import DEFAULT_MISSES, MONITOR_EVENTS, LinkStatus, Liveness, is_fresh
from edge_runtime.sdk.security import ClientKeys

log = logging.getLogger("edgert.view")

FRAME_MAGIC = b"EVF1"  # the binary WebSocket message of one display frame: magic, u32 meta length, meta, image, overlay
_FRAME_HEAD = struct.Struct("<4sI")
FOLLOW_SWITCH_S = 2.0  # without --stream, follow another stream once the followed one has been quiet this long
_WILDCARD_HOSTS = ("0.0.0.0", "*", "[::]", "::")


@dataclass
class PairStats:
    paired: int = 0
    unpaired: int = 0  # results or previews whose partner never came (evicted)
    mismatched: int = 0  # a preview whose frame does not fit its result: refused, never drawn


class Pairer:
    """Joins results and previews on (stream, seq, capture time); each side keeps its last `keep` unmatched."""

    def __init__(self, keep: int = 8, logger: logging.Logger = log) -> None:
        self.keep = keep
        self._log = logger
        self.stats = PairStats()
        self._results: OrderedDict[tuple[int, int, int], Result] = OrderedDict()
        self._previews: OrderedDict[tuple[int, int, int], Preview] = OrderedDict()

    def add_result(self, result: Result) -> tuple[Result, Preview] | None:
        key = (result.stream_id, result.seq, result.capture_ts_ns)
        preview = self._previews.pop(key, None)
        if preview is None:
            self._hold(self._results, key, result)
            return None
        return self._pair(result, preview)

    def add_preview(self, preview: Preview) -> tuple[Result, Preview] | None:
        key = (preview.stream_id, preview.seq, preview.capture_ts_ns)
        result = self._results.pop(key, None)
        if result is None:
            self._hold(self._previews, key, preview)
            return None
        return self._pair(result, preview)

    def _hold(self, table: OrderedDict[tuple[int, int, int], Any], key: tuple[int, int, int], item: Any) -> None:
        table[key] = item
        while len(table) > self.keep:
            table.popitem(last=False)
            self.stats.unpaired += 1

    def _pair(self, result: Result, preview: Preview) -> tuple[Result, Preview] | None:
        problem = geometry_problem(result, preview.frame_width, preview.frame_height)
        if problem is not None:
            self.stats.mismatched += 1
            self._log.warning(
                "result and preview of stream %d frame %d do not fit: %s", result.stream_id, result.seq, problem
            )
            return None
        self.stats.paired += 1
        return result, preview


def geometry_problem(result: Result, width: int, height: int) -> str | None:
    """Why `result` cannot be drawn on a `width` x `height` frame, or None."""
    covers = result.mask_covers
    if covers is not None and covers != (height, width):
        return f"mask for a {covers[1]}x{covers[0]} frame on a {width}x{height} frame"
    for b in result.boxes:
        if b.x2 > width + 0.5 or b.y2 > height + 0.5:
            return f"box ({b.x1:g}, {b.y1:g}, {b.x2:g}, {b.y2:g}) beyond a {width}x{height} frame"
    for polys in result.contours.values():
        for poly in polys:
            if any(not (0 <= x <= width and 0 <= y <= height) for x, y in poly):
                return f"a contour beyond a {width}x{height} frame"
    return None


@dataclass(frozen=True)
class DisplayFrame:
    """One frame for the page: what to draw (`meta`), the preview image and the mask as a palette PNG."""

    stream_id: int
    seq: int
    capture_ts_ns: int
    meta: dict[str, Any]
    image: bytes
    overlay: bytes = b""

    def message(self, now_ns: int) -> bytes:
        """The binary WebSocket message, with the frame's age at sending (so the page needs no clock of ours)."""
        meta = {
            **self.meta,
            "age_ms": round((now_ns - self.capture_ts_ns) / 1e6, 3),
            "image_bytes": len(self.image),
            "overlay_bytes": len(self.overlay),
        }
        body = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
        return b"".join((_FRAME_HEAD.pack(FRAME_MAGIC, len(body)), body, self.image, self.overlay))


def mask_png(mask: np.ndarray, colors: tuple[tuple[int, int, int], ...]) -> bytes:
    """A class-id mask as a palette PNG in the class colors, class 0 (background) transparent."""
    image = Image.fromarray(np.ascontiguousarray(mask, np.uint8), mode="P")
    palette = [channel for color in colors[:256] for channel in color]
    image.putpalette(palette + [0] * (768 - len(palette)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3, transparency=bytes([0] + [255] * 255))
    return buffer.getvalue()


def display_frame(result: Result, preview: Preview, received_ns: int) -> DisplayFrame:
    """What the page needs to draw `result` on `preview`'s image, both already checked to belong together."""
    labels, colors = result.labels, result.colors
    index = {name: i for i, name in enumerate(labels)}
    ok = result.status is ResultStatus.OK
    meta: dict[str, Any] = {
        "stream": result.stream_id,
        "seq": result.seq,
        "capture_ms": result.capture_ts_ns / 1e6,
        "width": preview.frame_width,
        "height": preview.frame_height,
        "task": result.task.label,
        "status": "ok" if ok else "error",
        "error": result.error,
        "model": {"name": result.model.name, "version": result.model.version, "sha256": result.model.sha256[:12]},
        "labels": list(labels),
        "colors": [list(c) for c in colors],
        "timing_ms": {
            "inference": round((result.infer_end_ns - result.infer_start_ns) / 1e6, 3),
            "daemon": round((result.publish_ts_ns - result.recv_ts_ns) / 1e6, 3),
            "to_view": round((received_ns - result.capture_ts_ns) / 1e6, 3),
        },
    }
    overlay = b""
    if ok and result.task is Task.SEGMENTATION:
        meta["contours"] = [
            {"class": index[name], "points": [v for p in poly for v in p]}
            for name, polys in result.contours.items()
            if name in index
            for poly in polys
        ]
        meta["areas_mm2"] = dict(result.areas_mm2) if result.areas_mm2 is not None else None
        meta["areas_px"] = dict(result.areas_px)
        mask = result.frame_mask()  # the page draws the mask at the frame's size, scaled with the image
        if mask is not None:
            overlay = mask_png(mask, colors)
    if ok and result.task is Task.DETECTION:
        meta["boxes"] = [[b.x1, b.y1, b.x2, b.y2, b.class_id, b.score, b.track_id] for b in result.boxes]
    if ok and result.task is Task.CLASSIFICATION:
        meta["classes"] = [[c.class_id, c.score] for c in result.classes]
        if result.saliency is not None:
            s = result.saliency
            meta["saliency"] = {"class": s.class_id, "width": s.width, "height": s.height,
                                "values": s.values.reshape(-1).tolist()}  # fmt: skip
    return DisplayFrame(result.stream_id, result.seq, result.capture_ts_ns, meta, bytes(preview.data), overlay)


def preview_endpoint(announced: str, results_endpoint: str) -> str:
    """The endpoint to reach an announced preview socket: a wildcard host means the results endpoint's host."""
    if not announced.startswith("tcp://"):
        return announced
    host, _, port = announced[len("tcp://") :].rpartition(":")
    if host not in _WILDCARD_HOSTS:
        return announced
    results_host = results_endpoint[len("tcp://") :].rpartition(":")[0] if results_endpoint.startswith("tcp://") else ""
    return f"tcp://{results_host or '127.0.0.1'}:{port}"


@dataclass
class FeedStats:
    results: int = 0
    previews: int = 0
    heartbeats: int = 0
    rejected: int = 0  # undecodable messages
    stale: int = 0  # results older than max_age_ms when they arrived: never shown
    other_streams: int = 0  # results of streams not followed
    frames: int = 0  # display frames handed on
    pairs: PairStats = field(default_factory=PairStats)


class Feed:
    """The thread that subscribes to the daemon's results and previews and hands on paired display frames.

    `on_frame` is called from this thread with each new `DisplayFrame`, and `on_pair` (for other consumers, such
    as `edgert record`) with each checked (result, preview) pair; `status()` may be called from any thread.
    """

    def __init__(
        self,
        results: str,
        on_frame: Callable[[DisplayFrame], None] | None,
        *,
        on_pair: Callable[[Result, Preview], None] | None = None,
        preview: str | None = None,
        stream_id: int | None = None,
        max_age_ms: float | None = 500.0,
        misses: float = DEFAULT_MISSES,
        limits: Limits = Limits(),
        keys: ClientKeys | None = None,
        logger: logging.Logger = log,
    ) -> None:
        """`logger`: the consumer's own (`edgert.record`, `edgert.igtl`), so its log lines name the command."""
        self.results_endpoint = results
        self._log = logger
        self.keys = keys  # CURVE for the results and preview sockets (the daemon's `[security]`)
        self.fixed_preview = preview  # given by the user: used as is, whatever heartbeats announce
        self.stream_id = stream_id
        self.max_age_ms = max_age_ms
        self.limits = limits
        self.stats = FeedStats()
        self._on_frame = on_frame
        self._on_pair = on_pair
        self._to_view_ms: deque[float] = deque(maxlen=20_000)  # capture to paired here, per display frame
        self._liveness = Liveness(misses)
        self._pairer = Pairer(logger=logger)
        self.stats.pairs = self._pairer.stats
        self._lock = threading.Lock()
        self._preview_in_use: str | None = None
        self._followed: int | None = stream_id
        self._followed_at = 0.0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgert-view-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5.0)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5.0)

    def status(self) -> LinkStatus:
        with self._lock:
            return self._liveness.status(time.monotonic(), self._preview_in_use)

    def to_view_ms(self) -> list[float]:
        """Capture to paired here, in ms, for each display frame handed on (the last 20000)."""
        with self._lock:
            return list(self._to_view_ms)

    # -- the thread ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            results = self._subscribe(ctx, self.results_endpoint)
            monitor = results.get_monitor_socket(MONITOR_EVENTS)
        except (zmq.ZMQError, ValueError) as exc:
            self._error = ValueError(f"cannot subscribe to results at {self.results_endpoint}: {exc}")
            self._ready.set()
            ctx.destroy(linger=0)
            return
        self._ready.set()
        preview: zmq.Socket[bytes] | None = None
        poller = zmq.Poller()
        poller.register(results, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                wanted = self.fixed_preview or self._announced_preview()
                if wanted != self._preview_in_use:
                    if preview is not None:
                        poller.unregister(preview)
                        preview.close(linger=0)
                        preview = None
                    if wanted is not None:
                        preview = self._subscribe(ctx, wanted)
                        poller.register(preview, zmq.POLLIN)
                        self._log.info("preview stream %s", escaped(wanted))
                    with self._lock:
                        self._preview_in_use = wanted
                events = dict(poller.poll(50))
                if monitor in events:
                    parts = monitor.recv_multipart()
                    with self._lock:
                        was = self._liveness.disconnected
                        self._liveness.on_monitor(parts)
                        if self._liveness.disconnected and not was:
                            self._log.warning("connection to the daemon's results socket dropped")
                if results in events:
                    self._drain(results, self._on_results)
                if preview is not None and preview in events:
                    self._drain(preview, self._on_preview)
        finally:
            results.disable_monitor()
            ctx.destroy(linger=0)

    def _subscribe(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 8)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)  # back quickly when the daemon restarts
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        if self.keys is not None:
            self.keys.apply(sock)
        sock.connect(endpoint)
        return sock

    def _announced_preview(self) -> str | None:
        hb = self._liveness.heartbeat
        announced = hb.info.get("preview") if hb is not None else None
        if isinstance(announced, str) and announced.startswith(("tcp://", "ipc://")):
            return preview_endpoint(announced, self.results_endpoint)
        return self._preview_in_use  # keep the last one across a restart until a heartbeat says otherwise

    @staticmethod
    def _drain(sock: zmq.Socket[bytes], handle: Callable[[list[bytes]], None]) -> None:
        for _ in range(64):  # bounded, so that the other socket is polled too
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            handle(parts)

    def _on_results(self, parts: list[bytes]) -> None:
        kind = message_type(parts)
        try:
            if kind is MessageType.HEARTBEAT:
                hb = decode_heartbeat(parts)
                self.stats.heartbeats += 1
                with self._lock:
                    self._liveness.on_heartbeat(hb, time.monotonic())
                return
            result = decode_result(parts, self.limits)
        except ProtocolError as exc:
            self._rejected(exc)
            return
        self.stats.results += 1
        with self._lock:
            self._liveness.on_result(time.monotonic())
        if not self._follows(result.stream_id):
            self.stats.other_streams += 1
            return
        if not is_fresh(result.capture_ts_ns, time.time_ns(), self.max_age_ms):
            self.stats.stale += 1
            return
        self._emit(self._pairer.add_result(result))

    def _on_preview(self, parts: list[bytes]) -> None:
        try:
            preview = decode_preview(parts, self.limits)
        except ProtocolError as exc:
            self._rejected(exc)
            return
        self.stats.previews += 1
        if self._follows(preview.stream_id):
            self._emit(self._pairer.add_preview(preview))

    def _follows(self, stream_id: int) -> bool:
        now = time.monotonic()
        if self.stream_id is None and (self._followed is None or now - self._followed_at > FOLLOW_SWITCH_S):
            if self._followed != stream_id:
                self._log.info("showing stream %d", stream_id)
            self._followed = stream_id
        if stream_id == self._followed:
            self._followed_at = now
            return True
        return False

    def _emit(self, pair: tuple[Result, Preview] | None) -> None:
        if pair is None:
            return
        if self._on_pair is not None:
            self._on_pair(*pair)
        if self._on_frame is None:
            return
        now = time.time_ns()
        frame = display_frame(*pair, received_ns=now)
        self.stats.frames += 1
        with self._lock:
            self._to_view_ms.append((now - frame.capture_ts_ns) / 1e6)
        self._on_frame(frame)

    def _rejected(self, exc: ProtocolError) -> None:
        self.stats.rejected += 1
        n = self.stats.rejected
        if should_log(n):
            self._log.warning("ignored an undecodable message (%d so far): %s", n, escaped(exc))
