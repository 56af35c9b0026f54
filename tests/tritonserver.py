"""A real Triton Inference Server for the tests: PyTriton's bundled `tritonserver`, serving a package's ONNX
(deploy/triton/serve_package.py), in a venv of Debian's own Python (PyTriton's Python-backend stub loads the
system libpython: under another build of Python the model fails to load).

The venv is `.venv-triton/` in the checkout (gitignored), made on first use (`.ci/run` makes it before the tests);
$EDGERT_PYTRITON_PYTHON names another interpreter that has nvidia-pytriton and onnxruntime. Without Debian's
python3-venv the tests fail with the command that installs it, never skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-triton"
SYSTEM_PYTHON = Path("/usr/bin/python3")
REQUIREMENTS = ("nvidia-pytriton==0.7.0", "onnxruntime", "numpy")
SERVE = ROOT / "deploy" / "triton" / "serve_package.py"


def pytriton_python() -> Path:
    """An interpreter with PyTriton, made once."""
    given = os.environ.get("EDGERT_PYTRITON_PYTHON")
    if given:
        return Path(given)
    python = VENV / "bin" / "python"
    if python.is_file():
        return python
    if not SYSTEM_PYTHON.is_file():
        pytest.fail(f"the Triton tests need Debian's {SYSTEM_PYTHON} (PyTriton's stub loads its libpython)")
    made = subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(VENV)], capture_output=True, text=True)
    if made.returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        pytest.fail(f"cannot make {VENV} ({made.stderr.strip()[-300:]}): apt-get install -y python3-venv")
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    if pip.returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        pytest.fail(f"cannot install {' '.join(REQUIREMENTS)} into {VENV}: {pip.stderr.strip()[-500:]}")
    return python


class TritonServer:
    """`tritonserver` (through PyTriton) serving one package on 127.0.0.1 ports; start, kill, start again."""

    def __init__(self, package: Path, grpc_port: int, http_port: int, metrics_port: int, *extra: str) -> None:
        self.package = package
        self.ports = (grpc_port, http_port, metrics_port)
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def start(self, timeout_s: float = 60.0, attempts: int = 2) -> TritonServer:
        """Start it and wait for its model to be ready. The model loads in about 3 s here; now and then (seen in CI
        and here, when a server was started again after a SIGKILL while another ran) tritonserver hangs before
        loading it and never recovers: that start is killed and made again, once, and the log says so."""
        for attempt in range(1, attempts + 1):
            if self._start_once(timeout_s):
                return self
            self.kill()
            self.log.append(f"--- attempt {attempt} of {attempts}: no model ready within {timeout_s:g} s")
        pytest.fail("tritonserver did not come up:\n" + "\n".join(self.log[-40:]))

    def _start_once(self, timeout_s: float) -> bool:
        grpc, http, metrics = self.ports
        cmd = [str(pytriton_python()), str(SERVE), str(self.package), "--grpc-port", str(grpc), "--http-port",
               str(http), "--metrics-port", str(metrics), *self.extra]  # fmt: skip
        self.proc = proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                            start_new_session=True)  # fmt: skip
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log = [*self.log[-200:], line.rstrip()]
                if line.startswith("ready "):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
        return True

    def kill(self) -> None:
        """SIGKILL to the whole group (PyTriton and its tritonserver): a server that dies, not one that stops."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
