"""CURVE encryption and key-based authentication for the daemon's ingest and control sockets.

The daemon holds a server key pair; an allow-list folder holds the public certificates of every client (scanner,
display controller) that may connect. A ZAP authenticator checks each connecting client's key against that folder:
unknown keys are refused and counted. Keys are ZeroMQ certificate files written by `edgert keys generate`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from edge_runtime.core.errors import EdgertError

ZAP_DOMAIN = "edgert"


class SecurityError(EdgertError, ValueError):
    pass


def is_loopback(host: str) -> bool:
    """Whether a host name or address reaches this machine only: `localhost` or a loopback address. Anything else
    (an interface, `0.0.0.0`, `*`, a host name) is taken to be the network. The one rule for every listener."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_keypair(path: str | Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{path}: cannot read a ZeroMQ certificate ({exc})") from None
    if need_secret and not secret:
        raise SecurityError(f"{path}: has no secret key (use the .key_secret file)")
    return public, secret


def generate_keys(name: str, folder: str | Path) -> tuple[Path, Path]:
    """Write NAME.key (public, to hand out) and NAME.key_secret (private, readable by its owner only)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / f"{name}.key_secret").exists():
        raise SecurityError(f"{folder / (name + '.key_secret')} already exists; not overwriting a key")
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs: the daemon's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str | Path, client_secret_file: str | Path) -> ClientKeys:
        server_public, _ = load_keypair(server_public_file, need_secret=False)
        public, secret = load_keypair(client_secret_file, need_secret=True)
        assert secret is not None
        return cls(server_public, public, secret)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


KeyVerdict = Callable[[bool, bytes], object]
"""(allowed, the client's public key in Z85) -> None, called for every CURVE handshake the authenticator judges."""


class _CountingAuthenticator(ThreadAuthenticator):
    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], on_verdict: KeyVerdict) -> None:
        super().__init__(context)
        self._on_verdict = on_verdict

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:  # async in pyzmq >= 25
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        self._on_verdict(allowed, z85.encode(client_key))
        return allowed, reason


class ServerSecurity:
    """Server key pair plus the allow-list, applied to the daemon's sockets through one ZAP authenticator."""

    def __init__(self, server_secret_file: Path, authorized_clients: Path) -> None:
        self.public, secret = load_keypair(server_secret_file, need_secret=True)
        assert secret is not None
        self.secret = secret
        if not authorized_clients.is_dir():
            raise SecurityError(f"{authorized_clients}: the authorized clients folder does not exist")
        self.authorized = authorized_clients
        self._auth: ThreadAuthenticator | None = None

    def start(self, context: zmq.Context[zmq.Socket[bytes]], on_verdict: KeyVerdict) -> None:
        self._auth = _CountingAuthenticator(context, on_verdict)
        self._auth.start()
        self._auth.configure_curve(domain=ZAP_DOMAIN, location=str(self.authorized))  # "*" covers only no domain

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class HandshakeWatch:
    """Why a client socket's peer refused it, from the socket's monitor: a missing or unknown CURVE key otherwise
    looks like an absent daemon (no answer, frames dropped). Attach before connecting; `refusal()` says what the
    monitor has seen so far, without blocking, and `close()` ends the monitor."""

    def __init__(self, sock: zmq.Socket[bytes], keys: ClientKeys | None) -> None:
        self._sock = sock
        self._monitor: zmq.Socket[bytes] | None = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self._keys = keys
        self._seen: tuple[int, str] | None = None  # (how specific, what to say)

    def _explain(self, event: int) -> tuple[int, str]:
        """What an event says, and how specifically: a reconnecting client sees a mix, and which of them comes last is
        a race (the peer's ERROR command, or just the closed connection: NO_DETAIL), so the most specific one wins."""
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                3,
                "the daemon refused this client's CURVE key: its public .key is not in the daemon's authorized_clients folder",
            )
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and self._keys is None:
            return 2, "the daemon requires CURVE keys: give --server-key (its .key) and --client-key (your .key_secret)"
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            return 2, "the daemon does not use CURVE, or speaks another protocol, while this client has keys"
        if self._keys is None:
            return 1, (
                "the security handshake failed (the daemon requires CURVE keys? give --server-key (its .key) and "
                "--client-key (your .key_secret))"
            )
        return 1, "the security handshake failed: is --server-key the daemon's public key?"

    def refusal(self) -> str | None:
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor is not None and self._monitor.poll(0):
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                break
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._seen = None  # a later connection got through
                continue
            said = self._explain(event)
            if self._seen is None or said[0] >= self._seen[0]:
                self._seen = said
        return self._seen[1] if self._seen is not None else None

    def close(self) -> None:
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
