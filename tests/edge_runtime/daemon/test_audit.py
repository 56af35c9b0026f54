"""The audit log's hash chain: every edit, insertion and deletion is found, across rotation and restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.daemon.audit import (
    GENESIS,
    MAX_TALLY_NAMES,
    AuditError,
    AuditEvent,
    AuditLog,
    AuditOptions,
    AuditWriter,
    Tally,
    chain_files,
    key_id,
    verify,
)
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[3]


def _log(path: Path, n: int, **options: object) -> AuditLog:
    log = AuditLog(AuditOptions(path, fsync=False, **options))  # type: ignore[arg-type]
    for i in range(n):
        log.record(AuditEvent.CONTROL, command="status", n=i)
    return log


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_a_fresh_log_verifies_from_the_first_record(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit.jsonl", 5)
    log.record(AuditEvent.STOP, counts={"frames_in": 3})
    log.close()
    found = verify(tmp_path / "audit.jsonl")
    assert found.ok and found.records == 6 and found.complete_history and found.ends_with_stop
    first = json.loads(_lines(tmp_path / "audit.jsonl")[0])
    assert first["prev"] == GENESIS and first["seq"] == 1 and first["event"] == "control"
    assert found.head == log.head and found.head_seq == 6


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [(lambda ls: ls[:2] + [ls[2].replace('"n":2', '"n":7')] + ls[3:], "record 3 was altered"),
     (lambda ls: ls[:2] + ls[3:], "does not follow"),  # a record deleted in the middle
     (lambda ls: ls[:3] + [ls[1]] + ls[3:], "does not follow"),  # a copy of a record inserted
     (lambda ls: ls[1:], "records before it were deleted"),  # the first record deleted
     (lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:], "does not follow"),  # two records swapped
     (lambda ls: ls[:2] + ["not json\n"] + ls[3:], "not an audit record"),
     (lambda ls: ls + ['{"event":"stop"}'], "incomplete")],
)  # fmt: skip
def test_tampering_is_found(tmp_path: Path, tamper: object, expected: str) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 6).close()
    path.write_text("".join(tamper(_lines(path))))  # type: ignore[operator]
    found = verify(path)
    assert not found.ok
    assert any(expected in p for p in found.problems), found.problems


def test_an_edited_record_with_a_recomputed_own_hash_still_breaks_the_next_link(tmp_path: Path) -> None:
    from edge_runtime.daemon.audit import _canonical, _digest

    path = tmp_path / "audit.jsonl"
    _log(path, 4).close()
    lines = _lines(path)
    record = json.loads(lines[1])
    record["command"] = "reload"
    record["hash"] = _digest(record)
    lines[1] = _canonical(record) + "\n"
    path.write_text("".join(lines))
    assert any("record 3 does not follow" in p for p in verify(path).problems)


def test_a_cut_off_end_is_found_against_the_recorded_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _log(path, 5)
    head = log.head
    log.close()
    assert verify(path, expected_head=head).ok
    path.write_text("".join(_lines(path)[:-1]))
    assert verify(path).ok  # the chain alone cannot see it...
    assert not verify(path, expected_head=head).ok  # ...the anchored head does


def test_rotation_keeps_the_chain_across_files_and_prunes_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _log(path, 200, max_bytes=4096, backups=3)
    log.close()
    files = chain_files(path)
    assert [f.name for f in files] == ["audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    assert all(f.stat().st_size <= 4096 for f in files)
    found = verify(path)
    assert found.ok and found.head_seq == log.seq
    assert not found.complete_history  # older files were pruned: the chain starts at a rotation record
    assert json.loads(_lines(files[0])[0])["event"] == "rotated"
    middle = files[1]
    middle.write_text("".join(_lines(middle)[:3] + _lines(middle)[4:]))  # a deletion inside a rotated file
    assert not verify(path).ok


def test_a_restarted_log_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 3).close()
    log = _log(path, 2)
    log.close()
    found = verify(path)
    assert found.ok and found.records == 5 and found.complete_history and log.seq == 5


def test_a_torn_or_altered_tail_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 3).close()
    path.write_text(path.read_text() + '{"seq":4')
    with pytest.raises(AuditError, match="incomplete"):
        AuditLog(AuditOptions(path))
    path.write_text("".join(_lines(path)[:2]) + _lines(path)[2].replace("status", "reload"))
    with pytest.raises(AuditError, match="does not verify"):
        AuditLog(AuditOptions(path))


def test_records_refuse_the_chain_fields_and_key_ids_are_short_hashes(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.jsonl", 0)
    with pytest.raises(ValueError, match="own fields"):
        log.record(AuditEvent.CONTROL, hash="x")
    log.close()
    assert len(key_id("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7")) == 16
    with pytest.raises(ValueError, match="max_bytes"):
        AuditOptions(tmp_path / "a", max_bytes=10)


def test_edgert_audit_verify_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 4).close()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_runtime.cli", "audit", "verify", str(path), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip

    ok = run("--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["records"] == 4
    path.write_text("".join(_lines(path)[:1] + _lines(path)[2:]))
    broken = run()
    assert broken.returncode == 4 and "BROKEN" in broken.stdout and "does not follow" in broken.stdout
    missing = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "audit", "verify", str(tmp_path / "none")],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert missing.returncode == 1 and "no such audit log" in missing.stderr


class _SlowLog(AuditLog):
    """A log on a disk that takes `delay` per record (an fsync on a slow card), or fails."""

    def __init__(self, options: AuditOptions, delay: float = 0.0, fail: bool = False) -> None:
        super().__init__(options)
        self.delay, self.fail = delay, fail

    def record(self, event: AuditEvent, **fields: object) -> str:
        time.sleep(self.delay)
        if self.fail:
            raise OSError(28, "No space left on device")
        return super().record(event, **fields)


def test_the_writer_never_makes_a_caller_wait_and_counts_what_it_drops(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(_SlowLog(AuditOptions(path, fsync=False, queue_size=4), delay=0.05))
    start = time.perf_counter()
    accepted = [writer.submit(AuditEvent.CONTROL, command="status", n=i) for i in range(50)]
    assert time.perf_counter() - start < 0.05  # 50 submits against a 50 ms disk: none waited for it
    assert 4 <= sum(accepted) <= 6 and writer.dropped == 50 - sum(accepted)
    writer.close()
    events = [json.loads(line) for line in _lines(path)]
    assert [e["n"] for e in events if e["event"] == "control"] == [i for i, ok in enumerate(accepted) if ok]
    assert events[-1]["event"] == "connections" and events[-1]["dropped"] == writer.dropped
    assert verify(path).ok


def test_counted_events_become_one_summary_a_period(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(AuditLog(AuditOptions(path, fsync=False, summary_s=0.2)))
    for _ in range(5000):  # a connect storm
        writer.count(Tally.OPENED, "ingest")
        writer.count(Tally.CLOSED, "ingest")
    for k in range(100):  # made-up client keys
        writer.count(Tally.REFUSED_KEYS, f"{k:016x}")
    writer.submit(AuditEvent.KEY_ALLOWED, key_id="a" * 16)
    assert writer.flush()
    wait_until(lambda: "connections" in path.read_text(), timeout=5)
    time.sleep(0.5)  # quiet periods write nothing
    writer.close()
    events = [json.loads(line) for line in _lines(path)]
    assert [e["event"] for e in events] == ["key_allowed", "connections"]
    summary = events[1]
    assert summary["opened"] == {"ingest": 5000} and summary["closed"] == {"ingest": 5000}
    assert len(summary["refused_keys"]) == MAX_TALLY_NAMES + 1 and summary["refused_keys"]["other"] == 100 - 64
    assert summary["dropped"] == 0 and summary["period_s"] == 0.2


def test_a_failing_disk_is_counted_and_reported_in_powers_of_two(tmp_path: Path) -> None:
    errors: list[str] = []
    writer = AuditWriter(_SlowLog(AuditOptions(tmp_path / "audit.jsonl", fsync=False), fail=True), errors.append)
    for i in range(9):
        writer.submit(AuditEvent.CONTROL, command="status", n=i)
    assert writer.flush()
    writer.close()
    assert writer.failures == 9 and len(errors) == 4  # the 1st, 2nd, 4th and 8th
    assert "No space left on device" in errors[0]
