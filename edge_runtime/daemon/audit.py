"""A tamper-evident audit log: append-only JSON lines, each record chained to the one before it by sha256.

Each line is one JSON object with sorted keys and no spaces:

    {"event":"model_loaded","hash":"<sha256>","prev":"<hash of the record before>","seq":3,"time":"...",...}

`hash` is the sha256 of the same object without `hash`, written the same canonical way, and `prev` is the previous
record's `hash` (64 zeros for the very first record). So editing any byte of a record breaks its own hash, and
deleting or inserting a record breaks the next record's `prev` and the `seq` count. Rotation moves the full file to
`NAME.1` (and `.1` to `.2`, up to `backups`) and carries the chain on in a fresh file, whose first record is a
`rotated` event; `verify` reads the rotated files oldest first and checks the chain across them.

What a hash chain cannot show: the newest records cut off the end of the newest file, or a whole chain rewritten
by someone who can write the file. Anchor the head elsewhere for that: `edgert ctl status` reports it, and `verify
--head` checks a log against it. Records carry no patient data: key ids (a hash of a public key), model hashes,
command names, counts.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_runtime.core.errors import EdgertError, OptionError, should_log

GENESIS = "0" * 64
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class AuditError(EdgertError, RuntimeError):
    pass


class AuditEvent(str, enum.Enum):
    START = "start"  # the daemon started, with its configuration
    MODEL_LOADED = "model_loaded"  # name, version, sha256, backend
    RELOADED = "reloaded"  # a hot reload swapped in a model (sha256)
    RELOAD_REFUSED = "reload_refused"  # a reload that did not happen, and why
    CONTROL = "control"  # a control command, who asked (key id with CURVE) and whether it was answered ok
    CONNECTIONS = "connections"  # a periodic summary: connections opened and closed per socket, refused key ids
    KEY_ALLOWED = "key_allowed"  # CURVE: a client key in the allow-list (key id): authenticated, one by one
    STOP = "stop"  # a clean stop, with the frame counts
    ROTATED = "rotated"  # the first record of a file after rotation: the chain goes on from the previous file


def key_id(z85_public_key: str | bytes) -> str:
    """A short, stable name for a CURVE public key (in its Z85 text form, as in a `.key` file and ZeroMQ's
    User-Id): the first 16 hex digits of its sha256. Public, so safe to log; never applied to a secret."""
    text = z85_public_key.encode("ascii") if isinstance(z85_public_key, str) else z85_public_key
    return hashlib.sha256(text).hexdigest()[:16]


def _canonical(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _digest(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"}).encode()).hexdigest()


@dataclass(frozen=True)
class AuditOptions:
    path: Path
    max_bytes: int = 10 * 1024 * 1024  # rotate before a file grows past this
    backups: int = 10  # rotated files kept: NAME.1 (newest) .. NAME.<backups>
    fsync: bool = True  # each record reaches the disk before `record` returns (events are rare: not per frame)
    queue_size: int = 1024  # records waiting for the writer thread; beyond it a record is dropped and counted
    summary_s: float = 60.0  # how often counted events (connections, refused keys) are summed up in one record

    def __post_init__(self) -> None:
        if self.max_bytes < 4096 or self.backups < 1:
            raise OptionError("audit: max_bytes must be >= 4096 and backups >= 1")
        if self.queue_size < 1 or not 0.01 <= self.summary_s <= 86400:
            raise OptionError("audit: queue_size must be >= 1 and summary_s within 0.01..86400")


class AuditLog:
    """Appends chained records; continues the chain of an existing file. Thread-safe."""

    def __init__(self, options: AuditOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        options.path.parent.mkdir(parents=True, exist_ok=True)
        self.seq, self.head = _tail(options.path)
        self._file = open(options.path, "a", encoding="ascii")  # noqa: SIM115 - held for the log's life
        os.chmod(options.path, 0o640)

    def record(self, event: AuditEvent, **fields: Any) -> str:
        """Append one record; returns its hash. Field names must not clash with the chain's own."""
        if {"seq", "time", "event", "prev", "hash"} & fields.keys():
            raise ValueError("seq, time, event, prev and hash are the log's own fields")
        with self._lock:
            if self._file.closed:
                raise AuditError(f"{self.options.path}: the audit log is closed")
            record = self._chained(event, fields)
            line = _canonical(record) + "\n"
            if self._file.tell() + len(line) > self.options.max_bytes and self._file.tell() > 0:
                self._rotate()
                record = self._chained(event, fields)  # after the rotation record
                line = _canonical(record) + "\n"
            self._write(line, record)
            return self.head

    def _chained(self, event: AuditEvent, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The next record: `fields` with the chain's own fields, its hash computed last."""
        record = {
            **fields,
            "seq": self.seq + 1,
            "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "event": event.value,
            "prev": self.head,
        }
        record["hash"] = _digest(record)
        return record

    def _write(self, line: str, record: Mapping[str, Any]) -> None:
        self._file.write(line)
        self._file.flush()
        if self.options.fsync:
            os.fsync(self._file.fileno())
        self.seq, self.head = record["seq"], record["hash"]

    def _rotate(self) -> None:
        path, keep = self.options.path, self.options.backups
        self._file.close()
        for n in range(keep, 0, -1):
            if _rotated(path, n).exists():
                os.replace(_rotated(path, n), _rotated(path, n + 1))
        _rotated(path, keep + 1).unlink(missing_ok=True)
        os.replace(path, _rotated(path, 1))
        self._file = open(path, "a", encoding="ascii")  # noqa: SIM115
        os.chmod(path, 0o640)
        record = self._chained(AuditEvent.ROTATED, {"previous_file": _rotated(path, 1).name})
        self._write(_canonical(record) + "\n", record)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class Tally(str, enum.Enum):
    """What the writer counts instead of recording one by one: anyone can cause these, as often as they like."""

    OPENED = "opened"  # a connection accepted on a listening socket (by socket name), before any handshake
    CLOSED = "closed"
    REFUSED_KEYS = "refused_keys"  # CURVE: a client key not in the allow-list (by key id, never a secret)


MAX_TALLY_NAMES = 64  # distinct names kept per tally in one period; the rest are summed under "other"


class AuditWriter:
    """The audit log behind a bounded queue, written by a thread of its own.

    `submit` never blocks and never touches the disk, so no caller (the ingest thread, the authenticator) waits for
    an fsync: a full queue drops the record and counts it. Events that strangers can cause at will (connections,
    refused keys) are not records but counts (`count`), summed up in one `connections` record every `summary_s`
    and at `close`, so a connect storm costs the trail one record a period and cannot rotate the real history
    (model loads, reloads, allowed keys, control commands) out of it. A record that cannot be written (a full disk)
    is counted in `failures` and logged at the 1st, 2nd, 4th... failure; the caller goes on."""

    def __init__(self, log: AuditLog, on_error: Callable[[str], None] | None = None) -> None:
        self.log = log
        self._on_error = on_error
        self._queue: queue.Queue[_Item] = queue.Queue(log.options.queue_size)
        self._lock = threading.Lock()
        self._tally: dict[Tally, dict[str, int]] = {t: {} for t in Tally}
        self._period_dropped = 0
        self.dropped = 0  # records the queue had no room for
        self.failures = 0  # records the log could not write
        self._thread = threading.Thread(target=self._run, name="edgert-audit", daemon=True)
        self._thread.start()

    def submit(self, event: AuditEvent, **fields: Any) -> bool:
        """Queue one record; False when the queue was full (the record is dropped, counted)."""
        try:
            self._queue.put_nowait((event, fields))
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
                self._period_dropped += 1
            return False

    def count(self, tally: Tally, name: str) -> None:
        with self._lock:
            counts = self._tally[tally]
            if name not in counts and len(counts) >= MAX_TALLY_NAMES:
                name = "other"
            counts[name] = counts.get(name, 0) + 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record submitted so far is written (tests, `status`); False on timeout."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, last: AuditEvent | None = None, timeout: float = 5.0, **fields: Any) -> None:
        """Write what is queued, a last summary and then `last` (with `fields`; a clean stop), and close the log."""
        if self._thread.is_alive():
            try:
                self._queue.put(_Last(last, fields), timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        self.log.close()

    @property
    def seq(self) -> int:
        return self.log.seq

    @property
    def head(self) -> str:
        return self.log.head

    def status(self) -> dict[str, Any]:
        """The newest record and the counts (`ctl status`): kept elsewhere, it anchors `edgert audit verify --head`."""
        return {
            "path": str(self.log.options.path), "seq": self.seq, "head": self.head, "failures": self.failures,
            "dropped": self.dropped,
        }  # fmt: skip

    def _run(self) -> None:
        period = self.log.options.summary_s
        due = time.monotonic() + period
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                item = ()
            if isinstance(item, _Last):
                self._summarize(period)
                if item.event is not None:
                    self._write(item.event, item.fields)
                return
            if isinstance(item, threading.Event):
                item.set()
            elif item:
                self._write(*item)
            if time.monotonic() >= due:
                self._summarize(period)
                due = time.monotonic() + period

    def _summarize(self, period_s: float) -> None:
        with self._lock:
            tally = {t.value: counts for t, counts in self._tally.items() if counts}
            dropped, self._period_dropped = self._period_dropped, 0
            self._tally = {t: {} for t in Tally}
        if tally or dropped:
            self._write(AuditEvent.CONNECTIONS, {**tally, "dropped": dropped, "period_s": period_s})

    def _write(self, event: AuditEvent, fields: Mapping[str, Any]) -> None:
        try:
            self.log.record(event, **fields)
        except (AuditError, OSError, ValueError) as exc:
            self.failures += 1
            n = self.failures
            if should_log(n) and self._on_error is not None:
                self._on_error(f"cannot write {event.value} ({n} failures so far): {exc}")


@dataclass(frozen=True)
class _Last:
    event: AuditEvent | None
    fields: dict[str, Any]


_Item = tuple[AuditEvent, dict[str, Any]] | threading.Event | tuple[()] | _Last


def _rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _tail(path: Path) -> tuple[int, str]:
    """(seq, hash) of the newest record, from NAME or, when it is empty, the newest rotated file."""
    for candidate in (path, _rotated(path, 1)):
        if not candidate.exists() or candidate.stat().st_size == 0:
            continue
        with open(candidate, "rb") as f:
            f.seek(max(0, candidate.stat().st_size - 65536))
            data = f.read()
        if not data.endswith(b"\n"):
            raise AuditError(
                f"{candidate}: the last record is incomplete (a write cut short?); check it with `edgert audit "
                "verify` and move the file aside to start a new log"
            )
        last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            record = json.loads(last)
            if record["hash"] != _digest(record):
                raise ValueError("hash mismatch")
            return int(record["seq"]), str(record["hash"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(
                f"{candidate}: the last record does not verify; run `edgert audit verify {candidate}`"
            ) from None
    return 0, GENESIS


@dataclass
class Verification:
    """What `verify` found: `ok` when no problem; `problems` name the file and line of each."""

    files: list[Path]
    records: int = 0
    first_seq: int | None = None
    head_seq: int = 0
    head: str = GENESIS
    complete_history: bool = False  # the chain starts at the first record ever (not at a pruned rotation)
    ends_with_stop: bool = False  # the newest record is a clean stop (else the daemon runs, or the tail is cut)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def chain_files(path: Path) -> list[Path]:
    """NAME's rotated files, oldest first, then NAME itself."""
    rotated = []
    n = 1
    while _rotated(path, n).exists():
        rotated.append(_rotated(path, n))
        n += 1
    return [*reversed(rotated), path]


def verify(path: str | Path, expected_head: str | None = None, max_problems: int = 20) -> Verification:
    """Check the chain of NAME and its rotated files: every record's own hash, every `prev`, every `seq`.

    An edited record fails its hash; a deleted or inserted one breaks the next `prev` or `seq`; records deleted
    from the start of the oldest file leave a chain that starts neither at the first record ever nor at a
    rotation. `expected_head`, a hash recorded elsewhere (`edgert ctl status`), also catches a cut-off end."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"{path}: no such audit log")
    result = Verification(files=chain_files(path))
    prev: str | None = None
    seq: int | None = None
    last_event = None

    def problem(where: str, text: str) -> None:
        if len(result.problems) < max_problems:
            result.problems.append(f"{where}: {text}")

    for file in result.files:
        with open(file, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            problem(f"{file.name}, end", "the last record is incomplete")
        for number, raw in enumerate(data.splitlines(), start=1):
            where = f"{file.name}, line {number}"
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
                own, previous, this_seq = record["hash"], record["prev"], record["seq"]
                if not (isinstance(own, str) and isinstance(previous, str) and type(this_seq) is int):
                    raise ValueError("hash, prev and seq have the wrong types")
            except (ValueError, KeyError) as exc:
                problem(where, f"not an audit record ({str(exc)[:60]})")
                prev, seq = None, None  # the chain cannot be followed across an unreadable line
                continue
            if _digest(record) != own or not _HEX64.match(own):
                problem(where, f"record {this_seq} was altered (its hash does not match its content)")
            if prev is None and seq is None and result.records == 0:
                result.first_seq = this_seq
                if previous == GENESIS and this_seq == 1:
                    result.complete_history = True
                elif record.get("event") != AuditEvent.ROTATED.value:
                    problem(where, f"the log starts at record {this_seq}, which is not the first nor a rotation: "
                            "records before it were deleted")  # fmt: skip
            else:
                if prev is not None and previous != prev:
                    problem(where, f"record {this_seq} does not follow the record before it (deleted or inserted)")
                if seq is not None and this_seq != seq + 1:
                    problem(where, f"record {this_seq} follows record {seq} (records deleted or inserted)")
            prev, seq = own, this_seq
            last_event = record.get("event")
            result.records += 1
            result.head_seq, result.head = this_seq, own
    result.ends_with_stop = last_event == AuditEvent.STOP.value
    if expected_head is not None and expected_head != result.head:
        problem("end", f"the newest record is {result.head[:16]}..., not the expected head {expected_head[:16]}...")
    return result
