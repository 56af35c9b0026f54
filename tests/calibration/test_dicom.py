"""DICOM reading on pydicom's bundled real files (ultrasound cines, palette, JPEG 2000, CT/MR) and broken ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from calibration.dicom import DicomError, iter_dicom_frames, read_info
from calibration.preprocessing import Color


def bundled(name: str) -> Path:
    path = get_testdata_file(name)
    assert path, f"pydicom test file {name} missing"
    return Path(path)


def test_jpeg_ybr_ultrasound_cine() -> None:
    info, frames = iter_dicom_frames(bundled("examples_ybr_color.dcm"))
    assert (info.modality, info.photometric, info.frames) == ("US", "YBR_FULL_422", 30)
    assert info.frame_time_ms == pytest.approx(33.333)
    assert info.color is Color.RGB
    decoded = list(frames)
    assert len(decoded) == 30 and decoded[0].shape == (240, 320, 3) and decoded[0].dtype == np.uint8
    # Converted to RGB: a gray ultrasound image has nearly equal channels (raw YBR would have chroma near 128).
    assert np.abs(decoded[0][..., 0].astype(int) - decoded[0][..., 2]).mean() < 5
    assert not np.array_equal(decoded[0], decoded[15])  # frames differ: it's a cine
    # Its ultrasound region is larger than the image (it was resampled): spacing must not be guessed.
    assert info.spacing_mm is None


@pytest.mark.parametrize(
    "name, shape",
    [
        ("examples_rgb_color.dcm", (240, 320, 3)),
        ("examples_palette.dcm", (350, 800, 3)),
        ("examples_jpeg2k.dcm", (480, 640, 3)),
        ("ExplVR_BigEnd.dcm", (60, 80, 3)),
    ],
)
def test_color_ultrasound_files(name: str, shape: tuple[int, ...]) -> None:
    info, frames = iter_dicom_frames(bundled(name))
    (frame,) = list(frames)
    assert frame.shape == shape and frame.dtype == np.uint8 and info.color is Color.RGB
    assert frame.max() > 0


def test_ct_rescale_and_window_and_spacing() -> None:
    info, frames = iter_dicom_frames(bundled("CT_small.dcm"))
    (frame,) = list(frames)
    assert info.spacing_mm == pytest.approx((0.661468, 0.661468))
    assert frame.dtype == np.uint8 and frame.shape == (128, 128)
    assert frame.min() == 0 and frame.max() == 255  # mapped to the display range, not wrapped int16


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    src = bundled("MR_small.dcm")
    (normal,) = list(iter_dicom_frames(src)[1])
    ds = pydicom.dcmread(src)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted_path = tmp_path / "mono1.dcm"
    ds.save_as(inverted_path)
    (inverted,) = list(iter_dicom_frames(inverted_path)[1])
    np.testing.assert_array_equal(inverted, 255 - normal)


def test_not_dicom(tmp_path: Path) -> None:
    junk = tmp_path / "scan.dcm"
    junk.write_bytes(b"hello, I am not a DICOM file" * 10)
    with pytest.raises(DicomError, match=r"scan\.dcm: not a DICOM file"):
        read_info(junk)


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_truncated_cine_fails_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "cut.dcm"
    data = bundled("examples_ybr_color.dcm").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomError, match=r"cut\.dcm"):
        _, frames = iter_dicom_frames(broken)
        list(frames)


def test_no_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / "nopixels.dcm"
    ds.save_as(path)
    with pytest.raises(DicomError, match="no pixel data"):
        read_info(path)


def test_errors_carry_no_patient_identifiers(tmp_path: Path) -> None:
    src = bundled("CT_small.dcm")
    ds = pydicom.dcmread(src)
    ds.PatientName = "Doe^Jane"
    del ds.PixelData
    path = tmp_path / "anon.dcm"
    ds.save_as(path)
    with pytest.raises(DicomError) as info:
        read_info(path)
    assert "Doe" not in str(info.value)


def test_folder_copy_is_readable(tmp_path: Path) -> None:
    shutil.copy(bundled("examples_rgb_color.dcm"), tmp_path / "a.dcm")
    info, frames = iter_dicom_frames(tmp_path / "a.dcm")
    assert len(list(frames)) == info.frames == 1
