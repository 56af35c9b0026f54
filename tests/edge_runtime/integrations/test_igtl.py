"""The OpenIGTLink bridge on loopback, with pyigtl on the other side: Slicer's view (a pyigtl client) gets the frame,
a label map with the same geometry and the result as text; a PLUS-like pyigtl server's images reach the daemon with
their spacing and timestamp, and come back to Slicer where they came from."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyigtl  # the counterpart of these tests, on the other end of the socket
import pytest
import zmq

from edge_runtime.core.protocol import Box, ModelId, PixelFormat, Result, ResultStatus, Task
from edge_runtime.daemon.config import PreviewConfig
from edge_runtime.daemon.server import Daemon
from edge_runtime.integrations.igtl import (
    IMAGE_DEVICE,
    LABELS_DEVICE,
    RESULT_DEVICE,
    STATUS_DEVICE,
    IgtlBridge,
    IgtlError,
    IgtlOptions,
    frame_from_image,
    label_map,
    parse_source,
)
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import LOOPBACK, FakeDaemon, free_ports, stream_frames, wait_until

MODEL = ModelId("det", "1", "cd" * 32)


def test_label_maps_for_segmentation_and_detection() -> None:
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 10:30] = 2
    seg = Result(0, 1, 1, 0, 0, 0, 0, Task.SEGMENTATION, ResultStatus.OK, MODEL, labels=("bg", "a", "b"), mask=mask)
    np.testing.assert_array_equal(label_map(seg, 40, 60), mask)
    half = label_map(seg, 20, 30)  # nearest neighbour to a smaller image: still class ids
    assert half is not None and set(np.unique(half)) == {0, 2} and half[7, 10] == 2
    det = Result(0, 1, 1, 0, 0, 0, 0, Task.DETECTION, ResultStatus.OK, MODEL, labels=("polyp", "tool"),
                 boxes=(Box(10, 5, 30, 25, 1, 0.9),))  # fmt: skip
    boxes = label_map(det, 40, 60)
    assert boxes is not None
    assert boxes[5, 20] == 2 and boxes[25, 20] == 2 and boxes[15, 10] == 2 and boxes[15, 30] == 2  # the outline
    assert boxes[15, 20] == 0 and boxes[0, 0] == 0  # not filled, nothing outside
    assert label_map(Result(0, 1, 1, 0, 0, 0, 0, Task.CLASSIFICATION, ResultStatus.OK, MODEL), 4, 4) is None


def test_images_from_a_source_become_frames_or_clear_refusals() -> None:
    matrix = np.diag([0.3, 0.4, 1.0, 1.0])
    gray = pyigtl.ImageMessage(np.zeros((1, 20, 30), np.uint16), ijk_to_world_matrix=matrix, device_name="Image")
    pixels, fmt, spacing = frame_from_image(gray)
    assert fmt is PixelFormat.GRAY16 and pixels.shape == (20, 30) and spacing == pytest.approx((0.3, 0.4))
    rgb = pyigtl.ImageMessage(np.zeros((1, 20, 30, 3), np.uint8), device_name="Image")
    assert frame_from_image(rgb)[1] is PixelFormat.RGB8
    with pytest.raises(IgtlError, match="one 2D slice"):
        frame_from_image(pyigtl.ImageMessage(np.zeros((3, 20, 30), np.uint8)))
    with pytest.raises(IgtlError, match="need gray"):
        frame_from_image(pyigtl.ImageMessage(np.zeros((1, 20, 30), np.float32)))
    assert parse_source("plus.local:18945") == ("plus.local", 18945)
    with pytest.raises(IgtlError, match="HOST:PORT"):
        parse_source("18945")


def _messages(client: object, devices: set[str], timeout: float = 15) -> dict[str, object]:
    got: dict[str, object] = {}

    def all_arrived() -> bool:
        for message in client.get_latest_messages():  # type: ignore[attr-defined]
            got[message.device_name] = message
        return devices <= got.keys()

    wait_until(all_arrived, timeout=timeout)
    return got


@pytest.mark.slow
def test_slicer_gets_the_frame_the_label_map_and_the_result(
    start_daemon: Callable[..., Daemon], zmq_ctx: zmq.Context
) -> None:
    daemon = start_daemon(preview=PreviewConfig(enabled=True, endpoint=LOOPBACK, max_side=80))
    port = free_ports(1)[0]
    bridge = IgtlBridge(IgtlOptions(results=daemon.endpoints["results"], port=port, spacing_mm=(0.5, 0.5)))
    bridge.start()
    slicer = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=port)
    stop = threading.Event()
    stream_frames(FrameSender(daemon.endpoints["ingest"], context=zmq_ctx), stop)
    try:
        got = _messages(slicer, {IMAGE_DEVICE, LABELS_DEVICE, RESULT_DEVICE})
        image, labels = got[IMAGE_DEVICE], got[LABELS_DEVICE]
        assert image.image.shape == (1, 60, 80, 3)  # the 80-wide preview of a 160-wide frame
        assert labels.image.shape == (1, 60, 80) and labels.image.dtype == np.uint8
        np.testing.assert_allclose(image.ijk_to_world_matrix, labels.ijk_to_world_matrix)  # same geometry
        np.testing.assert_allclose(np.diag(image.ijk_to_world_matrix)[:2], [1.0, 1.0])  # 0.5 mm x 2 per pixel
        result = json.loads(got[RESULT_DEVICE].string)
        assert result["task"] == "segmentation" and result["model"]["sha256"] == daemon.status()["model"]["sha256"]
        assert bridge.counts.sent >= 1
    finally:
        stop.set()
        slicer.stop()
        bridge.stop()


def test_slicer_is_told_the_same_ai_banner_as_every_display(fake_daemon: FakeDaemon) -> None:
    """Issue 32, item 3: Slicer gets the shared liveness banner as a STRING, at once when it changes."""
    from edge_runtime.core.protocol import DaemonState

    port = free_ports(1)[0]
    bridge = IgtlBridge(IgtlOptions(results=f"tcp://127.0.0.1:{fake_daemon.port}", port=port))
    bridge.start()
    slicer = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=port)
    banners: list[str] = []

    def banner_is(text: str) -> bool:
        for message in slicer.get_latest_messages():
            if message.device_name == STATUS_DEVICE:
                banners.append(message.string)
        return bool(banners) and banners[-1] == text

    try:
        wait_until(lambda: banner_is("AI live"), timeout=10)
        fake_daemon.state = None  # silence: more than two announced intervals
        wait_until(lambda: banner_is("AI offline"), timeout=3)
        fake_daemon.state = DaemonState.STOPPING
        wait_until(lambda: banner_is("AI offline (stopped)"), timeout=3)
        assert bridge.feed.status().banner == banners[-1]  # what the view's feed says, word for word
    finally:
        slicer.stop()
        bridge.stop()


@pytest.mark.slow
def test_images_from_plus_reach_the_daemon_with_spacing_and_go_back_where_they_came_from(
    start_daemon: Callable[..., Daemon], zmq_ctx: zmq.Context, tmp_path: Path
) -> None:
    daemon = start_daemon(preview=PreviewConfig(enabled=True, endpoint=LOOPBACK, max_side=4096))
    plus_port, slicer_port = free_ports(2)
    plus = pyigtl.OpenIGTLinkServer(port=plus_port, local_server=True)  # a PLUS server, as pyigtl plays it
    bridge = IgtlBridge(IgtlOptions(results=daemon.endpoints["results"], port=slicer_port,
                                    source=("127.0.0.1", plus_port), ingest=daemon.endpoints["ingest"],
                                    source_stream_id=3))  # fmt: skip
    bridge.start()
    slicer = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=slicer_port)
    sub = ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=zmq_ctx)
    matrix = np.array([[0.25, 0, 0, -20.0], [0, 0.25, 0, 5.0], [0, 0, 1, 30.0], [0, 0, 0, 1]])
    stop = threading.Event()

    def probe() -> None:
        image = np.zeros((1, 96, 128), np.uint8)
        image[0, 30:60, 40:90] = 230
        while not stop.wait(1 / 30):
            if plus.is_connected():
                plus.send_message(pyigtl.ImageMessage(image, ijk_to_world_matrix=matrix, timestamp=12345.5,
                                                      device_name="Image_Reference"), wait=False)  # fmt: skip

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        result = wait_until(lambda: sub.recv(100), timeout=15)
        assert result.stream_id == 3
        assert result.areas_mm2 is not None  # the spacing reached the daemon: areas come in mm²
        for name, px in result.areas_px.items():
            assert result.areas_mm2[name] == pytest.approx(px * 0.25 * 0.25, rel=1e-3)
        got = _messages(slicer, {IMAGE_DEVICE, LABELS_DEVICE})
        np.testing.assert_allclose(got[IMAGE_DEVICE].ijk_to_world_matrix, matrix, atol=1e-4)  # where it came from
        np.testing.assert_allclose(got[LABELS_DEVICE].ijk_to_world_matrix, matrix, atol=1e-4)
        assert got[IMAGE_DEVICE].image.shape == (1, 96, 128, 3)
        assert bridge.counts.forwarded >= 1 and bridge.counts.refused == 0
    finally:
        stop.set()
        slicer.stop()
        bridge.stop()
        plus.stop()
        sub.close()


def test_a_slicer_that_goes_away_is_one_log_line_not_a_traceback(
    fake_daemon: FakeDaemon, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import socket
    import struct
    import time

    from edge_runtime.core.protocol import DaemonState

    port = free_ports(1)[0]
    bridge = IgtlBridge(IgtlOptions(results=f"tcp://127.0.0.1:{fake_daemon.port}", port=port))
    bridge.start()
    try:
        with caplog.at_level(logging.INFO):
            peer = socket.create_connection(("127.0.0.1", port))
            wait_until(lambda: bridge.server.is_connected(), timeout=5)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # a reset, as when Slicer is killed: the next send fails
            for state in (None, DaemonState.READY, None, DaemonState.READY):  # banners to send into the reset
                fake_daemon.state = state
                time.sleep(0.7)
            wait_until(lambda: any("Slicer disconnected" in r.getMessage() for r in caplog.records), timeout=5)
            slicer = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=port)  # the bridge still serves the next one
            try:
                wait_until(lambda: any(m.device_name == STATUS_DEVICE for m in slicer.get_latest_messages()), 10)
            finally:
                slicer.stop()
    finally:
        bridge.stop()
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.name == "root" and r.levelno >= logging.ERROR]
