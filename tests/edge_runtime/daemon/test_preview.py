"""The daemon's optional preview stream: one JPEG per processed frame, with its result's stream, seq and size."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image

from edge_runtime.core.protocol import Frame, PixelFormat, Preview, Result, decode_preview
from edge_runtime.daemon.config import ConfigError, PreviewConfig, build_config
from edge_runtime.daemon.preview import make_preview, preview_size
from edge_runtime.daemon.server import Daemon
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import LOOPBACK, wait_until

StartDaemon = Callable[..., Daemon]


def _frame(pixels: np.ndarray, fmt: PixelFormat, seq: int = 5) -> Frame:
    return Frame(stream_id=2, seq=seq, capture_ts_ns=99, send_ts_ns=100, pixel_format=fmt, pixels=pixels)


def test_preview_is_off_by_default_and_its_options_are_checked(tmp_path: Path) -> None:
    base = {"model": {"package": "m"}}
    assert build_config(base, tmp_path).preview == PreviewConfig(enabled=False)
    on = build_config({**base, "preview": {"enabled": True, "max_side": 320, "quality": 60}}, tmp_path).preview
    assert (on.enabled, on.max_side, on.quality, on.endpoint) == (True, 320, 60, "tcp://127.0.0.1:5558")
    with pytest.raises(ConfigError, match=r"daemon.toml: preview.quality: 0 outside 1..95"):
        build_config({**base, "preview": {"quality": 0}}, tmp_path, where="daemon.toml")
    with pytest.raises(ConfigError, match="unknown key preview.fps"):
        build_config({**base, "preview": {"fps": 10}}, tmp_path)
    with pytest.raises(ConfigError, match="preview.endpoint"):
        build_config({**base, "preview": {"endpoint": "localhost:5558"}}, tmp_path)


def test_preview_size_scales_down_only_and_keeps_the_aspect() -> None:
    assert preview_size(640, 480, 640) == (640, 480)
    assert preview_size(320, 240, 640) == (320, 240)  # never up
    assert preview_size(1920, 1080, 640) == (640, 360)
    assert preview_size(480, 1920, 640) == (160, 640)


@pytest.mark.parametrize(
    ("pixels", "fmt", "mode"),
    [
        (np.full((48, 64), 200, np.uint8), PixelFormat.GRAY8, "L"),
        (np.full((48, 64), 200 << 8, np.uint16), PixelFormat.GRAY16, "L"),
        (np.full((48, 64), 200 / 255, np.float32), PixelFormat.GRAY32F, "L"),
        (np.dstack([np.full((48, 64), v, np.uint8) for v in (30, 120, 220)]), PixelFormat.BGR8, "RGB"),
    ],
)
def test_each_pixel_format_becomes_a_display_jpeg(pixels: np.ndarray, fmt: PixelFormat, mode: str) -> None:
    pv = make_preview(_frame(pixels, fmt), max_side=32, quality=90)
    assert (pv.stream_id, pv.seq, pv.capture_ts_ns) == (2, 5, 99)
    assert (pv.frame_width, pv.frame_height, pv.image_width, pv.image_height) == (64, 48, 32, 24)
    image = Image.open(io.BytesIO(pv.data))
    assert (image.format, image.mode, image.size) == ("JPEG", mode, (32, 24))
    centre = np.asarray(image.convert("RGB"))[12, 16].astype(int)
    expected = [220, 120, 30] if fmt is PixelFormat.BGR8 else [200, 200, 200]  # BGR comes out as RGB
    assert np.abs(centre - expected).max() <= 3


def test_the_daemon_publishes_one_preview_per_result_with_its_seq(
    start_daemon: StartDaemon, zmq_ctx: zmq.Context
) -> None:
    daemon = start_daemon(preview=PreviewConfig(enabled=True, endpoint=LOOPBACK, max_side=160))
    preview_sub = zmq_ctx.socket(zmq.SUB)
    preview_sub.setsockopt(zmq.SUBSCRIBE, b"")
    preview_sub.connect(daemon.endpoints["preview"])
    frames = [np.full((120, 160), 40 * (i + 1), np.uint8) for i in range(4)]
    with (
        ResultSubscriber(daemon.endpoints["results"], context=zmq_ctx, max_age_ms=None) as sub,
        FrameSender(daemon.endpoints["ingest"], stream_id=4, context=zmq_ctx) as sender,
    ):
        wait_until(lambda: sub.recv(50) is None and sub.daemon_alive, timeout=5)
        assert sub.last_heartbeat is not None
        assert sub.last_heartbeat.info["preview"] == daemon.endpoints["preview"]  # how a display finds it
        results: dict[int, Result] = {}
        previews: dict[int, Preview] = {}
        for seq, frame in enumerate(frames):
            # the SUB socket may join after the first preview: resend until one of this seq arrives
            def got_preview() -> bool:
                sender.send(frame, seq=seq, capture_ts=1_000_000 + seq)  # resends are the same frame
                r = sub.recv(100)
                if r is not None:
                    results[r.seq] = r
                while preview_sub.poll(50):
                    pv = decode_preview(preview_sub.recv_multipart())
                    previews[pv.seq] = pv
                return seq in results and seq in previews

            wait_until(got_preview, timeout=10)
    for seq, frame in enumerate(frames):
        r, pv = results[seq], previews[seq]
        assert r.mask is not None
        assert (pv.stream_id, pv.seq, pv.capture_ts_ns) == (r.stream_id, r.seq, r.capture_ts_ns)
        assert (pv.frame_height, pv.frame_width) == (120, 160) == r.frame_shape
        gray = np.asarray(Image.open(io.BytesIO(pv.data)))
        assert abs(int(gray.mean()) - int(frame[0, 0])) <= 2  # this frame's image, not another's
    stats = daemon.handle_command("stats")
    assert stats is not None and stats["previews_published"] >= len(frames)
    preview_sub.close()


def test_without_preview_there_is_no_preview_socket(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    assert "preview" not in daemon.endpoints
    stats = daemon.handle_command("stats")
    assert stats is not None and "previews_published" not in stats
