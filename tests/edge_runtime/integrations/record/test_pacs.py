"""Records to a real PACS (Orthanc, started here on loopback): instances arrive intact, a PACS that is down
costs nothing (the spool holds them and sends them once it is back), and `edgert record` end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from pydicom import dcmread

from edge_runtime.daemon.config import PreviewConfig
from edge_runtime.daemon.server import Daemon
from edge_runtime.integrations.record import (
    PacsSender,
    PacsTarget,
    RecordError,
    Series,
    Spool,
    build_objects,
    request_capture,
)
from edge_runtime.sdk.sender import FrameSender
from tests.conftest import LOOPBACK, stream_frames, wait_until
from tests.edge_runtime.integrations.record.conftest import OrthancServer
from tests.edge_runtime.integrations.record.test_objects import frame, segmentation

ROOT = Path(__file__).resolve().parents[4]


def _stored(orthanc: OrthancServer) -> dict[str, bytes]:
    """SOP instance UID -> the file Orthanc holds, from its REST API."""
    files = {}
    for instance in orthanc.get("/instances"):
        data = orthanc.get(f"/instances/{instance}/file")
        files[str(dcmread(io.BytesIO(data)).SOPInstanceUID)] = data
    return files


@pytest.mark.slow
def test_instances_arrive_intact(orthanc: OrthancServer, tmp_path: Path) -> None:
    objects = build_objects(frame(), segmentation(), Series.new(None), 1)
    spool = Spool(tmp_path / "spool")
    for ds in objects:
        spool.put(ds)
    sender = PacsSender(PacsTarget.parse(orthanc.target), spool)
    assert sender.send_pending()
    assert spool.pending() == [] and sender.counts.sent == 3
    stored = _stored(orthanc)
    assert stored.keys() == {str(ds.SOPInstanceUID) for ds in objects}
    for ds in objects:
        back = dcmread(io.BytesIO(stored[str(ds.SOPInstanceUID)]))
        assert back.SOPClassUID == ds.SOPClassUID and back.PixelData == ds.PixelData  # pixels byte for byte
        assert back.ImageComments == ds.ImageComments


@pytest.mark.slow
def test_the_spool_keeps_records_while_the_pacs_is_down_and_sends_them_when_it_returns(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    orthanc.stop()
    spool = Spool(tmp_path / "spool")
    sender = PacsSender(PacsTarget.parse(orthanc.target), spool, retry_s=0.2, max_retry_s=0.5)
    sender.start()
    try:
        uids = set()
        for n in range(3):
            for ds in build_objects(frame(), segmentation(), Series.new(None), n + 1):
                spool.put(ds)
                uids.add(str(ds.SOPInstanceUID))
            sender.wake()
        wait_until(lambda: sender.counts.attempts_failed >= 2, timeout=15)
        assert len(spool.pending()) == 9 and sender.counts.sent == 0  # nothing lost, nothing sent
        orthanc.start()  # the PACS comes back: the spool drains by itself
        wait_until(lambda: not spool.pending(), timeout=30)
        assert set(_stored(orthanc)) == uids
    finally:
        sender.stop()


@pytest.mark.slow
def test_a_pacs_that_will_not_take_our_ae_title_keeps_the_records_spooled(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    for ds in build_objects(frame(), segmentation(), Series.new(None), 1):
        spool.put(ds)
    # a calling AE title this Orthanc does not accept stores from: it aborts the association at the first C-STORE
    stranger = PacsSender(PacsTarget.parse(orthanc.target, calling_ae="STRANGER"), spool)
    assert not stranger.send_pending()
    assert stranger.counts.last_error == "the association ended without a C-STORE status"
    assert _stored(orthanc) == {} and len(spool.pending()) == 3  # kept for when the PACS is configured
    assert PacsSender(PacsTarget.parse(orthanc.target), spool).send_pending()  # then they go out
    assert len(_stored(orthanc)) == 3


@pytest.mark.slow
def test_edgert_record_and_capture_end_to_end(
    orthanc: OrthancServer, start_daemon: Callable[..., Daemon], tmp_path: Path, zmq_ctx: zmq.Context
) -> None:
    daemon = start_daemon(preview=PreviewConfig(enabled=True, endpoint=LOOPBACK, max_side=4096))
    trigger = f"ipc://{tmp_path / 'trigger'}"
    record = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.cli", "record", "--results", daemon.endpoints["results"],
         "--pacs", orthanc.target, "--spool", str(tmp_path / "spool"), "--trigger", trigger, "--count", "2",
         "--json", str(tmp_path / "record.json")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    stop = threading.Event()
    stream_frames(FrameSender(daemon.endpoints["ingest"], context=zmq_ctx), stop)
    try:
        replies = []

        def captured() -> bool:
            try:
                reply = request_capture(trigger, timeout_s=5)
            except RecordError:  # the recorder's process is still starting (its imports take seconds on a busy CI)
                return False
            replies.append(reply)
            return bool(reply["ok"])

        wait_until(captured, timeout=20, interval=0.2)  # until the recorder has a current result
        daemon.stop()  # the AI goes offline: a capture now must be refused, never of a stale result
        refused = wait_until(lambda: (r := request_capture(trigger, timeout_s=5)) and not r["ok"] and r, timeout=10)
        assert "AI is" in refused["error"] or "old" in refused["error"]
        stop.set()
        first = next(r for r in replies if r["ok"])
        assert len(first["instances"]) == 3  # overlay SC, frame SC and SEG of a segmentation model
        wait_until(lambda: set(first["instances"]) <= set(_stored(orthanc)), timeout=30)
        for data in _stored(orthanc).values():
            ds = dcmread(io.BytesIO(data))
            assert (ds.Rows, ds.Columns) == (120, 160)
            assert daemon.status()["model"]["sha256"] in ds.ImageComments
    finally:
        stop.set()
        record.terminate()
        output = record.communicate(timeout=30)[0].decode()
    assert record.returncode == 0, output
    counts = json.loads((tmp_path / "record.json").read_text())
    assert counts["captures"] == 1 and counts["refused"] >= 1 and counts["sent"] == 3 and counts["spooled"] == 0
