"""CURVE on ingest, control, results and preview: allowed keys get through, unknown keys are refused and counted."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge_runtime.cli import main
from edge_runtime.daemon.server import Daemon, DaemonError
from edge_runtime.sdk.security import ClientKeys, SecurityError, generate_keys
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import wait_until


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    authorized = tmp_path / "authorized"
    server_pub, server_secret = generate_keys("daemon", tmp_path / "daemon")
    scanner_pub, scanner_secret = generate_keys("scanner", tmp_path / "scanner")
    display_pub, display_secret = generate_keys("display", tmp_path / "display")
    _, stranger_secret = generate_keys("stranger", tmp_path / "stranger")
    authorized.mkdir()
    (authorized / "scanner.key").write_bytes(scanner_pub.read_bytes())  # deployment: copy the public half only
    (authorized / "display.key").write_bytes(display_pub.read_bytes())
    return {"server_pub": server_pub, "server_secret": server_secret, "authorized": authorized,
            "scanner": scanner_secret, "display": display_secret, "stranger": stranger_secret}  # fmt: skip


def _display(keys: dict[str, Path]) -> ClientKeys:
    return ClientKeys.from_files(keys["server_pub"], keys["display"])


def test_generated_secret_is_private_and_never_overwritten(tmp_path: Path) -> None:
    public, secret = generate_keys("cart", tmp_path)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert b"secret-key" not in public.read_bytes()
    with pytest.raises(SecurityError, match="not overwriting"):
        generate_keys("cart", tmp_path)


def test_allowed_sender_flows_and_unknown_keys_are_refused_and_counted(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], keys: dict[str, Path], zmq_ctx: zmq.Context
) -> None:
    daemon = start_daemon(
        tiny_models["seg_tiny"], server_key=keys["server_secret"], authorized_clients=keys["authorized"]
    )
    assert daemon.status()["curve"] is True
    frame = np.zeros((16, 16), np.uint8)
    with ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=zmq_ctx, keys=_display(keys)) as sub:
        wait_until(lambda: sub.recv(50) is None and sub.daemon_alive)
        stranger = FrameSender(daemon.endpoints["ingest"], context=zmq_ctx,
                               keys=ClientKeys.from_files(keys["server_pub"], keys["stranger"]))  # fmt: skip
        plain = FrameSender(daemon.endpoints["ingest"], context=zmq_ctx)  # no CURVE at all
        for _ in range(20):
            stranger.send(frame, seq=1000)
            plain.send(frame, seq=2000)
        wait_until(lambda: daemon.stats.snapshot()["rejected_by_reason"].get("unauthorized", 0) >= 1, timeout=5)
        with FrameSender(daemon.endpoints["ingest"], context=zmq_ctx,
                         keys=ClientKeys.from_files(keys["server_pub"], keys["scanner"])) as scanner:  # fmt: skip
            first = wait_until(lambda: scanner.send(frame, seq=7) and sub.recv(100), timeout=10)
            seqs = {first.seq}
            for _ in range(20):  # keep all three sending for a while: only the scanner may get through
                stranger.send(frame, seq=1000)
                plain.send(frame, seq=2000)
                scanner.send(frame, seq=7)
                r = sub.recv(30)
                if r is not None:
                    seqs.add(r.seq)
        stranger.close()
        plain.close()
    assert seqs == {7}
    assert daemon.stats.snapshot()["rejected_by_reason"]["unauthorized"] >= 1


def test_control_requires_an_allowed_key(start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path],
                                         keys: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    daemon = start_daemon(
        tiny_models["seg_tiny"], server_key=keys["server_secret"], authorized_clients=keys["authorized"]
    )
    control = daemon.endpoints["control"]
    assert main(["ctl", "status", "--control", control, "--server-key", str(keys["server_pub"]),
                 "--client-key", str(keys["scanner"])]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["state"] == "ready"
    assert main(["ctl", "health", "--control", control, "--timeout", "0.5", "--server-key", str(keys["server_pub"]),
                 "--client-key", str(keys["stranger"])]) == 1  # fmt: skip
    assert main(["ctl", "health", "--control", control, "--timeout", "0.5"]) == 1  # no keys: no answer
    assert main(["ctl", "status", "--control", control, "--server-key", str(keys["server_pub"])]) == 2  # usage
    assert "needs both" in capsys.readouterr().err


def test_a_refusal_by_curve_says_keys_are_the_cause_not_an_absent_daemon(
    start_daemon: Callable[..., Daemon],
    tiny_models: dict[str, Path],
    keys: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon = start_daemon(
        tiny_models["seg_tiny"], server_key=keys["server_secret"], authorized_clients=keys["authorized"]
    )
    control, ingest = daemon.endpoints["control"], daemon.endpoints["ingest"]
    stranger = ["--server-key", str(keys["server_pub"]), "--client-key", str(keys["stranger"])]
    assert main(["ctl", "status", "--control", control, "--timeout", "1"]) == 1
    assert "no answer from the daemon" in (err := capsys.readouterr().err) and "requires CURVE keys" in err
    assert main(["ctl", "status", "--control", control, "--timeout", "1", *stranger]) == 1
    assert "not in the daemon's authorized_clients" in capsys.readouterr().err
    assert main(["replay", "synthetic:frames=10,size=64x64", "--ingest", ingest, "--fps", "20"]) == 1
    err = capsys.readouterr().err
    assert "dropped 10 (refused: the daemon requires CURVE keys" in err and "no frame reached the daemon" in err
    assert main(["replay", "synthetic:frames=10,size=64x64", "--ingest", ingest, "--fps", "20", *stranger]) == 1
    assert "not in the daemon's authorized_clients" in capsys.readouterr().err
    assert main(["replay", "synthetic:frames=1,size=64x64", "--ingest", "tcp://127.0.0.1:9"]) == 0  # absent
    assert "(daemon absent or behind)" in capsys.readouterr().err


def test_bad_security_config(start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], keys: dict[str, Path],
                             tmp_path: Path) -> None:  # fmt: skip
    with pytest.raises(DaemonError, match="does not exist"):
        start_daemon(tiny_models["seg_tiny"], server_key=keys["server_secret"], authorized_clients=tmp_path / "nope")
    with pytest.raises(DaemonError, match="no secret key"):
        start_daemon(tiny_models["seg_tiny"], server_key=keys["server_pub"], authorized_clients=keys["authorized"])


def test_a_stream_belongs_to_the_key_that_opened_it(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], keys: dict[str, Path], zmq_ctx: zmq.Context,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Regression (issue 10, item 4): any authorized client could publish on another's stream id and its masks went
    to that stream's display. Now a live stream belongs to the key that opened it; others are refused and counted."""
    _, second_secret = generate_keys("second", tmp_path / "second")
    (keys["authorized"] / "second.key").write_bytes((tmp_path / "second" / "second.key").read_bytes())
    daemon = start_daemon(
        tiny_models["seg_tiny"], server_key=keys["server_secret"], authorized_clients=keys["authorized"]
    )
    frame = np.zeros((16, 16), np.uint8)
    scanner_keys = ClientKeys.from_files(keys["server_pub"], keys["scanner"])
    second_keys = ClientKeys.from_files(keys["server_pub"], second_secret)
    with (
        ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=zmq_ctx, keys=_display(keys)) as sub,
        FrameSender(daemon.endpoints["ingest"], stream_id=3, context=zmq_ctx, keys=scanner_keys) as scanner,
        FrameSender(daemon.endpoints["ingest"], stream_id=3, context=zmq_ctx, keys=second_keys) as intruder,
        FrameSender(daemon.endpoints["ingest"], stream_id=4, context=zmq_ctx, keys=second_keys) as own_stream,
    ):
        wait_until(lambda: scanner.send(frame, seq=1) and sub.recv(100), timeout=10)
        wait_until(lambda: own_stream.send(frame, seq=500) and sub.recv(100), timeout=10)  # its own stream: fine
        seqs: set[tuple[int, int]] = set()
        for _ in range(20):
            intruder.send(frame, seq=1000)
            scanner.send(frame, seq=1)
            while (r := sub.recv(30)) is not None:
                seqs.add((r.stream_id, r.seq))
        wait_until(lambda: daemon.stats.snapshot()["rejected_by_reason"].get("stream_owner", 0) >= 1, timeout=5)
    assert (3, 1000) not in seqs and (3, 1) in seqs


def test_handshake_failures_on_ingest_and_control_are_counted(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], keys: dict[str, Path], zmq_ctx: zmq.Context
) -> None:
    """Regression (issue 10, item 6): clients with a wrong server key or no CURVE were refused uncounted."""
    daemon = start_daemon(
        tiny_models["seg_tiny"], server_key=keys["server_secret"], authorized_clients=keys["authorized"]
    )

    def refused(*reasons: str) -> int:
        by_reason = daemon.stats.snapshot()["rejected_by_reason"]
        return sum(by_reason.get(r, 0) for r in reasons)

    # A client without CURVE is reported as a mechanism mismatch, or without detail when it hangs up first.
    plain_client = ("wrong_mechanism", "handshake_failed")
    control = zmq_ctx.socket(zmq.REQ)  # no CURVE on the control port
    control.setsockopt(zmq.LINGER, 0)
    control.connect(daemon.endpoints["control"])
    control.send(b"status")
    wait_until(lambda: refused(*plain_client) >= 1, timeout=10)
    control.close()
    wrong_server = ClientKeys.from_files(keys["scanner"].with_suffix(".key"), keys["scanner"])  # not the daemon's key
    before = refused(*plain_client)
    with (
        FrameSender(daemon.endpoints["ingest"], context=zmq_ctx, keys=wrong_server),
        FrameSender(daemon.endpoints["ingest"], context=zmq_ctx),
    ):
        wait_until(lambda: refused("bad_key") >= 1 and refused(*plain_client) > before, timeout=10)
    assert refused("incomplete_handshake") == 0  # each failure counted once, under the reason libzmq gave


def test_results_and_preview_are_encrypted_and_only_allowed_keys_receive_them(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], keys: dict[str, Path], zmq_ctx: zmq.Context
) -> None:
    """Issue 32, item 10: the results (masks) and the preview (the patient's images) crossed the network in plain
    even with CURVE on ingest and control. Now they are CURVE sockets with the same allow-list."""
    import dataclasses

    from edge_runtime.daemon.config import PreviewConfig
    from edge_runtime.integrations.view.feed import DisplayFrame, Feed

    daemon = start_daemon(tiny_models["seg_tiny"], server_key=keys["server_secret"],
                          authorized_clients=keys["authorized"],
                          preview=dataclasses.replace(PreviewConfig(), enabled=True, endpoint="tcp://127.0.0.1:*"))  # fmt: skip
    assert daemon.status()["curve_outputs"] is True
    frames: list[DisplayFrame] = []
    feed = Feed(daemon.endpoints["results"], frames.append, max_age_ms=None, keys=_display(keys))
    feed.start()
    frame = np.full((16, 16), 80, np.uint8)
    try:
        with (
            ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=zmq_ctx, keys=_display(keys)) as sub,
            ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=zmq_ctx) as plain,
            ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=zmq_ctx,
                             keys=ClientKeys.from_files(keys["server_pub"], keys["stranger"])) as stranger,
            FrameSender(daemon.endpoints["ingest"], context=zmq_ctx,
                        keys=ClientKeys.from_files(keys["server_pub"], keys["scanner"])) as scanner,
        ):  # fmt: skip
            wait_until(lambda: scanner.send(frame) and sub.recv(100) is not None, timeout=10)
            wait_until(lambda: scanner.send(frame) and len(frames) > 0, timeout=10)  # a preview, paired: decrypted
            assert frames[-1].image[:3] == b"\xff\xd8\xff" and feed.status().live
            for _ in range(20):
                scanner.send(frame)
                assert plain.recv(20) is None and stranger.recv(20) is None
            assert not plain.daemon_alive and not stranger.daemon_alive  # never a heartbeat either
            assert plain.stats.heartbeats == 0 and stranger.stats.heartbeats == 0
    finally:
        feed.stop()
    assert daemon.stats.snapshot()["rejected_by_reason"].get("unauthorized", 0) >= 1  # the stranger, counted


def test_outputs_can_stay_plain_for_displays_without_keys_and_say_so(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], keys: dict[str, Path], zmq_ctx: zmq.Context,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    daemon = start_daemon(tiny_models["seg_tiny"], server_key=keys["server_secret"],
                          authorized_clients=keys["authorized"], curve_outputs=False)  # fmt: skip
    assert daemon.status()["curve_outputs"] is False
    assert "UNENCRYPTED: security.curve_outputs = false" in caplog.text
    frame = np.zeros((16, 16), np.uint8)
    with (
        ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=zmq_ctx) as plain,
        FrameSender(daemon.endpoints["ingest"], context=zmq_ctx,
                    keys=ClientKeys.from_files(keys["server_pub"], keys["scanner"])) as scanner,
    ):  # fmt: skip
        wait_until(lambda: scanner.send(frame) and plain.recv(100) is not None, timeout=10)


def test_outputs_beyond_loopback_without_curve_are_warned_about_or_refused(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], keys: dict[str, Path]
) -> None:
    import dataclasses

    from edge_runtime.daemon.config import DaemonConfig, PreviewConfig, is_local_endpoint

    assert all(map(is_local_endpoint, ["tcp://127.0.0.1:5556", "tcp://localhost:1", "tcp://[::1]:2", "ipc:///x"]))
    assert not any(map(is_local_endpoint, ["tcp://0.0.0.0:5556", "tcp://*:1", "tcp://10.0.0.5:2", "tcp://eth0:3"]))
    preview = dataclasses.replace(PreviewConfig(), enabled=True, endpoint="tcp://*:5558")
    config = DaemonConfig(model=tiny_models["seg_tiny"], results_endpoint="tcp://127.0.0.1:5556", preview=preview)
    (line,) = config.plain_exposures()
    assert "preview socket" in line and "the patient's images" in line and "unencrypted" in line
    secured = dataclasses.replace(config, server_key=keys["server_secret"], authorized_clients=keys["authorized"])
    assert secured.plain_exposures() == []
    # refused before any socket is bound (tests bind to loopback only)
    with pytest.raises(DaemonError, match="refused by security.refuse_plain_network"):
        start_daemon(tiny_models["seg_tiny"], results_endpoint="tcp://0.0.0.0:*", refuse_plain_network=True)
