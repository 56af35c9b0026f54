"""The Triton backend against a real `tritonserver` (PyTriton's, on the CPU): answers equal to local inference,
metadata checked against the card, readiness, timeouts, and a daemon that degrades when the server dies and
recovers when it returns. Never skipped: tests/tritonserver.py makes the server's venv or fails saying how."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends import BackendError, BackendKind, create_runner
from edge_runtime.backends.triton import SharedMemory, TritonOptions, TritonProtocol, TritonRunner
from edge_runtime.core.errors import OptionError
from edge_runtime.core.package import demo_package_path, load_package
from edge_runtime.core.protocol import ResultStatus, Task
from edge_runtime.daemon.server import Daemon
from edge_runtime.sdk.control import ControlClient
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import free_ports, wait_until
from tests.tritonserver import TritonServer


@pytest.fixture(scope="module")
def triton_server(demo_model: Path) -> Iterator[TritonServer]:
    server = TritonServer(demo_model, *free_ports(3)).start()
    yield server
    server.stop()


def _feed(demo_model: Path, seed: int = 0) -> dict[str, np.ndarray]:
    card = load_package(demo_model).card
    rng = np.random.default_rng(seed)
    return {card.input_name: rng.standard_normal(card.preprocess.input_shape).astype(np.float32)}


@pytest.mark.parametrize("shared_memory", [SharedMemory.ON, SharedMemory.OFF])
def test_triton_answers_as_local_onnxruntime_does(
    triton_server: TritonServer, demo_model: Path, shared_memory: SharedMemory
) -> None:
    package = load_package(demo_model)
    options = TritonOptions(url=triton_server.url, shared_memory=shared_memory)
    local = create_runner(BackendKind.ONNXRUNTIME, package.onnx_path, threads=1)
    remote = create_runner(BackendKind.TRITON, package.onnx_path, triton=options, model_name=package.card.name)
    with local, remote:
        assert isinstance(remote, TritonRunner) and remote.shared_memory is (shared_memory is SharedMemory.ON)
        for seed in range(3):  # the same region reused frame after frame
            feed = _feed(demo_model, seed)
            want, got = local.infer(feed), remote.infer(feed)
            assert want.keys() == got.keys()
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
        assert remote.unavailable() is None and remote.failures == 0


def test_triton_over_http_answers_too(triton_server: TritonServer, demo_model: Path) -> None:
    package = load_package(demo_model)
    http = TritonOptions(url=f"127.0.0.1:{triton_server.ports[1]}", protocol=TritonProtocol.HTTP,
                         shared_memory=SharedMemory.OFF)  # fmt: skip
    with TritonRunner(package.onnx_path, package.card.name, http) as runner:
        out = runner.infer(_feed(demo_model))
    assert next(iter(out.values())).shape[0] == 1


def test_triton_metadata_that_does_not_match_the_package_is_refused(triton_server: TritonServer) -> None:
    other = load_package(demo_package_path(Task.CLASSIFICATION))  # another model's I/O, under the served name
    runner = TritonRunner(other.onnx_path, "us-seg-demo", TritonOptions(url=triton_server.url))
    with pytest.raises(BackendError, match=r"on the server, .* in the package|the server's model has no input"):
        runner.activate()


def test_triton_without_the_model_or_the_server_says_so_in_one_line(triton_server: TritonServer,
                                                                    demo_model: Path) -> None:  # fmt: skip
    package = load_package(demo_model)
    absent = TritonRunner(package.onnx_path, "no-such-model", TritonOptions(url=triton_server.url, ready_timeout_s=1))
    with pytest.raises(BackendError, match="model 'no-such-model' not ready within 1 s"):
        absent.activate()
    (port,) = free_ports(1)
    nobody = TritonRunner(package.onnx_path, "us-seg-demo", TritonOptions(url=f"127.0.0.1:{port}", ready_timeout_s=1))
    with pytest.raises(BackendError, match="not ready within 1 s .*UNAVAILABLE") as refused:
        nobody.activate()
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "http://127.0.0.1:8001"}, "host:port"),
        ({"url": "127.0.0.1"}, "host:port"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"ready_timeout_s": float("nan")}, "ready_timeout_s"),
        ({"tls": True, "protocol": TritonProtocol.HTTP}, "tls is for gRPC"),
        ({"private_key": Path("k.pem")}, "go together"),
        ({"root_certificates": Path("ca.pem")}, "tls is off"),
    ],
)
def test_triton_options_from_outside_are_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        TritonOptions(**changes)  # type: ignore[arg-type]


def test_triton_slower_than_the_request_timeout_fails_that_frame_and_says_why(demo_model: Path) -> None:
    slow = TritonServer(demo_model, *free_ports(3), "--delay-ms", "400").start()
    try:
        package = load_package(demo_model)
        options = TritonOptions(url=slow.url, timeout_ms=100, shared_memory=SharedMemory.OFF)
        with TritonRunner(package.onnx_path, package.card.name, options) as runner:
            with pytest.raises(BackendError, match="DEADLINE_EXCEEDED"):
                runner.infer(_feed(demo_model))
            assert runner.unavailable() is not None and "DEADLINE_EXCEEDED" in runner.unavailable()
    finally:
        slow.stop()


def test_a_daemon_on_triton_degrades_within_2_s_when_the_server_dies_and_recovers_with_it(
    start_daemon: Callable[..., Daemon], demo_model: Path
) -> None:
    server = TritonServer(demo_model, *free_ports(3)).start()
    try:
        daemon = start_daemon(backend=BackendKind.TRITON, triton=TritonOptions(url=server.url))
        control = ControlClient(daemon.endpoints["control"], timeout_s=2.0)
        card = load_package(demo_model).card
        frame = np.zeros((card.preprocess.height, card.preprocess.width), np.uint8)
        with ResultSubscriber(daemon.endpoints["results"], max_age_ms=5000) as sub, \
                FrameSender(daemon.endpoints["ingest"]) as sender:  # fmt: skip
            seq = 0

            def answer() -> ResultStatus:
                """One frame sent, and the status of its own result."""
                nonlocal seq
                seq += 1
                wait_until(lambda: sender.send(frame, seq=seq), timeout=5)  # once connected
                got: list[ResultStatus] = []
                wait_until(lambda: (r := sub.recv(100)) is not None and r.seq == seq and not got.append(r.status),
                           timeout=10)  # fmt: skip
                return got[0]

            assert answer() is ResultStatus.OK
            assert control.request("status")["state"] == "ready"
            server.kill()
            killed = time.monotonic()
            assert answer() is ResultStatus.ERROR  # the frame is answered, with an error, not lost
            status = control.request("status")
            assert status["state"] == "degraded" and time.monotonic() - killed < 2.0
            assert "UNAVAILABLE" in status["backend_unavailable"]["reason"]
            server.start()  # the same ports: the daemon's channel reconnects on its own
            wait_until(lambda: answer() is ResultStatus.OK, timeout=30, interval=0.2)
            assert control.request("status")["state"] == "ready"
        stats = control.request("stats")
        settled = stats["frames_out"] + stats["frames_dropped"] + stats["frames_stale"] + stats["frames_rejected"]
        assert stats["frames_in"] == settled == seq  # every frame accepted was answered
    finally:
        server.stop()


def test_triton_is_a_daemon_config_section(tmp_path: Path) -> None:
    from edge_runtime.daemon.config import load_config

    path = tmp_path / "daemon.toml"
    path.write_text(
        f'[model]\npackage = "{demo_package_path()}"\nbackend = "triton"\n'
        '[triton]\nurl = "10.0.0.5:8001"\nmodel = "seg"\ntimeout_ms = 250\nshared_memory = "off"\n'
    )
    config = load_config(path)
    assert config.backend is BackendKind.TRITON
    assert config.triton == dataclasses.replace(TritonOptions(), url="10.0.0.5:8001", model="seg", timeout_ms=250,
                                                shared_memory=SharedMemory.OFF)  # fmt: skip
    assert not config.triton.local
    path.write_text(path.read_text().replace("timeout_ms = 250", "timeout_ms = -1"))
    with pytest.raises(ValueError, match="triton.timeout_ms"):
        load_config(path)


def test_triton_over_tls_answers_and_a_plain_client_is_refused(demo_model: Path, tmp_path: Path) -> None:
    """gRPC over TLS (CURVE does not cover this channel): a server certificate for 127.0.0.1, trusted by its file."""
    import subprocess

    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    server = TritonServer(demo_model, *free_ports(3), "--tls-cert", str(cert), "--tls-key", str(key)).start()
    try:
        package = load_package(demo_model)
        tls = TritonOptions(url=server.url, tls=True, root_certificates=cert, shared_memory=SharedMemory.OFF)
        with TritonRunner(package.onnx_path, package.card.name, tls) as runner:
            assert next(iter(runner.infer(_feed(demo_model)).values())).shape[0] == 1
        plain = TritonRunner(package.onnx_path, package.card.name,
                             TritonOptions(url=server.url, ready_timeout_s=1, shared_memory=SharedMemory.OFF))  # fmt: skip
        with pytest.raises(BackendError, match="not ready within 1 s"):
            plain.activate()
    finally:
        server.stop()


def test_edgert_bench_times_a_package_on_triton(triton_server: TritonServer, demo_model: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from edge_runtime.cli import main

    argv = ["bench", str(demo_model), "--backend", "triton", "--triton-url", triton_server.url, "--duration-s", "0.5",
            "--iterations", "5", "--warmup-ms", "50"]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "us-seg-demo 1.0.0 on triton" in said, said
    assert main([*argv, "--precision", "int8"]) == 1
    assert "benchmarks the model the server has" in capsys.readouterr().err
