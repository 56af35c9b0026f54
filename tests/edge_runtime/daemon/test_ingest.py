"""The ingest socket's whole-message bounds and the handshake-failure counts from ZeroMQ's monitor."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edge_runtime.core.protocol import RejectReason
from edge_runtime.daemon.ingest import IngestSocket, MessageBounds, PeerEvents, Received, Refused
from edge_runtime.sdk.sender import RECONNECT_IVL_MS
from tests.conftest import wait_until


@pytest.fixture
def ingest(zmq_ctx: zmq.Context) -> Iterator[IngestSocket]:
    endpoint: list[str] = []

    def factory() -> zmq.Socket:
        sock = zmq_ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint[0] if endpoint else "tcp://127.0.0.1:0")
        endpoint[:] = [sock.getsockopt_string(zmq.LAST_ENDPOINT)]
        return sock

    reader = IngestSocket(factory, MessageBounds(max_parts=3, max_bytes=1000))
    yield reader
    reader.close()


def _sender(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.connect(endpoint)
    return sock


def _next(reader: IngestSocket, timeout_ms: int = 5000) -> Received | Refused:
    assert reader.socket.poll(timeout_ms), "no message arrived"
    message = reader.receive()
    assert message is not None
    return message


def test_a_message_within_bounds_is_read_whole(ingest: IngestSocket, zmq_ctx: zmq.Context) -> None:
    sender = _sender(zmq_ctx, ingest.socket.getsockopt_string(zmq.LAST_ENDPOINT))
    sender.send_multipart([b"h", b"p" * 500, b"m"])
    message = _next(ingest)
    assert isinstance(message, Received)
    assert [p.bytes for p in message.parts] == [b"h", b"p" * 500, b"m"]
    assert message.user_id is None  # no CURVE, no identity
    assert ingest.receive() is None


def test_too_many_parts_are_refused_and_the_next_message_still_arrives(
    ingest: IngestSocket, zmq_ctx: zmq.Context
) -> None:
    sender = _sender(zmq_ctx, ingest.socket.getsockopt_string(zmq.LAST_ENDPOINT))
    sender.send_multipart([b""] * 50)
    sender.send_multipart([b"ok", b"ok"])
    refused = _next(ingest)
    assert isinstance(refused, Refused) and refused.reason is RejectReason.BAD_PART_COUNT
    assert not refused.reset  # 47 parts are dropped within the budget: no need to re-open
    assert [p.bytes for p in _next(ingest).parts] == [b"ok", b"ok"]  # type: ignore[union-attr]


def test_parts_over_the_byte_budget_together_are_refused(ingest: IngestSocket, zmq_ctx: zmq.Context) -> None:
    sender = _sender(zmq_ctx, ingest.socket.getsockopt_string(zmq.LAST_ENDPOINT))
    sender.send_multipart([b"x" * 600, b"y" * 600])  # each part is fine, together over 1000 bytes
    refused = _next(ingest)
    assert isinstance(refused, Refused) and refused.reason is RejectReason.MESSAGE_TOO_LARGE


def test_a_message_of_many_parts_is_dropped_by_reopening_and_senders_come_back(
    ingest: IngestSocket, zmq_ctx: zmq.Context
) -> None:
    """Regression (issue 10, item 2): a message of a huge number of empty parts was read whole into Python (768 MB,
    4.8 s for a million). Now reading stops at the bound and the rest is dropped by re-opening the socket."""
    endpoint = ingest.socket.getsockopt_string(zmq.LAST_ENDPOINT)
    attacker, scanner = _sender(zmq_ctx, endpoint), _sender(zmq_ctx, endpoint)
    attacker.send_multipart([b""] * 200_000)
    refused = _next(ingest, 20_000)
    assert isinstance(refused, Refused) and refused.reason is RejectReason.BAD_PART_COUNT
    assert refused.reset and ingest.resets == 1
    assert ingest.socket.getsockopt_string(zmq.LAST_ENDPOINT) == endpoint  # same port: senders reconnect to it

    def scanner_gets_through() -> bool:
        try:
            scanner.send_multipart([b"frame", b"px"], zmq.NOBLOCK)
        except zmq.Again:
            return False
        message = ingest.receive() if ingest.socket.poll(20) else None
        return isinstance(message, Received) and message.parts[0].bytes == b"frame"

    wait_until(scanner_gets_through, timeout=5)


@pytest.fixture
def curve(tmp_path: Path, zmq_ctx: zmq.Context) -> Iterator[dict[str, bytes]]:
    for name in ("server", "client", "stranger"):
        zmq.auth.create_certificates(tmp_path, name)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_bytes((tmp_path / "client.key").read_bytes())
    auth = ThreadAuthenticator(zmq_ctx)
    auth.start()
    auth.configure_curve(domain="test", location=str(allowed))
    keys: dict[str, bytes] = {}
    for name in ("server", "client", "stranger"):
        public, secret = zmq.auth.load_certificate(tmp_path / f"{name}.key_secret")
        assert secret is not None
        keys[f"{name}_public"], keys[f"{name}_secret"] = public, secret
    yield keys
    auth.stop()


def _watched_server(ctx: zmq.Context, keys: dict[str, bytes] | None) -> tuple[zmq.Socket, PeerEvents, Counter[str]]:
    server = ctx.socket(zmq.PULL)
    server.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        server.zap_domain = b"test"
        server.curve_server = True
        server.curve_publickey, server.curve_secretkey = keys["server_public"], keys["server_secret"]
    counts: Counter[str] = Counter()
    peers = PeerEvents(ctx, server, lambda reason, _detail: counts.update([reason.value]), settle_s=0.2)
    server.bind("tcp://127.0.0.1:0")
    return server, peers, counts


def _wait_for_count(peers: PeerEvents, counts: Counter[str], reason: str) -> None:
    def seen() -> bool:
        peers.drain()
        return counts[reason] >= 1

    wait_until(seen, timeout=5)


@pytest.mark.parametrize(
    ("client_keys", "reason"),
    [
        (("stranger_public", "client_public", "client_secret"), "bad_key"),  # wrong server key
        (("server_public", "client_public", "stranger_secret"), "bad_key"),  # mismatched key pair
        (None, "wrong_mechanism"),  # no CURVE at all
    ],
)
def test_curve_handshake_failures_are_counted(
    zmq_ctx: zmq.Context, curve: dict[str, bytes], client_keys: tuple[str, str, str] | None, reason: str
) -> None:
    """Regression (issue 10, item 6): clients with a wrong key or no CURVE were refused but never counted."""
    server, peers, counts = _watched_server(zmq_ctx, curve)
    client = _sender(zmq_ctx, server.getsockopt_string(zmq.LAST_ENDPOINT))
    if client_keys is not None:
        server_key, public, secret = (curve[k] for k in client_keys)
        client.curve_serverkey, client.curve_publickey, client.curve_secretkey = server_key, public, secret
        client.disconnect(server.getsockopt_string(zmq.LAST_ENDPOINT))  # options apply to new connections
        client.connect(server.getsockopt_string(zmq.LAST_ENDPOINT))
    _wait_for_count(peers, counts, reason)
    assert counts["incomplete_handshake"] == 0  # a failure that libzmq names is not counted twice
    peers.close()


def test_a_good_client_is_not_counted(zmq_ctx: zmq.Context, curve: dict[str, bytes]) -> None:
    server, peers, counts = _watched_server(zmq_ctx, curve)
    client = zmq_ctx.socket(zmq.PUSH)
    client.setsockopt(zmq.LINGER, 0)
    client.curve_serverkey = curve["server_public"]
    client.curve_publickey, client.curve_secretkey = curve["client_public"], curve["client_secret"]
    client.connect(server.getsockopt_string(zmq.LAST_ENDPOINT))
    client.send(b"hello")
    assert server.poll(5000)
    frame = server.recv(copy=False)
    assert frame.get("User-Id")  # ZAP names the sender: what stream ownership is keyed on
    client.close()
    wait_until(lambda: (peers.drain(), not peers._handshaking)[1], timeout=5)
    assert sum(counts.values()) == 0
    peers.close()


def test_incompatible_socket_types_and_raw_bytes_are_counted(zmq_ctx: zmq.Context) -> None:
    server, peers, counts = _watched_server(zmq_ctx, None)
    endpoint = server.getsockopt_string(zmq.LAST_ENDPOINT)
    publisher = zmq_ctx.socket(zmq.PUB)  # PUB cannot talk to PULL: libzmq closes it without a failure event
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.connect(endpoint)
    _wait_for_count(peers, counts, "incomplete_handshake")
    publisher.close()
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    _wait_for_count(peers, counts, "handshake_failed")  # libzmq reports bytes that are not ZMTP, without detail
    peers.close()
