"""C-STORE to a PACS through a local spool: nothing recorded is lost while the PACS is down.

Every object is written to the spool folder first (a temporary name, then an atomic rename), and only removed once
the PACS has answered its C-STORE with success. A sender thread drains the spool oldest first, one association per
attempt; when the PACS cannot be reached, or answers "out of resources", it waits and tries again, doubling the wait
up to `max_retry_s`. An object the PACS refuses outright (a failure status other than out of resources) moves to
`refused/` in the spool, is counted and logged by SOP instance UID, and never blocks the rest. A restart picks up
whatever is still spooled.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread

from edge_runtime.core.errors import should_log
from edge_runtime.integrations.record.objects import RecordError

log = logging.getLogger("edgert.record")

_TARGET = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")
_OUT_OF_RESOURCES = range(0xA700, 0xA800)  # worth trying again later


@dataclass(frozen=True)
class PacsTarget:
    """Where records go: the PACS's AE title, host and port, and the title we call as."""

    host: str
    port: int
    called_ae: str = "ANY-SCP"
    calling_ae: str = "EDGERT"
    timeout_s: float = 10.0

    @classmethod
    def parse(cls, text: str, calling_ae: str = "EDGERT") -> PacsTarget:
        """'AE@HOST:PORT', e.g. 'ORTHANC@127.0.0.1:4242'."""
        match = _TARGET.match(text)
        if not match or not 0 < int(match["port"]) < 65536:
            raise RecordError(f"PACS '{text}': expected AE_TITLE@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        return cls(match["host"], int(match["port"]), match["ae"], calling_ae)

    def __post_init__(self) -> None:
        for title in (self.called_ae, self.calling_ae):
            if not 0 < len(title) <= 16 or not title.isascii() or "\\" in title:
                raise RecordError(f"AE title {title!r}: 1 to 16 ASCII characters, no backslash")


@dataclass(frozen=True)
class SpoolBudget:
    """What the spool may hold, refused/ included: while the PACS is down, captures are refused (counted) once
    it is full. Nothing spooled is ever dropped to make room."""

    max_bytes: int = 1024**3
    max_files: int = 10_000

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_files <= 0:
            raise RecordError("the spool budget (bytes and files) must be positive")


@dataclass(frozen=True)
class SpoolUsage:
    files: int
    bytes: int


class Spool:
    """A folder of DICOM files waiting for the PACS, named so that sorting them gives the order they came in.

    A file is written under a temporary name and renamed once complete; temporary files left by a process killed
    mid-write are removed when the spool opens (they were never acknowledged to anyone)."""

    def __init__(self, folder: Path, budget: SpoolBudget = SpoolBudget()) -> None:
        self.folder = folder
        self.budget = budget
        self.refused_folder = folder / "refused"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stale_removed = 0
        for stale in folder.glob(".*.tmp"):
            try:
                stale.unlink()
                self.stale_removed += 1
            except OSError as exc:
                log.warning("cannot remove a stale temporary file in the spool: %s", exc.__class__.__name__)
        if self.stale_removed:
            log.warning("removed %d temporary file(s) left in the spool by an interrupted write", self.stale_removed)

    def usage(self) -> SpoolUsage:
        """Files and bytes held now, refused/ included."""
        files = total = 0
        for folder in (self.folder, self.refused_folder):
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # sent and removed meanwhile
                        continue
                    files += 1
        return SpoolUsage(files, total)

    def room_for(self, files: int, nbytes: int) -> str | None:
        """None when `files` more files of `nbytes` in all fit the budget, else why not."""
        used = self.usage()
        if used.files + files > self.budget.max_files:
            return f"the spool is full: {used.files} files of {self.budget.max_files}"
        if used.bytes + nbytes > self.budget.max_bytes:
            return f"the spool is full: {used.bytes} bytes of {self.budget.max_bytes}"
        return None

    @staticmethod
    def encode(ds: Dataset) -> bytes:
        """A dataset as the bytes of its DICOM file (Part 10), so its size is known before it is spooled."""
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    def put(self, ds: Dataset) -> Path:
        return self.put_encoded(str(ds.SOPInstanceUID), self.encode(ds))

    def put_encoded(self, sop_instance_uid: str, data: bytes) -> Path:
        name = f"{time.time_ns():020d}-{sop_instance_uid}.dcm"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        final = self.folder / name
        os.replace(tmp, final)
        return final

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))

    def refuse(self, path: Path) -> None:
        self.refused_folder.mkdir(exist_ok=True)
        os.replace(path, self.refused_folder / path.name)


@dataclass
class SendCounts:
    sent: int = 0
    refused: int = 0  # moved to refused/: the PACS will not take them
    attempts_failed: int = 0  # attempts that ended without reaching the PACS, or with it out of resources
    last_error: str | None = None
    sent_uids: list[str] = field(default_factory=list)  # the most recent, for logs and tests (the last 1000)


class PacsSender:
    """The thread that drains a spool to a PACS; `wake` after adding to the spool."""

    def __init__(self, target: PacsTarget, spool: Spool, retry_s: float = 1.0, max_retry_s: float = 30.0) -> None:
        self.target = target
        self.spool = spool
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.counts = SendCounts()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="edgert-pacs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        wait = self.retry_s
        self._wake.set()  # whatever a previous run left in the spool goes first
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set() and self.spool.pending():
                if self.send_pending():
                    wait = self.retry_s
                    continue
                if self._stop.wait(wait):  # the PACS is down or busy: try again later, less and less often
                    return
                wait = min(wait * 2, self.max_retry_s)

    def send_pending(self) -> bool:
        """One association: send what is spooled, oldest first. False when the PACS could not take them now."""
        from pynetdicom import AE

        pending = self.spool.pending()
        if not pending:
            return True
        ae = AE(ae_title=self.target.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.target.timeout_s
        datasets: list[tuple[Path, Dataset]] = []
        for path in pending[:64]:  # at most 128 presentation contexts in one association: 2 per SOP class
            try:
                datasets.append((path, dcmread(path)))
            except Exception as exc:  # a spool file that does not read back: set it aside, never block on it
                log.error(
                    "spooled file %s does not read back (%s): moved to refused/", path.name, exc.__class__.__name__
                )
                self.spool.refuse(path)
                self.counts.refused += 1
        for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
            ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        assoc = ae.associate(self.target.host, self.target.port, ae_title=self.target.called_ae)
        if not assoc.is_established:
            return self._failed(f"no association with {self.target.called_ae}@{self.target.host}:{self.target.port}")
        try:
            for path, ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if "Status" in status else None
                if code is None:
                    return self._failed("the association ended without a C-STORE status")
                if code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # success, or success with a warning
                    path.unlink()
                    with self._lock:
                        self.counts.sent += 1
                        self.counts.sent_uids = [*self.counts.sent_uids[-999:], str(ds.SOPInstanceUID)]
                elif code in _OUT_OF_RESOURCES:
                    return self._failed(f"the PACS is out of resources (status {code:#06x})")
                else:
                    log.error("PACS refused %s with status %#06x: moved to refused/", ds.SOPInstanceUID, code)
                    self.spool.refuse(path)
                    with self._lock:
                        self.counts.refused += 1
            return True
        finally:
            if assoc.is_established:
                assoc.release()

    def _failed(self, why: str) -> bool:
        with self._lock:
            self.counts.attempts_failed += 1
            self.counts.last_error = why
            n = self.counts.attempts_failed
        if should_log(n):  # 1st, 2nd, 4th...: bounded logging while the PACS stays down
            log.warning(
                "PACS: %s; %d objects spooled, will retry (%d failed attempts)", why, len(self.spool.pending()), n
            )
        return False
