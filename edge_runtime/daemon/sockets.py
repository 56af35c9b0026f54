"""The daemon's sockets and their options: ingest (PULL, SUB, or a ROUTER answering REQ senders), results PUB,
control ROUTER and the optional preview PUB, with their bounds, high-water marks and CURVE."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import zmq

from edge_runtime.core.errors import EdgertError
from edge_runtime.daemon.config import DaemonConfig, IngestPattern, SocketMode
from edge_runtime.daemon.control import CONTROL_MAX_MESSAGE
from edge_runtime.daemon.ingest import HANDSHAKE_IVL_MS, IngestSocket, MessageBounds
from edge_runtime.sdk.security import ServerSecurity

log = logging.getLogger("edgert.daemon")

INGEST_RCVHWM = 4  # the receiver drains continuously; a deep queue would only hold stale frames
FRAME_MAX_PARTS = 3  # header, pixels, optional metadata
ANSWERED_PART_BYTES = 1 << 30  # REQ/REP ingest: a part up to this is received and refused with an answer
RESULTS_SNDHWM = 16
PREVIEW_SNDHWM = 2  # a display that falls behind misses previews; it never makes them queue


class SocketError(EdgertError, RuntimeError):
    """A socket that cannot be bound or connected where the config says (the daemon reports it as DaemonError)."""


@dataclass(frozen=True)
class DaemonSockets:
    ingest: IngestSocket
    pub: zmq.Socket[bytes]  # results and heartbeats
    rep: zmq.Socket[bytes]  # control (a ROUTER)
    preview: zmq.Socket[bytes] | None  # [preview] enabled


def open_sockets(
    cfg: DaemonConfig, ctx: zmq.Context[zmq.Socket[bytes]], security: ServerSecurity | None, endpoints: dict[str, str]
) -> DaemonSockets:
    """The daemon's sockets, bound or connected as `cfg` says, CURVE servers where `security` is given; each
    bound endpoint lands in `endpoints`. All or nothing: a socket that fails closes those opened before it."""
    opened: list[zmq.Socket[bytes]] = []

    def new(kind: int, **options: Any) -> zmq.Socket[bytes]:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        return sock

    def make(kind: int, **options: Any) -> zmq.Socket[bytes]:  # closed here if a later socket fails
        sock = new(kind, **options)
        opened.append(sock)
        return sock

    def attach(sock: zmq.Socket[bytes], name: str, endpoint: str, mode: SocketMode = SocketMode.BIND) -> None:
        try:
            sock.bind(endpoint) if mode is SocketMode.BIND else sock.connect(endpoint)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EADDRINUSE and name in endpoints:
                raise  # re-opening: the old listener is still closing, the caller retries
            raise SocketError(f"cannot {mode.value} the {name} socket to {endpoint}: {exc}") from None
        endpoints[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT) if mode is SocketMode.BIND else endpoint
        if mode is SocketMode.BIND and any(h in endpoint for h in ("0.0.0.0", "://*", "[::]")):
            log.warning(
                "%s socket listens on all interfaces (%s): configure CURVE keys on a shared network", name, endpoint
            )

    try:
        # REP: a ROUTER, which can answer each REQ sender at once and never waits on one (see imagezmq.py)
        kind = {IngestPattern.PULL: zmq.PULL, IngestPattern.SUB: zmq.SUB, IngestPattern.REP: zmq.ROUTER}[
            cfg.ingest.pattern
        ]

        def make_ingest() -> zmq.Socket[bytes]:  # also called by IngestSocket.reset, after start-up
            # MAXMSGSIZE bounds each part: ZeroMQ has no whole-message bound (IngestSocket adds one). A part over
            # it drops the connection with no answer, which leaves a REQ sender waiting for good: a ROUTER takes
            # parts up to ANSWERED_PART_BYTES, so that IngestSocket can refuse them with an answer.
            cap = max(cfg.max_message_bytes, ANSWERED_PART_BYTES) if kind == zmq.ROUTER else cfg.max_message_bytes
            sock = new(kind, RCVHWM=INGEST_RCVHWM, MAXMSGSIZE=cap, HANDSHAKE_IVL=HANDSHAKE_IVL_MS)
            if security is not None:
                security.apply(sock)
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            endpoint = endpoints.get("ingest")  # a re-opened socket keeps the endpoint (and port) it had
            try:
                attach(sock, "ingest", endpoint or cfg.ingest.endpoint, cfg.ingest.mode)
            except BaseException:
                sock.close(linger=0)
                raise
            return sock

        bounds = MessageBounds(FRAME_MAX_PARTS, cfg.max_message_bytes + cfg.limits.max_meta_bytes)
        ingest = IngestSocket(make_ingest, bounds)
        opened.append(ingest.socket)
        outputs = security if cfg.encrypted_outputs else None  # results and preview: CURVE servers too
        pub = make(zmq.PUB, SNDHWM=RESULTS_SNDHWM)
        pub.setsockopt(zmq.LINGER, 200)  # let the final results and the STOPPING heartbeat leave, but never hang
        if outputs is not None:
            outputs.apply(pub)
        attach(pub, "results", cfg.results_endpoint)
        # ROUTER, not REP: every reply goes to the peer that asked, by its routing id, so no peer can make the
        # daemon answer another one's request (a REP socket's strict turn-taking can be desynchronised).
        rep = make(zmq.ROUTER, MAXMSGSIZE=CONTROL_MAX_MESSAGE, HANDSHAKE_IVL=HANDSHAKE_IVL_MS)
        if security is not None:
            security.apply(rep)
        attach(rep, "control", cfg.control_endpoint)
        preview = None
        if cfg.preview.enabled:
            preview = make(zmq.PUB, SNDHWM=PREVIEW_SNDHWM)
            if outputs is not None:
                outputs.apply(preview)
            attach(preview, "preview", cfg.preview.endpoint)
    except BaseException:
        for sock in opened:
            sock.close(linger=0)
        raise
    return DaemonSockets(ingest, pub, rep, preview)
