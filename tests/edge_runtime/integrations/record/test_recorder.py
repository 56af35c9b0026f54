"""The recorder under hostile input (issue 32, item 9): any bytes on its trigger socket, a spool at its budget,
temporary files left by a killed write."""

from __future__ import annotations

import json
import random
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from edge_runtime.daemon.config import PreviewConfig
from edge_runtime.daemon.server import Daemon
from edge_runtime.integrations.record import (
    Recorder,
    RecordError,
    RecordOptions,
    Series,
    Spool,
    SpoolBudget,
    build_objects,
)
from edge_runtime.integrations.record.recorder import MAX_REQUEST_PARTS, request_capture
from edge_runtime.sdk.sender import FrameSender
from tests.conftest import LOOPBACK, free_ports, stream_frames, wait_until
from tests.edge_runtime.integrations.record.test_objects import frame, segmentation


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[Recorder, str]]:
    """A recorder with no daemon behind it: every capture is refused (the AI is offline), but answered."""
    trigger = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    results = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    rec = Recorder(RecordOptions(results=results, spool=tmp_path / "spool", trigger=trigger))
    stop = threading.Event()
    thread = threading.Thread(target=rec.run, args=(stop,), daemon=True)
    rec.start()
    thread.start()
    yield rec, trigger
    stop.set()
    thread.join(5)
    rec.stop()
    assert not thread.is_alive()


def _ask(ctx: zmq.Context, endpoint: str, parts: list[bytes], kind: int = zmq.REQ, wait_ms: int = 3000) -> dict | None:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(parts)
        if not sock.poll(wait_ms):
            return None
        reply: dict = json.loads(sock.recv_multipart()[-1])
        return reply
    finally:
        sock.close()


def test_the_trigger_socket_survives_multipart_garbage_and_raw_bytes(
    recorder: tuple[Recorder, str], zmq_ctx: zmq.Context
) -> None:
    rec, trigger = recorder
    assert request_capture(trigger, timeout_s=5)["ok"] is False  # answered: nothing to record, the AI is offline
    two_part = _ask(zmq_ctx, trigger, [b"capture", b"capture"])  # a REP socket could never answer this again
    assert two_part is not None and two_part["ok"] is False and "2 request parts" in two_part["error"]
    assert _ask(zmq_ctx, trigger, [b"\xff" * 10, b"x"], kind=zmq.DEALER, wait_ms=200) is None  # not REQ: dropped
    assert _ask(zmq_ctx, trigger, [b""] + [b""] * (MAX_REQUEST_PARTS + 5), kind=zmq.DEALER, wait_ms=200) is None
    unknown = _ask(zmq_ctx, trigger, [b"\x00garbage\n"])
    assert unknown is not None and "unknown request" in unknown["error"]
    host, port = trigger.removeprefix("tcp://").rsplit(":", 1)
    rng = random.Random(7)
    for _ in range(100):  # random TCP bytes, then ZMTP-looking junk
        try:
            with socket.create_connection((host, int(port)), timeout=1) as raw:
                raw.sendall(rng.randbytes(rng.randint(1, 400)) if rng.random() < 0.5 else b"\xff" + bytes(8) + b"\x7f")
        except OSError:
            pass
    reply = wait_until(lambda: _ask(zmq_ctx, trigger, [b"capture"]), timeout=10)  # still serving
    assert reply["ok"] is False and "AI is" in reply["error"]
    assert rec.bad_requests >= 4


def test_stale_temporary_files_are_removed_when_the_spool_opens(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    spool = Spool(folder)
    kept = spool.put(build_objects(frame(), segmentation(), Series.new(None), 1)[0])
    (folder / ".00000000000000000001-1.2.3.dcm.tmp").write_bytes(b"")  # a write killed before its rename
    (folder / ".00000000000000000002-1.2.4.dcm.tmp").write_bytes(b"DICM" * 100)
    again = Spool(folder)
    assert again.stale_removed == 2
    assert sorted(p.name for p in folder.iterdir()) == [kept.name]
    assert again.pending() == [kept]


def test_the_spool_budget(tmp_path: Path) -> None:
    objects = build_objects(frame(), segmentation(), Series.new(None), 1)
    spool = Spool(tmp_path / "spool", SpoolBudget(max_files=4, max_bytes=10**9))
    assert spool.room_for(3, 1000) is None
    for ds in objects:
        spool.put(ds)
    assert spool.usage().files == 3 and spool.usage().bytes > 0
    assert "3 files of 4" in (spool.room_for(3, 1000) or "")
    tight = Spool(tmp_path / "spool", SpoolBudget(max_bytes=spool.usage().bytes + 10))
    assert "bytes of" in (tight.room_for(1, 11) or "") and tight.room_for(1, 10) is None
    with pytest.raises(RecordError):
        SpoolBudget(max_files=0)


@pytest.mark.slow
def test_a_full_spool_refuses_new_captures_and_keeps_the_ones_it_holds(
    start_daemon: Callable[..., Daemon], tmp_path: Path, zmq_ctx: zmq.Context
) -> None:
    """No PACS at all (the worst outage): the first capture (3 objects) fits a budget of 5 files, the next ones are
    refused with the reason, counted, and the spool holds exactly the first capture's files."""
    daemon = start_daemon(preview=PreviewConfig(enabled=True, endpoint=LOOPBACK, max_side=4096))
    rec = Recorder(RecordOptions(results=daemon.endpoints["results"], spool=tmp_path / "spool", trigger=None,
                                 spool_budget=SpoolBudget(max_files=5)))  # fmt: skip
    stop = threading.Event()
    stream_frames(FrameSender(daemon.endpoints["ingest"], context=zmq_ctx), stop)
    rec.start()
    try:
        first = wait_until(lambda: (r := rec.try_capture())["ok"] and r, timeout=20, interval=0.2)
        spooled = sorted(rec.spool.folder.glob("*.dcm"))
        assert len(spooled) == len(first["instances"]) == 3
        for _ in range(5):
            reply = rec.try_capture()
            assert reply["ok"] is False and "spool is full" in reply["error"]
        assert rec.spool_full == 5 and rec.captures == 1
        assert sorted(rec.spool.folder.glob("*.dcm")) == spooled  # nothing dropped, nothing added
        assert not list(rec.spool.folder.glob(".*.tmp"))
    finally:
        stop.set()
        rec.stop()
