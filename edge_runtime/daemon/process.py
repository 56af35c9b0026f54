"""`DaemonProcess`: `edgert serve` in a child process, as a service manager runs it; for the demo, benchmarks and
tests. It binds ephemeral loopback ports, and the endpoints come back through the ready file, which the daemon
writes only once every start-up step (self-test included) is done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_runtime.daemon.server import DaemonError
from edge_runtime.sdk.control import ControlClient

READY_TIMEOUT_S = 60.0


def wait_for_ready_file(
    path: Path, proc: subprocess.Popen[bytes], timeout_s: float = READY_TIMEOUT_S, log_path: Path | None = None
) -> dict[str, Any]:
    """The JSON a child process writes to `path` once it is ready; raise if it exits first or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:] if log_path else []
            raise DaemonError(f"process exited with status {proc.returncode}:\n  " + "\n  ".join(tail))
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:  # written but not yet complete
                data = None
            if isinstance(data, dict):
                return data
        time.sleep(0.05)
    raise DaemonError(f"not ready after {timeout_s:.0f} s" + (f" (log: {log_path})" if log_path else ""))


class DaemonProcess:
    """`edgert serve` in a child process on ephemeral loopback ports; stopped with SIGTERM like a service."""

    def __init__(
        self,
        package: Path,
        workdir: Path,
        log_path: Path,
        extra_args: Sequence[str] = (),
        source_root: Path | None = None,
    ) -> None:
        """`source_root`: run the daemon from another checkout of edgert (benchmarks compare versions this way);
        by default the one this module belongs to."""
        self.ready_file = workdir / "daemon-ready.json"
        self.ready_file.unlink(missing_ok=True)
        self.log_path = log_path
        root = source_root or Path(__file__).resolve().parents[2]  # a source checkout works without installing
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        cmd = [
            sys.executable, "-m", "edge_runtime.cli", "serve", "--model", str(package),
            "--ingest", "tcp://127.0.0.1:*", "--results", "tcp://127.0.0.1:*", "--control", "tcp://127.0.0.1:*",
            "--ready-file", str(self.ready_file), *extra_args,
        ]  # fmt: skip
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=root)
        self.endpoints: dict[str, str] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, str]:
        ready = wait_for_ready_file(self.ready_file, self.proc, timeout, self.log_path)
        self.endpoints = dict(ready["endpoints"])
        return self.endpoints

    def control(self, command: str, timeout_s: float = 2.0) -> dict[str, Any]:
        return ControlClient(self.endpoints["control"], timeout_s=timeout_s).request(command)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)
