"""Shared fixtures: ZeroMQ contexts that always clean up, tiny models, and in-process daemons on loopback."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).parent / "models"))

from make_models import build  # noqa: E402

from edge_runtime.core.package import demo_package_path  # noqa: E402
from edge_runtime.core.protocol import DaemonState, Heartbeat, ModelId, encode_heartbeat  # noqa: E402
from edge_runtime.daemon.config import DaemonConfig, IngestConfig  # noqa: E402
from edge_runtime.daemon.server import Daemon  # noqa: E402
from edge_runtime.sdk.sender import FrameSender  # noqa: E402

LOOPBACK = "tcp://127.0.0.1:*"


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll until predicate() is truthy; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def free_ports(n: int) -> list[int]:
    """n TCP ports free on 127.0.0.1 right now (for servers that must be restarted on the same port)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in sockets]
    for s in sockets:
        s.close()
    return ports


def serve_process(model: Path, ports: list[int], ready: Path, *extra: str) -> subprocess.Popen[bytes]:
    """`edgert serve` as its own process on 127.0.0.1 ports (ingest, results, control), heartbeats every 100 ms, its
    endpoints written to `ready` once it serves; `extra` are more flags."""
    ingest, results, control = (f"tcp://127.0.0.1:{p}" for p in ports)
    return subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.cli", "serve", "--model", str(model), "--ingest", ingest,
         "--results", results, "--control", control, "--heartbeat-ms", "100", "--ready-file", str(ready), *extra],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stream_frames(sender: FrameSender, stop: threading.Event, fps: float = 30.0) -> threading.Thread:
    """A scanner on its own thread: a bright rectangle on a 120x160 frame, sent at `fps` until `stop` is set."""
    image = np.zeros((120, 160), np.uint8)
    image[40:80, 50:110] = 220

    def run() -> None:
        while not stop.wait(1 / fps):
            sender.send(image)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def zmq_ctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return demo_package_path()


@pytest.fixture
def start_daemon(demo_model: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: start an in-process daemon on ephemeral loopback ports; every daemon is stopped at teardown."""
    daemons: list[Daemon] = []

    def start(model: Path | None = None, **changes: Any) -> Daemon:
        config = DaemonConfig(
            model=model or demo_model,
            threads=1,
            warmup=1,
            ingest=IngestConfig(endpoint=LOOPBACK),
            results_endpoint=LOOPBACK,
            control_endpoint=LOOPBACK,
            heartbeat_ms=100,
        )
        daemon = Daemon(dataclasses.replace(config, **changes))
        daemon.start()
        daemons.append(daemon)
        return daemon

    yield start
    for d in daemons:
        d.stop()


FAKE_MODEL = ModelId("seg", "2.0", "cd" * 32)


class FakeDaemon:
    """A PUB socket on a fixed port that publishes heartbeats of a given state every 30 ms, until paused."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], port: int) -> None:
        self.ctx, self.port = ctx, port
        self.state: DaemonState | None = DaemonState.READY  # None: silent
        self.interval_ms = 100.0
        self._lock = threading.Lock()
        self._sock: zmq.Socket[bytes] | None = None
        self._stop = threading.Event()
        self.open()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def open(self) -> None:
        with self._lock:
            sock = self.ctx.socket(zmq.PUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(f"tcp://127.0.0.1:{self.port}")
            self._sock = sock

    def close(self) -> None:
        with self._lock:
            assert self._sock is not None
            self._sock.close(linger=0)
            self._sock = None

    def _run(self) -> None:
        while not self._stop.wait(0.03):
            with self._lock:
                if self._sock is not None and self.state is not None:
                    self._sock.send_multipart(
                        encode_heartbeat(
                            Heartbeat(
                                self.state, time.time_ns(), 0, 0, 0, 0, FAKE_MODEL, {"interval_ms": self.interval_ms}
                            )
                        )
                    )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if self._sock is not None:
            self.close()


@pytest.fixture
def fake_daemon(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[FakeDaemon]:
    daemon = FakeDaemon(zmq_ctx, free_ports(1)[0])
    yield daemon
    daemon.stop()
