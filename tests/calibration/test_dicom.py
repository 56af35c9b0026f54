"""DICOM reading on pydicom's bundled real files (ultrasound cines, palette, JPEG 2000, CT/MR) and broken ones."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from calibration.dicom import DicomError, iter_dicom_frames, read_info
from calibration.preprocessing import Color, DicomOutput
from tests.calibration import make_dicom


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


def frames_of(path: Path, output: DicomOutput = DicomOutput.DISPLAY8) -> list[np.ndarray]:
    return list(iter_dicom_frames(path, output)[1])


def built(name: str, tmp_path: Path) -> Path:
    builder = {**make_dicom.RENDERED, **make_dicom.REFUSED}[name]
    return make_dicom.write(builder(), tmp_path / f"{name}.dcm")


def test_windowed_mr_keeps_its_grey_levels() -> None:
    """The VOI window is applied once: MR_small keeps hundreds of grey levels instead of a near binary picture."""
    (frame,) = frames_of(bundled("MR_small.dcm"))
    assert len(np.unique(frame)) > 150
    assert np.mean((frame == 0) | (frame == 255)) < 0.1


def test_one_bit_image_spans_the_display_range() -> None:
    (frame,) = frames_of(bundled("liver_1frame.dcm"))
    assert set(np.unique(frame)) == {0, 255}


def test_signed_8bit_with_rescale_is_not_clipped(tmp_path: Path) -> None:
    ds = make_dicom.signed8_rescale()
    stored = ds.pixel_array.astype(int)
    (frame,) = frames_of(built("signed8_rescale", tmp_path))
    np.testing.assert_array_equal(frame, stored + 128)  # the range the bits can hold, shifted: nothing saturates


def test_unsigned_8bit_with_rescale_is_shown_as_stored(tmp_path: Path) -> None:
    ds = make_dicom.unsigned8_rescale()
    (frame,) = frames_of(built("unsigned8_rescale", tmp_path))
    np.testing.assert_array_equal(frame, ds.pixel_array)


def test_cine_without_window_keeps_brightness_changes_between_frames(tmp_path: Path) -> None:
    frames = frames_of(built("brightening_cine", tmp_path))
    means = [float(f.mean()) for f in frames]
    assert means[1] == pytest.approx(2 * means[0], rel=0.02) and means[2] == pytest.approx(2 * means[1], rel=0.02)
    assert [int(f.max()) for f in frames] == [64, 128, 255]


def test_enhanced_multiframe_takes_rescale_window_and_spacing_per_frame(tmp_path: Path) -> None:
    info, frames_iter = iter_dicom_frames(built("enhanced_per_frame", tmp_path))
    plain, doubled, narrow = list(frames_iter)
    assert info.spacing_mm == pytest.approx((0.25, 0.5))  # (x, y) from the shared Pixel Measures
    # The same stored frame: slope 2 makes frame 2 brighter, frame 3's narrow window saturates most pixels.
    assert doubled.mean() > plain.mean() * 1.4
    assert np.mean(narrow == 255) > 0.7 and np.mean(plain == 255) < 0.01


def test_sigmoid_window_follows_the_standard(tmp_path: Path) -> None:
    ds = make_dicom.sigmoid_window()
    (frame,) = frames_of(built("sigmoid_window", tmp_path))
    expected = 255.0 / (1.0 + np.exp(-4.0 * (ds.pixel_array.astype(float) - 2000.0) / 1000.0))
    assert np.abs(frame - expected).max() <= 1.0


def test_voi_lut_without_a_window_is_applied(tmp_path: Path) -> None:
    ds = make_dicom.voi_lut_only()
    (frame,) = frames_of(built("voi_lut_only", tmp_path))
    expected = np.sqrt(ds.pixel_array / 1023.0) * 255.0  # the LUT is a square root onto 12 bits
    assert np.abs(frame - expected).max() <= 1.5


def test_declared_smallest_and_largest_values_set_the_range(tmp_path: Path) -> None:
    (frame,) = frames_of(built("declared_range", tmp_path))
    # Stored 100..900 in a declared 0..1000: the picture is not stretched to 0..255.
    assert int(frame.min()) == round(100 / 1000 * 255) and int(frame.max()) == round(900 / 1000 * 255)


def test_float_pixel_data_is_rendered(tmp_path: Path) -> None:
    first, second = frames_of(built("float_pixels", tmp_path))
    assert first.dtype == np.uint8 and first.min() == 0 and first.max() == 255  # -2.5 .. 7.5 over both frames
    assert int(second.max()) == round((2.5 + 2.5) / 10.0 * 255)


def test_float_frame_with_nan_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgert.dicom"):
        frames = frames_of(built("float_pixels_nan", tmp_path))
    assert len(frames) == 2
    assert "frame 2 of 3 skipped" in caplog.text and "NaN" in caplog.text


@pytest.mark.parametrize("photometric", ["YBR_ICT", "YBR_RCT", "YBR_PARTIAL_422"])
def test_uncompressed_ybr_that_only_codecs_define_is_refused(photometric: str, tmp_path: Path) -> None:
    with pytest.raises(DicomError, match=f"{photometric} pixel data in Explicit VR Little Endian cannot be shown"):
        frames_of(built(f"uncompressed_{photometric.lower()}", tmp_path))


def test_display16_is_the_same_picture_at_16_bits() -> None:
    (eight,) = frames_of(bundled("MR_small.dcm"))
    (sixteen,) = frames_of(bundled("MR_small.dcm"), DicomOutput.DISPLAY16)
    assert sixteen.dtype == np.uint16
    assert np.abs(sixteen / 257.0 - eight).max() <= 0.51


def test_stored_output_keeps_raw_values(tmp_path: Path) -> None:
    path = built("bits12_in_16", tmp_path)
    (frame,) = frames_of(path, DicomOutput.STORED)
    np.testing.assert_array_equal(frame, make_dicom.bits12_in_16().pixel_array)
    assert frame.dtype == np.uint16


def test_stored_output_refuses_signed_values() -> None:
    with pytest.raises(DicomError, match="signed 16-bit and cannot be sent as unsigned 16-bit; use display8"):
        read_info(bundled("MR_small.dcm"), DicomOutput.STORED)


def test_truncated_native_cine_plays_its_whole_frames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    full = built("brightening_cine", tmp_path)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="edgert.dicom"):
        info, frames = iter_dicom_frames(cut)
        played = list(frames)
    assert info.frames == len(played) == 2
    assert "truncated: 2 of 3 frames are whole" in caplog.text
    # One range for the frames that exist: the second frame is still twice as bright as the first.
    assert int(played[1].max()) == 255 and played[1].mean() == pytest.approx(2 * played[0].mean(), rel=0.02)


def test_truncated_jpeg_cine_plays_its_whole_frames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = bundled("examples_ybr_color.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="edgert.dicom"):
        info, frames = iter_dicom_frames(cut)
        played = list(frames)
    assert 0 < len(played) == info.frames < 30
    assert f"truncated: {len(played)} of 30 frames are whole" in caplog.text
    for a, b in zip(played, frames_of(bundled("examples_ybr_color.dcm"))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, keep", [("CT_small.dcm", 600), ("examples_ybr_color.dcm", 2000)])
def test_file_cut_in_its_header_says_truncated(name: str, keep: int, tmp_path: Path) -> None:
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(bundled(name).read_bytes()[:keep])
    with pytest.raises(DicomError, match=r"cut\.dcm: truncated"):
        frames_of(cut)


def test_single_frame_cut_in_its_pixels_says_truncated() -> None:
    with pytest.raises(DicomError, match=r"MR_truncated\.dcm: truncated: pixel data has 8130 of 8192 bytes"):
        frames_of(bundled("MR_truncated.dcm"))


def test_file_without_preamble_is_read_as_dicom(tmp_path: Path) -> None:
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(bundled("CT_small.dcm").read_bytes()[132:])  # no preamble, no 'DICM'
    np.testing.assert_array_equal(frames_of(bare)[0], frames_of(bundled("CT_small.dcm"))[0])


def test_pydicom_warnings_are_reported_once_without_values(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A pydicom warning reaches the log once, through our logger, with quoted values redacted; nothing of it
    goes to stderr through pydicom's own logger or the warnings module, and the refusal names the attribute."""
    ds = make_dicom.brightening_cine()
    ds.NumberOfFrames = 999999
    path = make_dicom.write(ds, tmp_path / "quoted.dcm")
    path.write_bytes(path.read_bytes().replace(b"999999", b"SECRET"))  # an IS value pydicom quotes as invalid
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    keep = Keep()
    root.addHandler(keep)
    try:
        with pytest.raises(DicomError, match="NumberOfFrames is not a positive integer") as refused:
            frames_of(path)
    finally:
        root.removeHandler(keep)
    ours = [r.getMessage() for r in records if r.name == "edgert.dicom"]
    assert not [r for r in records if r.name.startswith("pydicom")]
    assert len(ours) == len(set(ours)) >= 1 and any("Invalid value for VR IS" in m for m in ours)
    assert all("SECRET" not in m for m in ours) and "SECRET" not in str(refused.value)
    assert "SECRET" not in capfd.readouterr().err


def test_missing_decoder_names_the_transfer_syntax_and_the_extra() -> None:
    """Without the `dicom` extra's plugins (blocked here in a fresh interpreter), JPEG-LS cannot be decoded."""
    script = (
        "import sys\n"
        "for name in ('libjpeg', 'pylibjpeg', 'jpeg_ls', 'gdcm', 'openjpeg'): sys.modules[name] = None\n"
        "from calibration.dicom import DicomError, read_info\n"
        f"try: read_info({str(bundled('MR_small_jpeg_ls_lossless.dcm'))!r})\n"
        "except DicomError as exc: print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert "JPEG-LS Lossless Image Compression needs a decoder plugin" in out.stdout, out.stdout + out.stderr
    assert "edgert[dicom]" in out.stdout


def test_decoders_extra_decodes_jpeg_ls_jpeg_lossless_and_12_bit_jpeg() -> None:
    """With the extra installed (CI installs it), these syntaxes decode and match the lossless original."""
    pytest.importorskip("libjpeg", reason="the dicom extra (pylibjpeg-libjpeg) is not installed")
    (reference,) = frames_of(bundled("MR_small.dcm"))
    for name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        (frame,) = frames_of(bundled(name))
        np.testing.assert_array_equal(frame, reference)
    (twelve,) = frames_of(bundled("JPGExtended.dcm"))  # JPEG Extended, 12-bit
    assert twelve.shape == (1024, 256) and len(np.unique(twelve)) > 100
    (lossless,) = frames_of(bundled("SC_rgb_jpeg_gdcm.dcm"))  # JPEG Lossless, Non-Hierarchical
    assert lossless.shape == (100, 100, 3)


def test_compressed_cine_without_offset_table_gives_the_same_frames(tmp_path: Path) -> None:
    """Frames are indexed once at open (no walk over all earlier fragments per frame); the pictures are unchanged."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(bundled("examples_ybr_color.dcm"))
    ds.PixelData = encapsulate(list(generate_frames(ds.PixelData, number_of_frames=30)), has_bot=False)
    ds.save_as(tmp_path / "no_bot.dcm")
    for a, b in zip(frames_of(tmp_path / "no_bot.dcm"), frames_of(bundled("examples_ybr_color.dcm")), strict=True):
        np.testing.assert_array_equal(a, b)
