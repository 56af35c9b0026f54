"""`edgert igtl`: an OpenIGTLink bridge (pyigtl) between the daemon and 3D Slicer or a PLUS server.

Out, to Slicer: an OpenIGTLink server that Slicer's OpenIGTLinkIF connects to as a client. For each result with its
frame it sends
- `edgert-image`: the frame, an RGB IMAGE;
- `edgert-labels`: a single-component IMAGE with the same size, spacing and position: the segmentation's class ids,
  or for a detector the boxes drawn as outlines with value class id + 1 (so Slicer shows them as a label layer);
- `edgert-result`: a STRING with the result as JSON (task, model and its sha256, boxes, classes, areas);
- `edgert-status`: a STRING with the banner every display shows ("AI live", "AI offline", ...: the one liveness rule
  of liveness.py, through the feed), sent at once when it changes and every second, so that Slicer says the AI is
  offline as soon as the view does, and a Slicer that connects later learns it.
Newest wins: while Slicer has not taken the previous frame's messages, newer frames are skipped and counted, never
queued.

In, from PLUS or Slicer (`source`): an OpenIGTLink client that takes IMAGE messages (2D: one slice, gray uint8 or
uint16, or RGB uint8) and forwards each as a frame to the daemon's ingest, with its pixel spacing (from the
message's matrix) and, in the frame's metadata, the sender's device name and timestamp. The frame's capture time is
when the bridge received it: the sender's clock may differ from the cart's, and capture times drive staleness. The
matrix of each forwarded frame is kept (bounded) so that what goes back to Slicer lands where the image came from.
"""

from __future__ import annotations

import io
import json
import logging
import socketserver
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from calibration.preprocessing import scale_labels
from edge_runtime.core.errors import EdgertError, escaped, should_log
from edge_runtime.core.protocol import PixelFormat, Preview, Result, ResultStatus, Task
from edge_runtime.integrations.view.feed import Feed
from edge_runtime.sdk.security import ClientKeys
from edge_runtime.sdk.sender import FrameSender

log = logging.getLogger("edgert.igtl")

IMAGE_DEVICE = "edgert-image"
LABELS_DEVICE = "edgert-labels"
RESULT_DEVICE = "edgert-result"
STATUS_DEVICE = "edgert-status"
STATUS_EVERY_S = 1.0  # the banner is repeated this often, and checked for a change every STATUS_CHECK_S
STATUS_CHECK_S = 0.1
MAX_BACKLOG = 3  # messages waiting for Slicer beyond which a frame is skipped (one frame is three messages)
KEEP_MATRICES = 64  # forwarded frames whose geometry is remembered
BOX_LINE_PX = 2


class IgtlError(EdgertError, ValueError):
    pass


class SourceImageError(IgtlError):
    """A source image that cannot be forwarded; `reason` is one of a few fixed labels, for the counts."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class IgtlOptions:
    results: str = "tcp://127.0.0.1:5556"
    preview: str | None = None  # default: the endpoint the daemon's heartbeats announce
    port: int = 18944  # where Slicer connects (OpenIGTLinkIF's default port); always on 127.0.0.1
    stream_id: int | None = None  # the stream shown in Slicer (default: the first that sends)
    spacing_mm: tuple[float, float] = (1.0, 1.0)  # for frames whose spacing is not known (not from `source`)
    source: tuple[str, int] | None = None  # (host, port) of a PLUS or Slicer OpenIGTLink server to take images from
    source_device: str | None = None  # take only this device's images (default: every IMAGE)
    ingest: str = "tcp://127.0.0.1:5555"  # the daemon's ingest, for frames from `source`
    source_stream_id: int = 0  # the stream id forwarded frames get
    keys: ClientKeys | None = None  # CURVE towards the daemon: results, preview and forwarded frames

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise IgtlError(f"port {self.port} is not a TCP port")
        if min(self.spacing_mm) <= 0:
            raise IgtlError("spacing_mm must be positive")


@dataclass
class IgtlCounts:
    sent: int = 0  # frames sent to Slicer (three messages each)
    skipped: int = 0  # frames skipped: Slicer had not taken the previous ones, or none was connected
    forwarded: int = 0  # frames from `source` sent to the daemon
    dropped: int = 0  # frames from `source` the sender dropped (the daemon not keeping up or away)
    refused: int = 0  # source messages that are not an image we can forward
    refusals: dict[str, int] = field(default_factory=dict)  # by SourceImageError.reason: not_2d, pixel_type, bad_matrix


def parse_source(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise IgtlError(f"source '{text}': expected HOST:PORT, e.g. 127.0.0.1:18945")
    return host, int(port)


def geometry(spacing_mm: tuple[float, float]) -> np.ndarray:
    """An ijk-to-world matrix for a 2D frame: i along the columns, j along the rows, at the origin."""
    matrix = np.eye(4)
    matrix[0, 0], matrix[1, 1] = spacing_mm
    return matrix


def label_map(result: Result, height: int, width: int) -> np.ndarray | None:
    """The result as a (height, width) label image: the class ids of a segmentation, resampled; a detection's box
    outlines (class id + 1), with the boxes taken in (height, width) pixels; None for classification."""
    if result.task is Task.SEGMENTATION and result.mask is not None:
        return np.ascontiguousarray(scale_labels(result.mask, height, width), dtype=np.uint8)
    if result.task is Task.DETECTION:
        labels = np.zeros((height, width), np.uint8)
        for box in result.boxes:
            x1, y1 = max(0, int(box.x1)), max(0, int(box.y1))
            x2, y2 = min(width - 1, int(round(box.x2))), min(height - 1, int(round(box.y2)))
            if x2 <= x1 or y2 <= y1:
                continue
            value = min(255, box.class_id + 1)
            labels[y1 : y1 + BOX_LINE_PX, x1 : x2 + 1] = value
            labels[max(y1, y2 - BOX_LINE_PX + 1) : y2 + 1, x1 : x2 + 1] = value
            labels[y1 : y2 + 1, x1 : x1 + BOX_LINE_PX] = value
            labels[y1 : y2 + 1, max(x1, x2 - BOX_LINE_PX + 1) : x2 + 1] = value
        return labels
    return None


def result_json(result: Result) -> str:
    body: dict[str, Any] = {
        "stream": result.stream_id,
        "seq": result.seq,
        "task": result.task.label,
        "model": {"name": result.model.name, "version": result.model.version, "sha256": result.model.sha256},
        "labels": list(result.labels),
    }
    if result.task is Task.SEGMENTATION:
        body["areas_px"] = dict(result.areas_px)
        body["areas_mm2"] = dict(result.areas_mm2) if result.areas_mm2 is not None else None
    elif result.task is Task.DETECTION:
        body["boxes"] = [{"box": [b.x1, b.y1, b.x2, b.y2], "class": result.label(b.class_id), "score": b.score}
                         for b in result.boxes]  # fmt: skip
    else:
        body["classes"] = [{"class": result.label(c.class_id), "score": c.score} for c in result.classes]
    return json.dumps(body)


def frame_from_image(message: Any) -> tuple[np.ndarray, PixelFormat, tuple[float, float]]:
    """Pixels, format and (x, y) spacing in mm of a pyigtl ImageMessage; SourceImageError names what is not usable."""
    image = np.asarray(message.image)
    if image.ndim not in (3, 4) or image.shape[0] != 1:
        raise SourceImageError("not_2d", f"image of shape {image.shape}: only one 2D slice (k = 1) is forwarded")
    pixels = image[0]
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    pixels = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("="), copy=False))
    if pixels.ndim == 2 and pixels.dtype == np.uint8:
        fmt = PixelFormat.GRAY8
    elif pixels.ndim == 2 and pixels.dtype == np.uint16:
        fmt = PixelFormat.GRAY16
    elif pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8:
        fmt = PixelFormat.RGB8
    else:
        raise SourceImageError(
            "pixel_type", f"pixels {pixels.shape} {pixels.dtype}: need gray uint8/uint16 or RGB uint8"
        )
    matrix = np.asarray(message.ijk_to_world_matrix, dtype=np.float64)
    spacing = (float(np.linalg.norm(matrix[:3, 0])), float(np.linalg.norm(matrix[:3, 1])))
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise SourceImageError("bad_matrix", f"spacing {spacing} from the image's matrix is not usable")
    return pixels, fmt, spacing


class _SlicerConnection(socketserver.BaseRequestHandler):
    """One Slicer connection to the bridge's OpenIGTLink server: pyigtl's own handler loop, except that a peer who
    goes away (Slicer closed, the cable pulled) ends the connection with one info line. pyigtl's handler prints a
    traceback and logs on the root logger for it, which a user reads as a crash."""

    def handle(self) -> None:
        server: Any = self.server
        server._connected = True
        self.request.settimeout(0.01)
        try:
            while not server.communication_thread_stop_requested:
                while server._receive_message_from_socket(self.request):
                    if server.communication_thread_stop_requested:
                        break
                while server._send_queued_message_from_socket(self.request):
                    pass
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("Slicer disconnected (%s)", escaped(exc.__class__.__name__))
        except Exception as exc:  # a malformed message from the peer: its connection ends, the bridge goes on
            log.warning("OpenIGTLink connection closed: %s", escaped(f"{exc.__class__.__name__}: {exc}"))
        finally:
            server._communication_error_occurred()


class IgtlBridge:
    """The bridge: `start`, then `stop`. The Slicer side and the source side run on their own threads."""

    def __init__(self, options: IgtlOptions) -> None:
        import pyigtl  # the igtl extra; imported only when a bridge is made

        self._pyigtl = pyigtl
        self.options = options
        self.counts = IgtlCounts()
        self._matrices: OrderedDict[int, np.ndarray] = OrderedDict()  # seq of forwarded frames -> their matrix
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.server = pyigtl.OpenIGTLinkServer(port=options.port, local_server=True, start_now=False)
        self.server.RequestHandlerClass = _SlicerConnection  # a disconnect is a log line, not a traceback
        self.feed = Feed(options.results, None, on_pair=self._on_pair, preview=options.preview, keys=options.keys, logger=log,
                         stream_id=options.source_stream_id if options.source else options.stream_id)  # fmt: skip
        self._client: Any = None
        self._sender: FrameSender | None = None
        self._source_thread: threading.Thread | None = None
        self._status_thread = threading.Thread(target=self._status_loop, name="edgert-igtl-status", daemon=True)
        self.last_banner: str | None = None  # the banner last sent to Slicer

    def start(self) -> None:
        self.server.start()
        self.feed.start()
        self._status_thread.start()
        if self.options.source is not None:
            host, port = self.options.source
            self._client = self._pyigtl.OpenIGTLinkClient(host=host, port=port, start_now=True)
            self._sender = FrameSender(
                self.options.ingest, stream_id=self.options.source_stream_id, keys=self.options.keys
            )
            self._source_thread = threading.Thread(target=self._forward, name="edgert-igtl-source", daemon=True)
            self._source_thread.start()
        log.info("OpenIGTLink server for Slicer on 127.0.0.1:%d", self.options.port)

    def stop(self) -> None:
        self._stop.set()
        if self._status_thread.ident is not None:
            self._status_thread.join(5)
        self.feed.stop()
        if self._source_thread is not None:
            self._source_thread.join(5)
        if self._client is not None:
            self._client.stop()
        if self._sender is not None:
            self._sender.close()
        self.server.stop()

    # -- to Slicer -----------------------------------------------------------------------------------------------
    def _status_loop(self) -> None:
        sent_at = 0.0
        while not self._stop.wait(STATUS_CHECK_S):
            banner = self.feed.status().banner
            now = time.monotonic()
            if not self.server.is_connected():
                self.last_banner = None  # the next Slicer to connect gets it at once
                continue
            if banner != self.last_banner or now - sent_at >= STATUS_EVERY_S:
                self.server.send_message(self._pyigtl.StringMessage(banner, device_name=STATUS_DEVICE), wait=False)
                self.last_banner, sent_at = banner, now

    def _backlog(self) -> int:
        with self.server.lock_outgoing_messages:
            return len(self.server.outgoing_messages)

    def _on_pair(self, result: Result, preview: Preview) -> None:
        if result.status is not ResultStatus.OK:
            return
        if not self.server.is_connected() or self._backlog() > MAX_BACKLOG:
            self.counts.skipped += 1
            return
        rgb = np.asarray(Image.open(io.BytesIO(bytes(preview.data))).convert("RGB"))
        height, width = rgb.shape[:2]
        with self._lock:
            matrix = self._matrices.get(result.seq) if self.options.source else None
        if matrix is None:
            matrix = geometry(self.options.spacing_mm)
        matrix = matrix.copy()
        # a display-size preview covers the frame's extent with fewer, larger pixels
        matrix[:3, 0] *= preview.frame_width / width
        matrix[:3, 1] *= preview.frame_height / height
        stamp = result.capture_ts_ns / 1e9
        messages = [self._pyigtl.ImageMessage(rgb[None], ijk_to_world_matrix=matrix, timestamp=stamp,
                                              device_name=IMAGE_DEVICE)]  # fmt: skip
        # in the frame's pixels (a detection's boxes are), then to the image's size
        labels = label_map(result, preview.frame_height, preview.frame_width)
        if labels is not None:
            labels = scale_labels(labels, height, width)
            messages.append(self._pyigtl.ImageMessage(labels[None], ijk_to_world_matrix=matrix, timestamp=stamp,
                                                      device_name=LABELS_DEVICE))  # fmt: skip
        messages.append(self._pyigtl.StringMessage(result_json(result), timestamp=stamp, device_name=RESULT_DEVICE))
        for message in messages:
            self.server.send_message(message, wait=False)
        self.counts.sent += 1

    # -- from PLUS or Slicer -------------------------------------------------------------------------------------
    def _forward(self) -> None:
        assert self._client is not None and self._sender is not None
        seq = 0
        while not self._stop.is_set():
            messages = self._client.get_latest_messages()  # the newest per device: older ones are superseded
            if not messages:
                self._stop.wait(0.002)
                continue
            for message in messages:
                if getattr(message, "_message_type", None) != "IMAGE":
                    continue
                if self.options.source_device and message.device_name != self.options.source_device:
                    continue
                try:
                    pixels, fmt, spacing = frame_from_image(message)
                except SourceImageError as exc:
                    self.counts.refused += 1
                    self.counts.refusals[exc.reason] = self.counts.refusals.get(exc.reason, 0) + 1
                    if should_log(self.counts.refused):
                        log.warning("image from %r not forwarded (%d so far): %s", message.device_name[:32],
                                    self.counts.refused, exc)  # fmt: skip
                    continue
                seq += 1
                with self._lock:
                    self._matrices[seq] = np.asarray(message.ijk_to_world_matrix, dtype=np.float64)
                    while len(self._matrices) > KEEP_MATRICES:
                        self._matrices.popitem(last=False)
                meta = {"igtl_device": str(message.device_name)[:64], "igtl_timestamp": float(message.timestamp)}
                sent = self._sender.send(pixels, seq=seq, spacing=spacing, meta=meta, pixel_format=fmt,
                                         capture_ts=time.time_ns())  # fmt: skip
                if sent:
                    self.counts.forwarded += 1
                else:
                    self.counts.dropped += 1
