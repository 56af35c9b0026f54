"""`ControlClient`: ask a running daemon for its status or stats, check its health, or swap its model.

The control socket speaks one JSON request and one JSON reply per exchange (docs/PROTOCOL.md). Each call uses a fresh
REQ socket, so a daemon restart or a lost reply never wedges the client. A daemon that does not answer in time
raises `DaemonUnavailable`; one that refuses raises `ControlError` with its reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zmq

from edge_runtime.core.errors import ControlError, DaemonUnavailable, EndpointError
from edge_runtime.sdk.security import ClientKeys, HandshakeWatch

STATUS_TIMEOUT_S = 2.0
RELOAD_TIMEOUT_S = 60.0  # a reload loads, checks, warms up and self-tests the new model before answering


def reload_request(package: str | Path) -> dict[str, Any]:
    """The control request that swaps the daemon's model for `package` (resolved: the daemon checks real paths)."""
    return {"cmd": "reload", "package": str(Path(package).resolve())}


class ControlClient:
    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5557",
        *,
        keys: ClientKeys | None = None,
        timeout_s: float = STATUS_TIMEOUT_S,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.keys = keys
        self.timeout_s = timeout_s
        self._ctx = context or zmq.Context.instance()

    def request(self, request: str | dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        """Send one request (a command name or a JSON object) and return the reply; raise if the daemon refuses."""
        reply = self.exchange(request, timeout_s)
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error", "the daemon refused the request")))
        return reply

    def _silence(self, wait: float, watch: HandshakeWatch) -> str:
        said = f"no answer from the daemon at {self.endpoint} within {wait:g} s"
        refusal = watch.refusal()
        return f"{said}: {refusal}" if refusal else said

    def exchange(self, request: str | dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        """Send one request and return the reply as it is, `ok` false included."""
        wait = self.timeout_s if timeout_s is None else timeout_s
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.REQ)
        with sock:
            sock.setsockopt(zmq.LINGER, 0)
            if self.keys is not None:
                self.keys.apply(sock)
            watch = HandshakeWatch(sock, self.keys)
            try:
                try:
                    sock.connect(self.endpoint)
                except zmq.ZMQError as exc:
                    raise EndpointError(
                        f"cannot connect to the daemon's control endpoint {self.endpoint}: {exc}"
                    ) from None
                sock.setsockopt(zmq.SNDTIMEO, int(wait * 1000))  # a refused handshake can leave no peer to take it
                try:
                    sock.send_string(request if isinstance(request, str) else json.dumps(request))
                except zmq.Again:
                    raise DaemonUnavailable(self._silence(wait, watch)) from None
                if not sock.poll(int(wait * 1000)):
                    raise DaemonUnavailable(self._silence(wait, watch))
                raw = sock.recv()
            finally:
                watch.close()
        try:
            reply = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ControlError(f"the reply from {self.endpoint} is not JSON") from None
        if not isinstance(reply, dict):
            raise ControlError(f"the reply from {self.endpoint} is not a JSON object")
        return reply

    def status(self) -> dict[str, Any]:
        """State, model, endpoints and counters (see docs/OPERATIONS.md)."""
        return self.request("status")

    def stats(self) -> dict[str, Any]:
        return self.request("stats")

    def healthy(self) -> tuple[bool, str]:
        """(True, "ready") when the daemon answers and is ready; else False and the state or the reason."""
        try:
            reply = self.exchange("status")
        except DaemonUnavailable as exc:
            return False, str(exc)
        state = str(reply.get("state", reply.get("error", "unknown")))
        return bool(reply.get("ok")) and state == "ready", state

    def reload(self, package: str | Path, timeout_s: float = RELOAD_TIMEOUT_S) -> dict[str, Any]:
        """Swap the model for `package` (a path the daemon can read, inside its allowed folders)."""
        return self.request(reload_request(package), timeout_s)
