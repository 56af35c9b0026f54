"""Archives from outside (a model package as .zip or .tar), unpacked to disk within a budget.

Nothing is unpacked into memory. The member count and the sizes an archive declares are checked before a byte is
written, and the bytes written are counted as they go, so an archive that lies about its sizes (a zip bomb) stops
at the budget too. Only regular files and folders are unpacked: links, devices, absolute paths and `..` are
refused. `unpack_to_temp` removes its folder on every failure; its caller removes it when done.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from edge_runtime.core.errors import EdgertError
from edge_runtime.core.protocol import Limits

TEMP_PREFIX = "edgert-pkg-"  # the temporary folder of an unpacked archive


def file_sha256(path: Path) -> str:
    """A file's sha256 in hex, read in 1 MiB chunks: a model is hashed before (and without) being read into memory."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ArchiveError(EdgertError, ValueError):
    """An archive that cannot be unpacked, or not within the limits; the message names the archive."""


def unpack(archive: Path, target: Path, limits: Limits) -> None:
    """Unpack to disk within the limits: the member count and the sizes the archive declares are checked first, and
    every byte written is counted, so an archive that lies about its sizes stops at the budget too."""
    budget = limits.max_package_bytes

    def too_many(count: int) -> None:
        if count > limits.max_package_members:
            raise ArchiveError(f"{archive}: {count} members, more than the limit of {limits.max_package_members}")

    def too_large(size: int) -> None:
        if size > budget:
            raise ArchiveError(
                f"{archive}: unpacks to more than the limit of {budget} bytes ([limits] max_package_bytes)"
            )

    def copy(source: Any, dest: Path) -> int:
        written = 0
        with dest.open("wb") as out:
            while chunk := source.read(1 << 20):
                written += len(chunk)
                too_large(written + copied)
                out.write(chunk)
        return written

    def inside(member: str) -> Path:
        """Where a member goes: refused if absolute or with '..', for zip and tar alike (tarfile.data_filter would do
        for tar, but it needs Python 3.10.12+, and JetPack 6's 3.10 may be older)."""
        name = PurePosixPath(member.replace("\\", "/"))
        if not member or name.is_absolute() or ".." in name.parts or PureWindowsPath(member).drive:
            raise ArchiveError(f"{archive}: member {member[:100]!r} points outside the package")
        return target.joinpath(*name.parts)

    copied = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            too_many(len(members))
            too_large(sum(m.file_size for m in members))
            for member in members:
                dest = inside(member.filename)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as source:
                    copied += copy(source, dest)
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            count = 0
            for entry in tf:  # streamed: a tar's member list is only known by reading it
                count += 1
                too_many(count)
                if entry.isdir():
                    continue
                if not entry.isfile():
                    raise ArchiveError(f"{archive}: member {entry.name[:100]!r} is not a regular file or folder")
                dest = inside(entry.name)  # only regular files: modes, links and devices never reach the disk
                dest.parent.mkdir(parents=True, exist_ok=True)
                too_large(copied + entry.size)
                data = tf.extractfile(entry)
                assert data is not None  # a regular file
                copied += copy(data, dest)
        return
    raise ArchiveError(f"{archive}: not a folder, .zip or .tar model package")


def unpack_to_temp(archive: Path, limits: Limits) -> Path:
    """A new temporary folder holding the unpacked archive; removed again on any failure."""
    target = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    try:
        unpack(archive, target, limits)
        return target
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, OSError, EOFError, ValueError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"{archive}: cannot unpack ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
