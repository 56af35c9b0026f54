"""Watchdog: a hung backend turns heartbeats and status DEGRADED; systemd gets READY/WATCHDOG/STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge_runtime.core.protocol import DaemonState
from edge_runtime.daemon.server import Daemon
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_hung_inference_is_reported_then_recovers(start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path],
                                                  zmq_ctx: zmq.Context) -> None:  # fmt: skip
    daemon = start_daemon(tiny_models["seg_tiny"], inference_deadline_ms=200, heartbeat_ms=50)
    runner = daemon._pipeline.runner  # type: ignore[union-attr]
    original = runner.infer
    release = threading.Event()

    def hang_once(feed):  # type: ignore[no-untyped-def]
        runner.infer = original  # type: ignore[method-assign]
        release.wait(5)  # a backend stuck in a driver call
        return original(feed)

    runner.infer = hang_once  # type: ignore[method-assign]
    with ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=zmq_ctx) as sub, \
            FrameSender(daemon.endpoints["ingest"], context=zmq_ctx) as sender:  # fmt: skip
        wait_until(lambda: sub.recv(20) is None and sub.daemon_alive)
        wait_until(lambda: sender.send(np.zeros((16, 16), np.uint8)))
        wait_until(lambda: sub.recv(20) is None and sub.last_heartbeat.state is DaemonState.DEGRADED, timeout=5)
        assert sub.last_heartbeat.info["watchdog"]["deadline_ms"] == 200
        status = daemon.status()
        assert status["state"] == "degraded" and status["watchdog"]["busy_ms"] > 200
        release.set()
        result = wait_until(lambda: sub.recv(50), timeout=5)  # the frame still completes
        assert result.seq == 0
        wait_until(lambda: sub.recv(20) is None and sub.last_heartbeat.state is DaemonState.READY, timeout=5)
    assert daemon.stats.snapshot()["deadline_misses"] == 1


@pytest.mark.slow
def test_systemd_notifications(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(0.2)
    any_port = "tcp://127.0.0.1:*"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.cli", "serve", "--model", str(tiny_models["seg_tiny"]), "--ingest", any_port,
         "--results", any_port, "--control", any_port, "--heartbeat-ms", "100"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    seen: list[str] = []

    def receive() -> list[str]:
        try:
            seen.append(listener.recv(256).decode())
        except TimeoutError:
            pass
        return seen

    try:
        wait_until(lambda: "READY=1" in receive(), timeout=30)
        wait_until(lambda: receive().count("WATCHDOG=1") >= 2, timeout=5)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "STOPPING=1" in receive(), timeout=10)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert seen.index("READY=1") < seen.index("WATCHDOG=1") < seen.index("STOPPING=1")


def test_systemd_unit_raises_the_descriptor_limit() -> None:
    """Regression (issue 10, item 8): 2,000 idle TCP connections exhausted the default 1,024 descriptors."""
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(Path(__file__).resolve().parents[3] / "deploy" / "edgert.service")
    assert int(unit["Service"]["LimitNOFILE"]) >= 16384
