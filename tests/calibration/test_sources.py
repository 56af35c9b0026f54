from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from calibration.dicom import DicomError
from calibration.preprocessing import Color
from calibration.sources import SourceError, SyntheticSource, open_source


def test_synthetic_source_with_options() -> None:
    src = open_source("synthetic:frames=5,size=64x96,seed=3,fps=15")
    assert isinstance(src, SyntheticSource)
    frames = list(src)
    assert len(frames) == 5
    assert frames[0].pixels.shape == (64, 96) and frames[0].color is Color.GRAY
    assert frames[0].frame_interval_s == pytest.approx(1 / 15)
    assert [f.meta["frame"] for f in frames] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "spec", ["synthetic:frames=x", "synthetic:colour=red", "synthetic:frames=0", "synthetic:size=8x8"]
)
def test_bad_synthetic_options(spec: str) -> None:
    with pytest.raises(SourceError):
        list(open_source(spec))


def test_dicom_file_source_metadata_has_no_identifiers() -> None:
    src = open_source(get_testdata_file("examples_ybr_color.dcm"))
    first = next(iter(src))
    assert first.frame_interval_s == pytest.approx(0.033333)
    assert set(first.meta) == {"source", "modality", "frames", "frame"}


def test_folder_skips_unreadable_files_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copy(get_testdata_file("examples_rgb_color.dcm"), tmp_path / "1.dcm")
    shutil.copy(get_testdata_file("ExplVR_BigEnd.dcm"), tmp_path / "2.dcm")
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        frames = list(open_source(str(tmp_path)))
    assert [f.pixels.shape for f in frames] == [(240, 320, 3), (60, 80, 3)]
    assert "notes.txt" in caplog.text


def test_missing_and_unusable_sources(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "missing.dcm"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty"):
        open_source(str(tmp_path / "empty"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.bin").write_bytes(b"\0" * 10)
    with pytest.raises(SourceError, match="no readable DICOM frames"):
        list(open_source(str(tmp_path / "junk")))
    bad = tmp_path / "bad.dcm"
    bad.write_text("garbage")
    with pytest.raises(DicomError, match="bad.dcm"):
        open_source(str(bad))
