"""Scanner simulator: play a frame source to a daemon at the recorded frame rate, as a live probe would."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from calibration.preprocessing import Color
from calibration.sources import FrameSource, SourceFrame
from edge_runtime.core.errors import escaped
from edge_runtime.core.protocol import Limits, PixelFormat, pixel_format_for
from edge_runtime.sdk.sender import FrameSender

log = logging.getLogger("edgert.replay")

DEFAULT_FPS = 30.0
_LOOP_CACHE_BYTES = 256 * 1024 * 1024  # looped sources this small are decoded once, then replayed from memory


@dataclass
class ReplayStats:
    sent: int = 0
    dropped: int = 0  # refused by the sender's queue (daemon absent or behind)
    late: int = 0  # frames sent more than one interval behind schedule (this machine could not keep up)
    refused: int = 0  # not sent: the daemon's limits would reject them (too large, or not a sendable array)
    reached_fps: float | None = None  # set when the source could not keep the asked rate: the rate it reached

    @property
    def frames(self) -> int:
        """Frames taken from the source, whatever became of them."""
        return self.sent + self.dropped + self.refused


RATE_CHECK_FRAMES = 30  # the rate is judged over this many frames, then said once if it falls short
RATE_SHORTFALL = 0.9  # below this fraction of the asked rate, the source cannot keep it


def _wire_format(frame: SourceFrame, limits: Limits) -> PixelFormat | str:
    """The pixel format the frame goes out in, or why the daemon would refuse it (checked here, so that such a
    frame is never counted as sent)."""
    height, width = frame.pixels.shape[:2]
    if width > limits.max_width or height > limits.max_height:
        return f"{width}x{height} pixels exceed the daemon's limit of {limits.max_width}x{limits.max_height}"
    try:
        return pixel_format_for(frame.pixels, bgr=frame.color is Color.BGR)
    except ValueError as exc:
        return str(exc)


def _frames(source: FrameSource, loop: bool) -> Iterator[SourceFrame]:
    cache: list[SourceFrame] = []
    cached_bytes = 0
    for frame in source:
        if loop and cached_bytes <= _LOOP_CACHE_BYTES:
            cache.append(frame)
            cached_bytes += frame.pixels.nbytes
        yield frame
    if not loop:
        return
    if cached_bytes > _LOOP_CACHE_BYTES:
        while True:
            yield from source
    if not cache:
        return
    while True:
        yield from cache


def replay(
    source: FrameSource,
    sender: FrameSender,
    *,
    fps: float | None = None,
    loop: bool = False,
    max_frames: int | None = None,
    stop: threading.Event | None = None,
    on_send: Callable[[int, SourceFrame], None] | None = None,
    limits: Limits = Limits(),
) -> ReplayStats:
    """Send frames on a fixed schedule; a frame that cannot be queued is dropped, never waited for.

    The rate is `fps` if given, else the source's recorded frame interval, else 30 fps. Falling behind does not
    cause a burst of catch-up frames: the schedule restarts from now, as a scanner's would.
    `on_send(seq, frame)` is called just before each frame is sent. A frame the daemon's `limits` would reject is
    not sent: it is counted as refused, with one warning per reason. Gray frames go as GRAY8, GRAY16 or GRAY32F
    after their array type, color frames as RGB8 or BGR8.
    """
    stats = ReplayStats()
    warned: set[str] = set()
    next_at = started = time.perf_counter()
    for seq, frame in enumerate(_frames(source, loop)):
        if (max_frames is not None and seq >= max_frames) or (stop is not None and stop.is_set()):
            break
        interval = 1.0 / fps if fps else (frame.frame_interval_s or 1.0 / DEFAULT_FPS)
        if seq == RATE_CHECK_FRAMES and stats.reached_fps is None:
            reached = seq / max(time.perf_counter() - started, 1e-9)
            if reached < RATE_SHORTFALL / interval:  # said once: the source (decode, generation) is the bottleneck
                stats.reached_fps = reached
                log.warning(
                    "the source cannot keep %.4g fps on this machine: it reached %.1f fps over the first %d frames "
                    "(each frame takes %.0f ms to read or make); frames go out as fast as it gives them",
                    1.0 / interval, reached, seq, 1000.0 / reached,
                )  # fmt: skip
        delay = next_at - time.perf_counter()
        if delay > 0:
            if stop is not None:
                if stop.wait(delay):
                    break
            else:
                time.sleep(delay)
        elif delay < -interval:
            stats.late += 1
            next_at = time.perf_counter()
        fmt = _wire_format(frame, limits)
        if isinstance(fmt, str):  # the reason it cannot be sent
            stats.refused += 1
            if fmt not in warned:
                warned.add(fmt)
                log.warning(
                    "frame %d not sent: %s (later frames refused for this reason are only counted)", seq, escaped(fmt)
                )
            next_at += interval
            continue
        if on_send:
            on_send(seq, frame)
        if sender.send(frame.pixels, seq=seq, spacing=frame.spacing_mm, meta=frame.meta, pixel_format=fmt):
            stats.sent += 1
        else:
            stats.dropped += 1
        next_at += interval
    return stats
