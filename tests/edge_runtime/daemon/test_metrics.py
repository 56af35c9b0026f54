"""Prometheus metrics on localhost, from the daemon's own counters."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.daemon.server import Daemon, DaemonError
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import wait_until


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_follow_the_stream(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], zmq_ctx: zmq.Context
) -> None:
    daemon = start_daemon(tiny_models["seg_tiny"], metrics_endpoint="127.0.0.1:0")
    url = daemon.endpoints["metrics"]
    assert url.startswith("http://127.0.0.1:")  # localhost only
    before = _scrape(url)
    assert before[("edgert_ready", ())] == 1.0
    assert before[("edgert_ingest_resets_total", ())] == 0
    assert before[("edgert_frames_total", (("outcome", "in"),))] == 0
    info = [k for k in before if k[0] == "edgert_model_info"]
    assert dict(info[0][1])["name"] == "seg-tiny" and dict(info[0][1])["backend"] == "onnxruntime"
    with ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=zmq_ctx) as sub, \
            FrameSender(daemon.endpoints["ingest"], context=zmq_ctx) as sender:  # fmt: skip
        wait_until(lambda: sub.recv(20) is None and sub.daemon_alive)
        for seq in range(3):
            wait_until(lambda: sender.send(np.zeros((16, 16), np.uint8), seq=seq))
            wait_until(lambda: sub.recv(50), timeout=5)
        with zmq_ctx.socket(zmq.PUSH) as raw:
            raw.connect(daemon.endpoints["ingest"])
            raw.send_multipart([b"not a frame"])
        wait_until(lambda: daemon.stats.frames_rejected == 1)
    after = _scrape(url)
    assert after[("edgert_frames_total", (("outcome", "in"),))] == 3
    assert after[("edgert_frames_total", (("outcome", "out"),))] == 3
    assert after[("edgert_frames_rejected_total", (("reason", "bad_part_count"),))] == 1
    assert after[("edgert_inference_seconds_count", ())] == 3
    assert after[("edgert_inference_seconds_bucket", (("le", "+Inf"),))] == 3
    assert after[("edgert_inference_seconds_sum", ())] > 0
    for stage in ("receive", "decode", "queue", "preprocess", "model", "postprocess", "encode", "publish"):
        assert after[("edgert_stage_seconds_count", (("stage", stage),))] == 3, stage


def test_metrics_port_in_use_fails_start(start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path]) -> None:
    first = start_daemon(tiny_models["seg_tiny"], metrics_endpoint="127.0.0.1:0")
    port = first.endpoints["metrics"].rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(DaemonError, match="cannot serve metrics"):
        start_daemon(tiny_models["seg_tiny"], metrics_endpoint=f"127.0.0.1:{port}")
