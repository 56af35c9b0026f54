"""Each task end to end through a daemon on loopback: frame in, typed result out, decoded from this frame."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge_runtime.core.package import TrackerSpec
from edge_runtime.core.protocol import Result, ResultStatus, Task
from edge_runtime.daemon.server import Daemon
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import wait_until

StartDaemon = Callable[..., Daemon]


def _serve(daemon: Daemon, ctx: zmq.Context, frames: list[np.ndarray]) -> list[Result]:
    results: list[Result] = []
    with (
        ResultSubscriber(daemon.endpoints["results"], context=ctx, max_age_ms=None) as sub,
        FrameSender(daemon.endpoints["ingest"], stream_id=2, context=ctx) as sender,
    ):
        wait_until(lambda: sub.recv(50) is None and sub.daemon_alive, timeout=5)
        for seq, frame in enumerate(frames):
            assert wait_until(lambda: sender.send(frame, seq=seq), timeout=5)
            results.append(wait_until(lambda: sub.recv(100), timeout=10))
    assert [r.seq for r in results] == list(range(len(frames)))
    return results


def _spot(row: int, col: int) -> np.ndarray:
    frame = np.zeros((64, 64), np.uint8)  # stretched onto 32x32 cells of 8: each cell is 16x16 frame pixels
    frame[row * 16 : row * 16 + 16, col * 16 : col * 16 + 16] = 255
    return frame


@pytest.mark.slow
@pytest.mark.parametrize("model", ["det_dense", "det_nms"])
def test_detection_boxes_come_back_in_frame_pixels(
    start_daemon: StartDaemon, zmq_ctx: zmq.Context, tiny_models: dict[str, Path], model: str
) -> None:
    daemon = start_daemon(tiny_models[model])
    results = _serve(daemon, zmq_ctx, [_spot(0, 0), _spot(2, 3), np.zeros((64, 64), np.uint8)])
    assert all(r.task is Task.DETECTION and r.status is ResultStatus.OK for r in results)
    assert [[(b.x1, b.y1, b.x2, b.y2) for b in r.boxes] for r in results] == [
        [(0.0, 0.0, 16.0, 16.0)],
        [(48.0, 32.0, 64.0, 48.0)],
        [],
    ]
    assert results[0].label(results[0].boxes[0].class_id) == "spot" and results[0].boxes[0].track_id == 0


@pytest.mark.slow
def test_the_daemon_tracker_gives_stable_ids_after_k_hits(
    start_daemon: StartDaemon, zmq_ctx: zmq.Context, tiny_models: dict[str, Path]
) -> None:
    daemon = start_daemon(tiny_models["det_dense"], tracker=TrackerSpec(min_hits=2, window=3, max_missed=1))
    results = _serve(daemon, zmq_ctx, [_spot(1, 1)] * 3 + [np.zeros((64, 64), np.uint8)] * 2)
    assert [[b.track_id for b in r.boxes] for r in results] == [[], [1], [1], [1], []]  # shown, bridged, gone


@pytest.mark.slow
def test_classification_top_k_and_saliency_come_back(
    start_daemon: StartDaemon, zmq_ctx: zmq.Context, tiny_models: dict[str, Path]
) -> None:
    daemon = start_daemon(tiny_models["cls_cam"])
    left = np.zeros((32, 64), np.uint8)
    left[:, :32] = 255  # bright on the left: "bright" and "dark" tie, the saliency shows where "bright" is
    bright = np.full((32, 64), 230, np.uint8)
    first, second = _serve(daemon, zmq_ctx, [left, bright])
    assert first.task is Task.CLASSIFICATION and [c.class_id for c in first.classes] == [0, 1]
    assert first.saliency is not None and first.saliency.values.shape == (16, 32)
    assert first.saliency.values[:, :12].min() > 200 and first.saliency.values[:, 20:].max() < 30
    assert second.label(second.classes[0].class_id) == "bright" and second.classes[0].score > 0.9


@pytest.mark.slow
def test_the_subscriber_gives_typed_results_per_task(
    start_daemon: StartDaemon, zmq_ctx: zmq.Context, tiny_models: dict[str, Path]
) -> None:
    from edge_runtime.core.results import ClassificationResult, DetectionResult

    for model, expected in (("det_nms", DetectionResult), ("cls_cam", ClassificationResult)):
        daemon = start_daemon(tiny_models[model])
        with (
            ResultSubscriber(daemon.endpoints["results"], context=zmq_ctx, max_age_ms=None) as sub,
            FrameSender(daemon.endpoints["ingest"], context=zmq_ctx) as sender,
        ):
            wait_until(lambda: sub.recv(50) is None and sub.daemon_alive, timeout=5)
            assert wait_until(lambda: sender.send(_spot(1, 1), seq=0), timeout=5)
            view = wait_until(lambda: sub.recv_typed(100), timeout=10)
        assert isinstance(view, expected)
        if isinstance(view, DetectionResult):
            assert [(d.label, d.x1, d.y1, d.color) for d in view.detections] == [("spot", 16.0, 16.0, (255, 200, 0))]
        else:
            assert isinstance(view, ClassificationResult)
            assert [c.label for c in view.top] == ["dark", "bright"] and view.saliency_label == "dark"
        daemon.stop()
