"""SIGKILL the daemon mid-stream and start it again: the sender never blocks, the display says "AI offline"
while heartbeats are missing, and results resume after the restart. Bounded time, polling, no bare sleeps."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import free_ports, serve_process, wait_until


@pytest.mark.slow
def test_sigkill_and_restart(tiny_models: dict[str, Path], tmp_path: Path, zmq_ctx: zmq.Context) -> None:
    ports = free_ports(3)
    ready = tmp_path / "ready.json"
    daemon = serve_process(tiny_models["seg_tiny"], ports, ready)
    stop = threading.Event()
    frame = np.zeros((16, 16), np.uint8)
    try:
        wait_until(ready.exists, timeout=30)
        endpoints = json.loads(ready.read_text())["endpoints"]
        sub = ResultSubscriber(endpoints["results"], max_age_ms=None, context=zmq_ctx)
        sender = FrameSender(endpoints["ingest"], context=zmq_ctx)
        sent = [0]

        def scanner() -> None:
            while not stop.wait(1 / 60):
                sender.send(frame)
                sent[0] += 1

        thread = threading.Thread(target=scanner, daemon=True)
        thread.start()
        wait_until(lambda: sub.recv(50) is not None, timeout=10)
        assert sub.status_text == "AI live"

        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        wait_until(lambda: sub.recv(50) is None and not sub.daemon_alive, timeout=5)
        assert sub.status_text == "AI offline"  # silence, not a STOPPING heartbeat: it died
        before = sent[0]
        wait_until(lambda: sent[0] > before + 10, timeout=5)  # the scanner keeps going: send() never blocks
        assert thread.is_alive()
        dropped_while_down = sender.stats.dropped

        ready.unlink(missing_ok=True)
        daemon = serve_process(tiny_models["seg_tiny"], ports, ready)  # same endpoints, as a service manager would
        wait_until(ready.exists, timeout=30)
        wait_until(lambda: sub.recv(50) is not None and sub.daemon_alive, timeout=15)  # results resume by themselves
        assert sub.status_text == "AI live"
        assert dropped_while_down > 0  # frames without a daemon were dropped at the scanner, not queued for later
    finally:
        stop.set()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
