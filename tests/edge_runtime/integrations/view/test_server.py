"""The view's web side without a browser: HTTP, the token, and newest-wins flow control on the WebSocket."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from edge_runtime.integrations.view.feed import DisplayFrame
from edge_runtime.integrations.view.server import (
    MAX_IN_FLIGHT,
    ViewError,
    ViewOptions,
    ViewServer,
    exposure_warning,
    is_loopback,
)
from tests.conftest import FakeDaemon, wait_until

TOKEN = "s3cret-token"
NOWHERE = "tcp://127.0.0.1:9"  # no daemon: these tests feed frames in directly


@pytest.fixture
def server() -> Iterator[ViewServer]:
    view = ViewServer(ViewOptions(results=NOWHERE, port=0, token=TOKEN, log_every_s=0))
    view.start()
    yield view
    view.stop()


def _get(view: ViewServer, path: str) -> tuple[int, str, bytes]:
    assert view.address is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{view.address[1]}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def _frame(seq: int) -> DisplayFrame:
    meta = {"seq": seq, "capture_ms": time.time_ns() / 1e6, "width": 4, "height": 2, "task": "segmentation"}
    return DisplayFrame(0, seq, time.time_ns(), meta, b"\xff\xd8jpeg\xff\xd9")


def _ws(view: ViewServer, token: str = TOKEN) -> ClientConnection:
    assert view.address is not None
    return connect(f"ws://127.0.0.1:{view.address[1]}/ws?token={token}", open_timeout=5)


def _next_frame(ws: ClientConnection, timeout: float = 2.0) -> dict[str, Any] | None:
    """The meta of the next frame message, answering clock probes and skipping status messages; None on timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = ws.recv(timeout=left)
        except TimeoutError:
            return None
        if isinstance(message, bytes):
            length = int.from_bytes(message[4:8], "little")
            meta: dict[str, Any] = json.loads(message[8 : 8 + length])
            return meta
    return None


def test_the_page_needs_the_token_and_its_code_does_not(server: ViewServer) -> None:
    assert _get(server, "/")[0] == 401
    status, kind, body = _get(server, f"/?token={TOKEN}")
    assert status == 200 and kind.startswith("text/html") and b"view.js" in body
    assert _get(server, "/?token=wrong-token!")[0] == 401
    status, kind, body = _get(server, "/view.js")  # the page's code carries no data
    assert status == 200 and kind.startswith("text/javascript") and b"requestAnimationFrame" in body
    assert _get(server, f"/nothing?token={TOKEN}")[0] == 404
    status, kind, body = _get(server, f"/stats?token={TOKEN}")
    assert status == 200 and json.loads(body)["link"] == "waiting"
    with pytest.raises(InvalidStatus):
        _ws(server, token="wrong-token!")
    assert server.stats.refused >= 4


def test_a_browser_that_does_not_keep_up_gets_the_newest_frame_not_a_queue(server: ViewServer) -> None:
    with _ws(server) as ws:
        status = json.loads(ws.recv(timeout=2))
        assert status["type"] == "status" and status["link"] == "waiting" and status["max_age_ms"] == 500.0
        wait_until(lambda: server.stats.clients == 1, timeout=2)
        for seq in range(MAX_IN_FLIGHT):  # sent at once: the page may have this many frames in flight
            server._on_frame(_frame(seq))
            meta = _next_frame(ws)
            assert meta is not None and meta["seq"] == seq
        for seq in range(MAX_IN_FLIGHT, 20):
            server._on_frame(_frame(seq))
        assert _next_frame(ws, timeout=0.5) is None  # nothing more until the page acknowledges
        ws.send(json.dumps({"type": "ack", "seq": 0, "painted": False}))
        newest = _next_frame(ws)
        assert newest is not None and newest["seq"] == 19  # frames 2..18 were never queued for this browser
    assert server.stats.skipped == 17 and server.stats.sent == 3


def test_paint_reports_give_the_display_latency(server: ViewServer) -> None:
    with _ws(server) as ws:
        wait_until(lambda: server.stats.clients == 1, timeout=2)
        probe: dict[str, Any] | None = None
        while probe is None:
            message = json.loads(ws.recv(timeout=3))
            probe = message if message["type"] == "clock" else None
        browser_ahead_ms = 5000.0  # the browser's clock runs 5 s ahead of the server's
        ws.send(json.dumps({"type": "clock", "t0": probe["t0"], "tc": time.time_ns() / 1e6 + browser_ahead_ms}))
        server._on_frame(_frame(1))
        meta = _next_frame(ws)
        assert meta is not None
        paint = meta["capture_ms"] + browser_ahead_ms + 40.0  # painted 40 ms after capture
        ws.send(json.dumps({"type": "ack", "seq": 1, "painted": True, "paint_ms": paint,
                            "capture_ms": meta["capture_ms"]}))  # fmt: skip
        wait_until(lambda: server.latency.samples, timeout=2)
    assert server.latency.samples[0] == pytest.approx(40.0, abs=5.0)
    assert server.snapshot()["display_latency_ms"]["n"] == 1


def test_a_message_that_is_not_an_ack_or_clock_reply_ends_that_connection(server: ViewServer) -> None:
    with _ws(server) as ws:
        ws.send("GET /etc/passwd")
        with pytest.raises(ConnectionClosed):
            for _ in range(50):
                ws.recv(timeout=2)
    assert server.stats.refused == 1
    with _ws(server) as ws:  # the server goes on
        assert json.loads(ws.recv(timeout=2))["type"] == "status"


def test_serving_beyond_loopback_is_warned_about() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert exposure_warning("127.0.0.1", None) is None
    assert "set an access token" in str(exposure_warning("0.0.0.0", None))
    assert "access token limits" in str(exposure_warning("0.0.0.0", TOKEN))
    with pytest.raises(ValueError, match="at least 8"):
        ViewOptions(results=NOWHERE, token="short")


def test_a_port_in_use_is_a_clear_error(server: ViewServer) -> None:
    assert server.address is not None
    other = ViewServer(ViewOptions(results=NOWHERE, port=server.address[1]))
    with pytest.raises(Exception, match=f"cannot listen on 127.0.0.1:{server.address[1]}"):
        other.start()
    other.stop()


def _status(ws: ClientConnection, timeout: float = 2.0) -> dict[str, Any]:
    """The next status message, parsed strictly (a NaN in it would fail here, as it does in a browser's JSON.parse)."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} in a message to the page")

    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = ws.recv(timeout=left)
        if isinstance(message, str):
            msg: dict[str, Any] = json.loads(message, parse_constant=refuse)
            if msg["type"] == "status":
                return msg
    raise AssertionError("no status message")


@pytest.mark.parametrize(
    "attack",
    [
        '{"type":"ack","seq":1,"painted":true,"paint_ms":NaN,"capture_ms":1}',
        '{"type":"ack","seq":1,"painted":true,"paint_ms":Infinity,"capture_ms":1}',
        '{"type":"ack","seq":1e400,"painted":true,"paint_ms":1,"capture_ms":1}',
        '{"type":"ack","seq":-1,"painted":true,"paint_ms":1}',
        '{"type":"ack","seq":1,"painted":"yes","paint_ms":1}',
        '{"type":"clock","t0":NaN,"tc":1}',
        '{"type":"clock","t0":12345,"tc":1}',  # a reply to a probe never sent
        "[1, 2]",
    ],
)
def test_a_bad_number_from_one_page_closes_that_page_and_changes_nothing_another_sees(
    fake_daemon: FakeDaemon, attack: str
) -> None:
    view = ViewServer(ViewOptions(results=f"tcp://127.0.0.1:{fake_daemon.port}", port=0, log_every_s=0))
    view.start()
    try:
        with _ws(view) as victim, _ws(view) as attacker:
            wait_until(lambda: view.stats.clients == 2, timeout=2)
            view._on_frame(_frame(1))  # in flight to both pages
            assert _next_frame(attacker) is not None
            attacker.send(attack)
            with pytest.raises(ConnectionClosed):
                for _ in range(50):
                    attacker.recv(timeout=2)
            assert view.stats.bad_messages == 1 and view.stats.painted == 0 and not view.latency.samples
            wait_until(lambda: _status(victim)["link"] == "online", timeout=3)
            assert _get(view, "/stats")[0] == 200
            json.loads(_get(view, "/stats")[2], parse_constant=lambda c: pytest.fail(c))
            fake_daemon.close()  # the daemon dies: the other page says so within 2 s
            died = time.monotonic()
            wait_until(lambda: _status(victim)["link"] == "offline", timeout=2)
            assert time.monotonic() - died < 2.0
    finally:
        view.stop()


def test_an_acknowledgement_counts_only_a_frame_that_was_sent_to_that_page(server: ViewServer) -> None:
    with _ws(server) as ws, _ws(server) as other:
        wait_until(lambda: server.stats.clients == 2, timeout=2)
        server._on_frame(_frame(5))
        assert _next_frame(ws) is not None and _next_frame(other) is not None
        for seq in (4, 6, 99):  # frames never sent
            ws.send(json.dumps({"type": "ack", "seq": seq, "painted": True, "paint_ms": 1.0, "capture_ms": 1.0}))
        ws.send(json.dumps({"type": "ack", "seq": 5, "painted": True, "paint_ms": 1.0, "capture_ms": 1.0}))
        ws.send(json.dumps({"type": "ack", "seq": 5, "painted": True, "paint_ms": 1.0, "capture_ms": 1.0}))  # twice
        wait_until(lambda: server.stats.unknown_acks == 4, timeout=2)
    assert server.stats.painted == 1  # only the one frame in flight to that page, once


def test_wrong_tokens_are_throttled_per_host_and_logged_bounded(
    server: ViewServer, caplog: pytest.LogCaptureFixture
) -> None:
    codes = [_get(server, f"/?token=guess-{i:04d}")[0] for i in range(40)]
    assert codes.count(401) == 10 and codes[10:] == [429] * 30  # a burst of 10, then nothing is even checked
    assert _get(server, f"/?token={TOKEN}")[0] == 429  # the right token too: the host must wait
    assert server.stats.wrong_tokens == 10 and server.stats.throttled == 31
    lines = [r for r in caplog.records if "access token" in r.getMessage()]
    assert 1 <= len(lines) <= 5 and all(TOKEN not in r.getMessage() and "guess-" not in r.getMessage() for r in lines)
    time.sleep(1.1)  # a guess a second comes back
    assert _get(server, f"/?token={TOKEN}")[0] == 200


def test_the_view_serves_https_and_wss_with_a_given_certificate(tmp_path: Path) -> None:
    """Issue 32, item 10: the page carries the patient's images; beyond this machine it can be served over TLS."""
    import ssl
    import subprocess

    cert, key = tmp_path / "view.pem", tmp_path / "view.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=cart",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    view = ViewServer(ViewOptions(results=NOWHERE, port=0, token=TOKEN, log_every_s=0, tls_cert=cert, tls_key=key))
    view.start()
    try:
        assert view.address is not None and view.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{view.address[1]}/?token={TOKEN}"
        with urllib.request.urlopen(url, timeout=5, context=trusted) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        with pytest.raises(OSError):  # plain HTTP is not answered as a page
            urllib.request.urlopen(f"http://127.0.0.1:{view.address[1]}/?token={TOKEN}", timeout=5).read()
        with connect(f"wss://127.0.0.1:{view.address[1]}/ws?token={TOKEN}", ssl=trusted, open_timeout=5) as ws:
            view._on_frame(_frame(1))
            assert _next_frame(ws) is not None  # frames flow over WSS
    finally:
        view.stop()
    with pytest.raises(ViewError, match="cannot load the TLS certificate"):
        ViewServer(ViewOptions(results=NOWHERE, port=0, tls_cert=tmp_path / "missing.pem"))
    assert "unencrypted" in (exposure_warning("0.0.0.0", TOKEN) or "")
    assert "unencrypted" not in (exposure_warning("0.0.0.0", TOKEN, tls=True) or "")
