"""Packages from outside: archives unpacked within a budget to disk and always removed, cards bounded."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from edge_runtime.core.archives import TEMP_PREFIX
from edge_runtime.core.package import PackageError, load_package, open_package, parse_card
from edge_runtime.core.protocol import Limits
from tests.models.make_models import card


def leftovers() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"))


def zipped(folder: Path, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in folder.iterdir():
            zf.write(f, f"pkg/{f.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


def test_an_archive_is_unpacked_only_inside_the_block(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    before = leftovers()
    archive = zipped(tiny_models["seg_tiny"], tmp_path / "seg.zip")
    with open_package(archive) as package:
        assert package.onnx_path.is_file() and package.root.name == "pkg"
    assert not package.root.exists() and leftovers() == before


def test_a_zip_bomb_is_refused_at_the_budget_and_leaves_nothing(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """64 MiB of zeros (64 KiB compressed) against a 16 MiB budget: refused from the sizes the archive declares."""
    before = leftovers()
    bomb = zipped(tiny_models["seg_tiny"], tmp_path / "bomb.zip", {"pkg/padding.bin": bytes(64 << 20)})
    limits = Limits(max_package_bytes=16 << 20)
    with pytest.raises(PackageError, match="unpacks to more than the limit of 16777216 bytes"):
        with open_package(bomb, limits):
            pass
    with pytest.raises(PackageError, match="more than the limit"):
        load_package(bomb, limits)
    assert leftovers() == before


def test_an_archive_lying_about_its_sizes_stops_at_the_budget(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """A member whose declared size is small but whose data is large: the bytes written are counted."""
    bomb = zipped(tiny_models["seg_tiny"], tmp_path / "liar.zip", {"pkg/padding.bin": bytes(8 << 20)})
    data = bytearray(bomb.read_bytes())
    with zipfile.ZipFile(bomb) as zf:
        info = zf.getinfo("pkg/padding.bin")
    # patch the uncompressed size in the central directory (and the local header) to 1 KiB
    for offset in (info.header_offset + 22, data.rfind(b"PK\x01\x02") + 24):
        data[offset : offset + 4] = (1024).to_bytes(4, "little")
    bomb.write_bytes(bytes(data))
    before = leftovers()
    with pytest.raises(PackageError):  # the budget, or zipfile's own size check: never 8 MiB past the budget
        with open_package(bomb, Limits(max_package_bytes=1 << 20)):
            pass
    assert leftovers() == before


def test_members_count_paths_and_links_are_checked(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    many = zipped(tiny_models["seg_tiny"], tmp_path / "many.zip", {f"pkg/f{i}": b"" for i in range(70)})
    with pytest.raises(PackageError, match="members, more than the limit of 64"):
        load_package(many)
    escape = zipped(tiny_models["seg_tiny"], tmp_path / "escape.zip", {"../evil.txt": b"x"})
    with pytest.raises(PackageError, match="points outside the package"):
        load_package(escape)
    linked = tmp_path / "link.tar"
    with tarfile.open(linked, "w") as tf:
        tf.add(tiny_models["seg_tiny"], "pkg")
        link = tarfile.TarInfo("pkg/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    before = leftovers()
    with pytest.raises(PackageError, match="not a regular file or folder"):
        load_package(linked)
    assert leftovers() == before
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tf:
        tf.add(tiny_models["seg_tiny"], "pkg")
    with open_package(good) as package:
        assert package.card.name == "seg-tiny"


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("name", ["../evil.txt", "pkg/../../evil.txt", "/etc/evil.txt", "..\\evil.txt", "C:evil.txt"])
def test_a_member_outside_the_package_is_refused_from_zip_and_tar_alike(
    tiny_models: dict[str, Path], tmp_path: Path, kind: str, name: str
) -> None:
    """One rule for both formats, on every Python edgert supports (tarfile.data_filter needs 3.10.12+)."""
    archive = tmp_path / f"escape.{kind}"
    if kind == "zip":
        zipped(tiny_models["seg_tiny"], archive, {name: b"x"})
    else:
        with tarfile.open(archive, "w") as tf:
            tf.add(tiny_models["seg_tiny"], "pkg")
            member = tarfile.TarInfo(name)
            member.size = 1
            tf.addfile(member, io.BytesIO(b"x"))
    before = leftovers()
    with pytest.raises(PackageError, match="points outside the package"):
        load_package(archive)
    assert leftovers() == before
    assert not (tmp_path / "evil.txt").exists()


def test_a_failing_card_in_an_archive_leaves_nothing(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(tiny_models["seg_tiny"], folder)
    data = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**data, "onnx_sha256": "0" * 64}))
    before = leftovers()
    with pytest.raises(PackageError, match="does not match the card's"):
        load_package(zipped(folder, tmp_path / "bad.zip"))
    assert leftovers() == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "seg\nINFO forged line"}, r"\.name: holds a control character"),
        ({"version": "v" * 200}, r"\.version: 200 characters, at most 128"),
        ({"description": "d" * 5000}, r"\.description: 5000 characters, at most 4096"),
    ],
)
def test_card_texts_are_bounded_and_printable(change: dict, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        parse_card({**card("seg-tiny"), **change})


def test_card_labels_and_input_are_bounded() -> None:
    base = card("seg-tiny")
    out = base["output"]
    with pytest.raises(PackageError, match=r"labels\[1\]: 10000000 characters, at most 64"):
        parse_card({**base, "output": {**out, "labels": ["bg", "x" * 10_000_000, "c"]}})
    many = [f"c{i}" for i in range(1001)]
    with pytest.raises(PackageError, match="1001 labels, at most 1000"):
        parse_card({**base, "output": {**out, "labels": many, "colors": [[0, 0, 0]] * 1001}})
    huge = {**base["input"], "shape": [1, 1, 60000, 60000]}
    with pytest.raises(PackageError, match=r"input.shape: 60000x60000 is over the limit of 8192x8192"):
        parse_card({**base, "input": huge})


def test_a_converted_card_says_its_precision_and_verdict_and_its_note_is_checked() -> None:
    base = card("seg-tiny")
    assert parse_card(base).precision == "fp32" and parse_card(base).conversion is None
    note = {"precision": "int8", "from_sha256": "ab" * 32, "gate": "passed: worst class 0.99", "tool": "edgert 0.1"}
    converted = parse_card({**base, "version": "0.0.1+int8", "conversion": note})
    assert converted.precision == "int8" and converted.identity == "seg-tiny 0.0.1+int8 (int8)"
    assert converted.conversion is not None and converted.conversion.gate.startswith("passed")
    with pytest.raises(PackageError, match=r"conversion\.precision: expected one of fp32, fp16, int8, got 'int4'"):
        parse_card({**base, "conversion": {**note, "precision": "int4"}})
    with pytest.raises(PackageError, match=r"conversion\.gate: holds a control character"):
        parse_card({**base, "conversion": {**note, "gate": "passed\nINFO forged"}})
    with pytest.raises(PackageError, match=r"conversion\.from_sha256: expected a 64-character hex digest"):
        parse_card({**base, "conversion": {**note, "from_sha256": "abc"}})
