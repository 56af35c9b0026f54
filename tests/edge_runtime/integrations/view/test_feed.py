"""The view's ZeroMQ side without a browser: pairing, liveness, what the page receives, and the feed thread."""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Callable

import numpy as np
import zmq
from PIL import Image

from edge_runtime.core.protocol import (
    Box,
    ModelId,
    Preview,
    PreviewCodec,
    Result,
    ResultStatus,
    Task,
)
from edge_runtime.daemon.config import PreviewConfig
from edge_runtime.daemon.server import Daemon
from edge_runtime.integrations.view.feed import (
    FRAME_MAGIC,
    DisplayFrame,
    Feed,
    Pairer,
    display_frame,
    geometry_problem,
    mask_png,
    preview_endpoint,
)
from edge_runtime.sdk.liveness import Link
from edge_runtime.sdk.sender import FrameSender
from tests.conftest import LOOPBACK, wait_until

MODEL = ModelId("seg", "2.0", "cd" * 32)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 8 + b"\xff\xd9"


def _result(seq: int = 1, stream: int = 0, capture: int = 1000, mask_shape: tuple[int, int] = (4, 6)) -> Result:
    mask = np.zeros(mask_shape, np.uint8)
    mask[1:3, 2:4] = 1
    return Result(
        stream_id=stream, seq=seq, capture_ts_ns=capture, recv_ts_ns=capture + 1, infer_start_ns=capture + 2,
        infer_end_ns=capture + 3_000_000, publish_ts_ns=capture + 4_000_000, task=Task.SEGMENTATION,
        status=ResultStatus.OK, model=MODEL, labels=("background", "cyst"), colors=((0, 0, 0), (0, 200, 0)),
        mask=mask, areas_px={"cyst": 4}, contours={"cyst": [[(2, 1), (3, 1), (3, 2), (2, 2)]]},
    )  # fmt: skip


def _preview(seq: int = 1, stream: int = 0, capture: int = 1000, size: tuple[int, int] = (6, 4)) -> Preview:
    return Preview(stream, seq, capture, size[0], size[1], size[0], size[1], PreviewCodec.JPEG, JPEG)


def test_a_result_is_paired_only_with_the_preview_of_its_own_frame() -> None:
    pairer = Pairer(keep=4)
    assert pairer.add_result(_result(seq=1)) is None
    assert pairer.add_preview(_preview(seq=2)) is None  # another frame
    assert pairer.add_preview(_preview(seq=1, capture=999)) is None  # same seq, another capture: a restarted sender
    assert pairer.add_preview(_preview(seq=1, stream=1)) is None  # same seq on another stream
    pair = pairer.add_preview(_preview(seq=1))
    assert pair is not None and pair[0].seq == pair[1].seq == 1
    pair = pairer.add_result(_result(seq=2))  # the preview may come first
    assert pair is not None and pair[1].seq == 2
    assert pairer.stats.paired == 2


def test_the_pairer_stays_bounded_and_counts_what_never_paired() -> None:
    pairer = Pairer(keep=3)
    for seq in range(10):
        pairer.add_result(_result(seq=seq))
    assert pairer.stats.unpaired == 7
    assert pairer.add_preview(_preview(seq=0)) is None  # evicted long ago
    assert pairer.add_preview(_preview(seq=9)) is not None


def test_a_preview_of_another_geometry_is_refused_never_drawn() -> None:
    pairer = Pairer()
    pairer.add_result(_result(mask_shape=(4, 6)))
    assert pairer.add_preview(_preview(size=(8, 4))) is None
    assert pairer.stats.mismatched == 1
    box = Result(**{**_result().__dict__, "task": Task.DETECTION, "mask": None, "contours": {},
                    "boxes": (Box(1, 1, 9, 3, 1, 0.9),)})  # fmt: skip
    assert "beyond a 6x4 frame" in str(geometry_problem(box, 6, 4))
    assert geometry_problem(box, 10, 4) is None


def test_the_display_frame_carries_the_overlay_of_its_result() -> None:
    frame = display_frame(_result(seq=7), _preview(seq=7), received_ns=1000 + 9_000_000)
    m = frame.meta
    assert (m["seq"], m["width"], m["height"], m["task"], m["status"]) == (7, 6, 4, "segmentation", "ok")
    assert m["model"] == {"name": "seg", "version": "2.0", "sha256": "cd" * 6}
    assert m["contours"] == [{"class": 1, "points": [2, 1, 3, 1, 3, 2, 2, 2]}]
    assert m["timing_ms"]["to_view"] == 9.0
    overlay = Image.open(io.BytesIO(frame.overlay))
    assert overlay.size == (6, 4) and overlay.mode == "P"
    rgba = np.asarray(overlay.convert("RGBA"))
    assert rgba[1, 2].tolist() == [0, 200, 0, 255] and rgba[0, 0, 3] == 0  # class colour; background transparent
    message = frame.message(now_ns=1000 + 20_000_000)
    magic, length = struct.unpack_from("<4sI", message)
    meta = json.loads(message[8 : 8 + length])
    assert magic == FRAME_MAGIC and meta["age_ms"] == 20.0
    assert message[8 + length : 8 + length + meta["image_bytes"]] == JPEG
    assert message[8 + length + meta["image_bytes"] :] == frame.overlay


def test_an_error_result_carries_no_overlay() -> None:
    failed = Result(**{**_result().__dict__, "status": ResultStatus.ERROR, "mask": None, "contours": {},
                       "error": "inference failed"})  # fmt: skip
    frame = display_frame(failed, _preview(), received_ns=0)
    assert frame.overlay == b"" and frame.meta["status"] == "error" and "contours" not in frame.meta


def test_mask_png_colours_each_class() -> None:
    mask = np.array([[0, 1, 2]], np.uint8)
    rgba = np.asarray(Image.open(io.BytesIO(mask_png(mask, ((0, 0, 0), (255, 0, 0), (0, 0, 255))))).convert("RGBA"))
    assert rgba[0].tolist() == [[0, 0, 0, 0], [255, 0, 0, 255], [0, 0, 255, 255]]


def test_an_announced_wildcard_preview_endpoint_is_reached_on_the_results_host() -> None:
    assert preview_endpoint("tcp://0.0.0.0:5558", "tcp://10.1.2.3:5556") == "tcp://10.1.2.3:5558"
    assert preview_endpoint("tcp://*:5558", "tcp://cart.local:5556") == "tcp://cart.local:5558"
    assert preview_endpoint("tcp://127.0.0.1:41000", "tcp://127.0.0.1:5556") == "tcp://127.0.0.1:41000"
    assert preview_endpoint("ipc:///run/edgert/preview", "tcp://127.0.0.1:5556") == "ipc:///run/edgert/preview"


def test_the_feed_pairs_a_live_daemons_results_and_previews(
    start_daemon: Callable[..., Daemon], zmq_ctx: zmq.Context
) -> None:
    daemon = start_daemon(preview=PreviewConfig(enabled=True, endpoint=LOOPBACK))
    frames: list[DisplayFrame] = []
    feed = Feed(daemon.endpoints["results"], frames.append, max_age_ms=None)  # preview found from the heartbeats
    feed.start()
    try:
        wait_until(lambda: feed.status().link is Link.ONLINE and feed.status().preview is not None, timeout=5)
        with FrameSender(daemon.endpoints["ingest"], stream_id=6, context=zmq_ctx) as sender:
            wait_until(lambda: sender.send(np.full((96, 128), 90, np.uint8)) and len(frames) >= 3, timeout=10,
                       interval=0.05)  # fmt: skip
        f = frames[-1]
        assert (f.stream_id, f.meta["width"], f.meta["height"]) == (6, 128, 96)
        assert Image.open(io.BytesIO(f.image)).size == (128, 96)
        daemon.stop()  # STOPPING heartbeat: the page says so at once
        wait_until(lambda: feed.status().link in (Link.STOPPED, Link.OFFLINE), timeout=2)
    finally:
        feed.stop()
    assert feed.stats.pairs.mismatched == 0 and feed.stats.rejected == 0


def test_the_feed_follows_one_stream_and_drops_old_results(
    start_daemon: Callable[..., Daemon], zmq_ctx: zmq.Context
) -> None:
    daemon = start_daemon(preview=PreviewConfig(enabled=True, endpoint=LOOPBACK))
    frames: list[DisplayFrame] = []
    feed = Feed(daemon.endpoints["results"], frames.append, stream_id=2, max_age_ms=200)
    feed.start()
    try:
        wait_until(lambda: feed.status().preview is not None, timeout=5)
        image = np.zeros((32, 32), np.uint8)
        with (
            FrameSender(daemon.endpoints["ingest"], stream_id=1, context=zmq_ctx) as one,
            FrameSender(daemon.endpoints["ingest"], stream_id=2, context=zmq_ctx) as two,
        ):
            wait_until(lambda: one.send(image) and feed.stats.other_streams > 0, timeout=10, interval=0.05)
            old = time.time_ns() - 5_000_000_000  # captured 5 s ago
            wait_until(lambda: two.send(image, capture_ts=old) and feed.stats.stale > 0, timeout=10, interval=0.05)
            wait_until(lambda: two.send(image) and frames, timeout=10, interval=0.05)
    finally:
        feed.stop()
    assert {f.stream_id for f in frames} == {2}
    assert all(f.capture_ts_ns > old for f in frames)
