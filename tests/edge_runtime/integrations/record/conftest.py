"""A real PACS for the record tests: Orthanc from the system's packages, on loopback ports of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_ports

ORTHANC = shutil.which("Orthanc")
AE_TITLE = "ORTHANC"


class OrthancServer:
    """Orthanc on its own ports and storage; `start` and `stop` may be called again (the storage stays)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.http_port, self.dicom_port = free_ports(2)
        self.process: subprocess.Popen[bytes] | None = None
        config = {
            "Name": "edgert-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": AE_TITLE,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            # Orthanc 1.10 cannot bind its DICOM port to loopback only: accept stores from our AE at 127.0.0.1 only
            "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True,
            "DicomModalities": {"edgert": ["EDGERT", "127.0.0.1", 104]},
        }  # fmt: skip
        (folder / "orthanc.json").write_text(json.dumps(config))

    @property
    def target(self) -> str:
        return f"{AE_TITLE}@127.0.0.1:{self.dicom_port}"

    def start(self) -> None:
        assert ORTHANC is not None
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"Orthanc did not start: see {self.folder / 'orthanc.log'}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    if ORTHANC is None:  # fail, never skip: the PACS tests are the point of `edgert record`
        pytest.fail("needs Orthanc, the real PACS these tests store to: apt-get install -y orthanc")
    (tmp_path / "orthanc").mkdir()
    server = OrthancServer(tmp_path / "orthanc")
    server.start()
    yield server
    server.stop()
