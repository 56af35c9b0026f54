"""The control socket's side of the protocol: requests read, bounded and answered each to the peer that sent it.

The socket is a ROUTER, so every reply goes to the peer that asked, by its routing id, and no peer can make the
daemon answer another one's request. A request is one message part of at most `CONTROL_MAX_REQUEST` bytes
(ZeroMQ itself drops anything over `CONTROL_MAX_MESSAGE`); anything else is refused here, counted and answered
with an error. What a valid request does is the daemon's (`Daemon.handle_command`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from edge_runtime.core.errors import escaped, should_log
from edge_runtime.core.protocol import RejectReason
from edge_runtime.daemon.ingest import frame_user_id
from edge_runtime.daemon.stats import DaemonStats

log = logging.getLogger("edgert.daemon")

CONTROL_COMMANDS = ("status", "stats", "reload")
CONTROL_MAX_REQUEST = 4096  # bytes of one control request; larger ones are answered with an error
CONTROL_MAX_MESSAGE = 65536  # ZeroMQ drops (and disconnects) anything larger before we see it


@dataclass(frozen=True)
class ControlRequest:
    envelope: list[bytes]  # the routing id (and a REQ client's empty delimiter): where the reply goes
    text: str
    user: str | None  # the client's CURVE key (z85), with CURVE


def command_name(text: str) -> str:
    """The command of a control request, for the audit log: a known name, else "unknown" (never its text)."""
    name = text
    if text.startswith("{"):
        try:
            name = str(json.loads(text).get("cmd", ""))
        except (ValueError, AttributeError):
            return "unknown"
    return name if name in CONTROL_COMMANDS else "unknown"


def parse_request(text: str) -> tuple[str, Mapping[str, Any]] | None:
    """(command, fields) of a request: a bare command name, or JSON {"cmd": name, ...}; None for broken JSON."""
    if not text.startswith("{"):
        return text, {}
    try:
        request = json.loads(text)
        return str(request.get("cmd", "")), request
    except (json.JSONDecodeError, AttributeError):
        return None


def waiting_requests(router: zmq.Socket[bytes], stats: DaemonStats, curve: bool) -> Iterator[ControlRequest]:
    """Every request waiting on the socket; malformed ones are refused, counted and answered here."""
    while True:
        try:
            frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        parts = [f.bytes for f in frames]
        user = frame_user_id(frames[-1]) if curve else None
        # [routing id, b"" (REQ clients), request]; a DEALER client sends no empty delimiter
        envelope = parts[:2] if len(parts) > 2 and parts[1] == b"" else parts[:1]
        body = parts[len(envelope) :]
        if len(body) != 1:
            count_refusal(stats, RejectReason.BAD_CONTROL_REQUEST, f"{len(body)} request parts, expected 1")
            send_reply(router, envelope, {"ok": False, "error": "a control request is one message part"})
            continue
        if len(body[0]) > CONTROL_MAX_REQUEST:
            count_refusal(stats, RejectReason.CONTROL_TOO_LARGE, f"{len(body[0])} bytes")
            error = f"request of {len(body[0])} bytes is over the {CONTROL_MAX_REQUEST}-byte limit"
            send_reply(router, envelope, {"ok": False, "error": error})
            continue
        yield ControlRequest(envelope, body[0].decode("utf-8", "replace").strip(), user)


def send_reply(router: zmq.Socket[bytes], envelope: list[bytes], reply: dict[str, Any]) -> None:
    try:
        router.send_multipart([*envelope, json.dumps(reply).encode()], zmq.NOBLOCK)
    except zmq.ZMQError:  # the peer is gone or not reading: nobody is left to answer
        pass


def count_refusal(stats: DaemonStats, reason: RejectReason, detail: str) -> None:
    """Count a refused control request; log it at its 1st, 2nd, 4th... occurrence, the client's text escaped."""
    n = stats.reject_control(reason)
    if should_log(n):
        log.warning("control request refused (%s, %d so far): %s", reason.value, n, escaped(detail))
