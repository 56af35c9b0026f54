"""Hot model reload while a stream runs: swapped between frames, refused safely when anything is wrong."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import zmq

from edge_runtime.cli import main
from edge_runtime.core.protocol import Result, ResultStatus
from edge_runtime.daemon.server import Daemon
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import wait_until
from tests.models.make_models import card, write_package

pytestmark = pytest.mark.slow


@pytest.fixture
def v2(tiny_models: dict[str, Path]) -> Path:
    """seg_tiny under a new version, beside it (the folder reload allows by default)."""
    model = onnx.load(str(tiny_models["seg_tiny"] / "model.onnx"))
    path = write_package(
        tiny_models["seg_tiny"].parent / "seg_tiny_v2", model, {**card("seg-tiny"), "version": "0.0.2"}
    )
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _ask(ctx: zmq.Context, endpoint: str, request: dict) -> dict:
    with ctx.socket(zmq.REQ) as req:
        req.setsockopt(zmq.LINGER, 0)
        req.connect(endpoint)
        req.send_string(json.dumps(request))
        assert req.poll(30_000), "no reply to reload"
        return json.loads(req.recv())


class Stream:
    """30 fps into the daemon, every result kept."""

    def __init__(self, daemon: Daemon, ctx: zmq.Context) -> None:
        self.results: list[Result] = []
        self.sub = ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=ctx)
        self.sender = FrameSender(daemon.endpoints["ingest"], context=ctx)
        self.stop = threading.Event()
        wait_until(lambda: self.sub.recv(50) is None and self.sub.daemon_alive)
        frame = np.zeros((16, 16), np.uint8)
        frame[:4] = 255
        self.thread = threading.Thread(
            target=lambda: [self.sender.send(frame) for _ in iter(lambda: self.stop.wait(1 / 30), True)]
        )
        self.thread.start()

    def collect(self, until: Callable[[], bool], timeout: float = 10) -> None:
        def step() -> bool:
            r = self.sub.recv(50)
            if r is not None:
                self.results.append(r)
            return until()

        wait_until(step, timeout=timeout)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sub.close()
        self.sender.close()


def test_reload_swaps_between_frames_while_streaming(start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path],
                                                     v2: Path, zmq_ctx: zmq.Context) -> None:  # fmt: skip
    daemon = start_daemon(tiny_models["seg_tiny"])
    stream = Stream(daemon, zmq_ctx)
    try:
        stream.collect(lambda: len(stream.results) >= 10)
        reply: dict = {}
        t = threading.Thread(
            target=lambda: reply.update(
                _ask(zmq_ctx, daemon.endpoints["control"], {"cmd": "reload", "package": str(v2)})
            )
        )
        t.start()
        stream.collect(lambda: not t.is_alive() and len(stream.results) >= 40)
        stream.collect(lambda: stream.results[-1].model.version == "0.0.2" and len(stream.results) >= 60)
    finally:
        stream.close()
    assert reply["ok"] and reply["model"].startswith("seg-tiny:0.0.2")
    versions = [r.model.version for r in stream.results]
    switch = versions.index("0.0.2")
    assert set(versions[:switch]) == {"0.0.1"} and set(versions[switch:]) == {"0.0.2"}  # never back, never mixed
    assert all(r.status is ResultStatus.OK for r in stream.results)  # no frame failed during the reload
    seqs = [r.seq for r in stream.results]
    assert seqs == sorted(seqs)
    assert daemon.status()["model"]["version"] == "0.0.2" and daemon.reloads == 1
    assert daemon.stats.snapshot()["inference_errors"] == 0


@pytest.mark.parametrize(
    "which", ["fails_self_test", "outside_allowed_folder", "sha256_mismatch", "missing", "symlink_outside"]
)
def test_bad_reload_is_refused_and_the_old_model_keeps_serving(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], zmq_ctx: zmq.Context, tmp_path: Path, which: str
) -> None:
    daemon = start_daemon(tiny_models["seg_tiny"])
    if which == "fails_self_test":
        package, message = tiny_models["seg_bad_runtime"], "self-test failed"
    elif which == "outside_allowed_folder":
        package, message = shutil.copytree(tiny_models["seg_tiny"], tmp_path / "elsewhere"), "outside the folders"
    elif which == "sha256_mismatch":
        package = shutil.copytree(tiny_models["seg_tiny"], tiny_models["seg_tiny"].parent / f"tampered_{tmp_path.name}")
        (package / "model.onnx").write_bytes((package / "model.onnx").read_bytes() + b"\0")
        message = "does not match the card"
    elif which == "symlink_outside":  # inside the allowed folder, but its model.onnx links to a file outside
        package = shutil.copytree(tiny_models["seg_tiny"], tiny_models["seg_tiny"].parent / f"linked_{tmp_path.name}")
        outside = shutil.copy(package / "model.onnx", tmp_path / "model.onnx")
        (package / "model.onnx").unlink()
        (package / "model.onnx").symlink_to(outside)
        message = "outside the folders reload may use"
    else:
        package, message = tiny_models["seg_tiny"].parent / "no_such_package", "no such model package"
    stream = Stream(daemon, zmq_ctx)
    try:
        stream.collect(lambda: len(stream.results) >= 5)
        reply = _ask(zmq_ctx, daemon.endpoints["control"], {"cmd": "reload", "package": str(package)})
        stream.collect(lambda: len(stream.results) >= 20)
    finally:
        stream.close()
        if which in ("sha256_mismatch", "symlink_outside"):
            shutil.rmtree(package, ignore_errors=True)
    assert reply["ok"] is False and message in reply["error"]
    assert {r.model.version for r in stream.results} == {"0.0.1"}
    assert all(r.status is ResultStatus.OK for r in stream.results)
    assert daemon.reloads == 0 and daemon.status()["state"] == "ready"
    assert daemon.status()["reloads_refused"] == 1


def test_ctl_reload_command(start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], v2: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    daemon = start_daemon(tiny_models["seg_tiny"])
    assert main(["ctl", "reload", str(v2), "--control", daemon.endpoints["control"]]) == 0
    assert '"ok": true' in capsys.readouterr().out
    assert main(["ctl", "reload", str(tiny_models["seg_bad_runtime"]), "--control", daemon.endpoints["control"]]) == 1
