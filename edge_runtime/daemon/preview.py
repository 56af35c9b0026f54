"""The optional preview stream: each processed frame as a display-size JPEG, for `edgert view`.

The inference thread offers the frame it has just published a result for; a thread of its own encodes and
publishes it on the preview PUB socket, which it alone uses. The slot holds one frame: when encoding falls behind,
the older frame is skipped (counted), never queued, and inference never waits for it. A preview carries the stream,
seq and size of its frame, so a display pairs it with its result and never draws one frame's overlay on another.
"""

from __future__ import annotations

import io
import logging
import threading

import zmq
from PIL import Image

from edge_runtime.core.errors import should_log
from edge_runtime.core.protocol import Frame, Preview, PreviewCodec, encode_preview
from edge_runtime.sdk.overlay import display_pixels

log = logging.getLogger("edgert.daemon")


def preview_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The image size for a frame: scaled down to `max_side` on its longest side, same aspect, never up."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_preview(frame: Frame, max_side: int, quality: int) -> Preview:
    """Encode one frame as its preview."""
    image = Image.fromarray(display_pixels(frame.pixels, frame.pixel_format))
    size = preview_size(frame.width, frame.height, max_side)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Preview(
        stream_id=frame.stream_id,
        seq=frame.seq,
        capture_ts_ns=frame.capture_ts_ns,
        frame_width=frame.width,
        frame_height=frame.height,
        image_width=size[0],
        image_height=size[1],
        codec=PreviewCodec.JPEG,
        data=buffer.getvalue(),
    )


class PreviewPublisher:
    """One-frame slot + encoder thread + PUB socket. `offer` never blocks the caller."""

    def __init__(self, sock: zmq.Socket[bytes], max_side: int, quality: int) -> None:
        self._sock = sock
        self._max_side = max_side
        self._quality = quality
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._stop = False
        self.published = 0
        self.skipped = 0  # frames replaced in the slot before they were encoded
        self.failed = 0
        self._thread = threading.Thread(target=self._loop, name="edgert-preview", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.skipped += 1
            self._frame = frame
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._frame is None and not self._stop:
                        self._cond.wait(0.5)
                    if self._stop:
                        return
                    frame, self._frame = self._frame, None
                assert frame is not None
                try:
                    preview = make_preview(frame, self._max_side, self._quality)
                except (OSError, ValueError) as exc:  # never ends the thread: that frame goes without a preview
                    self.failed += 1
                    if should_log(self.failed):
                        log.warning("preview of stream %d frame %d failed (%d so far): %s", frame.stream_id,
                                    frame.seq, self.failed, exc)  # fmt: skip
                    continue
                del frame  # the received buffer goes back as soon as it is encoded
                # PUB never blocks: at the high-water mark (2) a display that is not keeping up misses this one
                self._sock.send_multipart(encode_preview(preview), copy=False)
                self.published += 1
        finally:
            self._sock.close()

    def counts(self) -> dict[str, int]:
        return {"previews_published": self.published, "previews_skipped": self.skipped,
                "previews_failed": self.failed}  # fmt: skip
