"""sd_notify without a dependency: READY, WATCHDOG and STOPPING datagrams to $NOTIFY_SOCKET (Type=notify units)."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send one notification; False (and nothing sent) when not started by systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # "@" names an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True
