"""Replay as a scanner: pixel formats follow the frames (16-bit and float sources), frames the daemon's limits
would reject are refused before sending and warned about once, a DICOM frame that fails mid-cine is skipped."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image

from calibration.preprocessing import Color, DicomOutput
from calibration.sources import SourceFrame, open_source
from edge_runtime.core.protocol import Frame, Limits, PixelFormat, decode_frame
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.tools.replay import replay
from tests.calibration import make_dicom


def _play(zmq_ctx: zmq.Context, source: object, **kwargs: object) -> tuple[list[Frame], object]:
    pull = zmq_ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    sender = FrameSender(f"tcp://127.0.0.1:{port}", high_water_mark=100, context=zmq_ctx)
    try:
        # The sender queues only on completed connections (IMMEDIATE): probe until one frame gets through.
        deadline = time.monotonic() + 5.0
        while not (sender.send(np.zeros((2, 2), np.uint8)) and pull.poll(100)):
            assert time.monotonic() < deadline, "the sender never connected"
        while pull.poll(50):
            pull.recv_multipart()
        sender.stats.dropped = 0
        stats = replay(source, sender, fps=500, **kwargs)  # type: ignore[arg-type]
        sender.close(flush_ms=500)
        frames = []
        while pull.poll(500):
            frames.append(decode_frame(pull.recv_multipart(copy=False)))
    finally:
        pull.close()
    return frames, stats


def test_16_bit_png_and_float_array_are_sent_in_their_own_formats(zmq_ctx: zmq.Context, tmp_path: Path) -> None:
    deep = (np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 40).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48))
    frames, stats = _play(zmq_ctx, open_source(str(tmp_path)))
    assert [f.pixel_format for f in frames] == [PixelFormat.GRAY16, PixelFormat.GRAY32F]
    np.testing.assert_array_equal(frames[0].pixels, deep)
    assert stats.sent == 2 and stats.refused == 0  # type: ignore[attr-defined]


def test_dicom_display16_goes_out_as_gray16(zmq_ctx: zmq.Context, tmp_path: Path) -> None:
    path = make_dicom.write(make_dicom.sigmoid_window(), tmp_path / "w.dcm")
    (frame,), _ = _play(zmq_ctx, open_source(str(path), DicomOutput.DISPLAY16))
    assert frame.pixel_format is PixelFormat.GRAY16 and frame.pixels.max() > 60000


def test_frame_over_the_daemons_limits_is_refused_not_sent(
    zmq_ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    tall = SourceFrame(np.zeros((9000, 64), np.uint8), Color.GRAY, None, None, {})
    small = SourceFrame(np.zeros((64, 64), np.uint8), Color.GRAY, None, None, {})
    with caplog.at_level(logging.WARNING, logger="edgert.replay"):
        frames, stats = _play(zmq_ctx, [tall, small, tall, small], limits=Limits())
    assert [f.height for f in frames] == [64, 64]
    assert (stats.sent, stats.refused) == (2, 2)  # type: ignore[attr-defined]
    warnings = [r.getMessage() for r in caplog.records if r.name == "edgert.replay"]
    assert len(warnings) == 1 and "64x9000 pixels exceed the daemon's limit of 8192x8192" in warnings[0]


def test_dicom_frame_that_fails_mid_cine_is_skipped_and_the_run_goes_on(
    zmq_ctx: zmq.Context, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_dicom.write(make_dicom.float_pixels_nan(), tmp_path / "nan.dcm")
    with caplog.at_level(logging.WARNING):
        frames, stats = _play(zmq_ctx, open_source(str(path)))
    assert len(frames) == stats.sent == 2  # type: ignore[attr-defined]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [f"{path}: frame 2 of 3 skipped: frame 2 has NaN or infinite float pixel values"]


def test_a_source_slower_than_the_asked_rate_says_so_once_with_the_rate_it_reached(
    zmq_ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    def slow() -> object:  # 10 ms a frame: at most 100 fps, asked 500
        for _ in range(45):
            time.sleep(0.01)
            yield SourceFrame(np.zeros((8, 8), np.uint8), Color.GRAY, None, None, {})

    with caplog.at_level(logging.WARNING, logger="edgert.replay"):
        frames, stats = _play(zmq_ctx, slow())
    assert len(frames) == 45 and stats.reached_fps is not None and stats.reached_fps < 110  # type: ignore[attr-defined]
    said = [r.getMessage() for r in caplog.records if "cannot keep" in r.getMessage()]
    assert len(said) == 1 and "cannot keep 500 fps" in said[0] and f"{stats.reached_fps:.1f} fps" in said[0]  # type: ignore[attr-defined]
    quick = [SourceFrame(np.zeros((8, 8), np.uint8), Color.GRAY, None, None, {})] * 40
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgert.replay"), FrameSender("tcp://127.0.0.1:9") as nobody:
        stats = replay(quick, nobody, fps=50)  # type: ignore[arg-type]  # a rate the source keeps easily
    assert stats.reached_fps is None and not any("cannot keep" in r.getMessage() for r in caplog.records)  # type: ignore[attr-defined]


def test_asking_more_frames_than_a_finite_source_holds_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from pydicom.data import get_testdata_file

    from edge_runtime.cli import main

    cine = get_testdata_file("examples_ybr_color.dcm")
    assert main(["replay", cine, "--frames", "40", "--fps", "300", "--ingest", "tcp://127.0.0.1:9"]) == 0
    assert "the source ended after 30 of the 40 frames asked: add --loop" in capsys.readouterr().err
