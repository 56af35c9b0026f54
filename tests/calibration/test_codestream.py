"""The size a compressed frame declares, read from its header before it is decoded; and readers that refuse a file
whose claims are over the limits (or disagree) before allocating anything."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from calibration.codestream import CodestreamError, declared_size
from calibration.dicom import DicomError, DicomSizeError, iter_dicom_frames
from calibration.preprocessing import ImageLimits
from calibration.sources import SourceError, open_source
from tests.calibration.make_dicom import cine, claiming, encoded


def test_jpeg_and_jpeg2000_sizes_are_read_from_their_headers() -> None:
    assert declared_size(encoded(24, 16)) == (24, 16)
    assert declared_size(encoded(24, 16, "JPEG2000")) == (24, 16)  # a JP2 file: the box, then the codestream
    j2k = io.BytesIO()
    Image.fromarray(np.zeros((10, 30), np.uint8)).save(j2k, "JPEG2000", no_jp2=True)
    assert declared_size(j2k.getvalue()) == (30, 10)
    assert declared_size(claiming(encoded(16, 16), 65500, 65500)) == (65500, 65500)
    assert declared_size(b"\x00" * 64) is None  # RLE and the like carry no size of their own


def test_a_jpeg_cut_before_its_frame_header_is_an_error() -> None:
    with pytest.raises(CodestreamError, match="ends before a frame header"):
        declared_size(encoded(16, 16)[:20])


def test_a_header_over_the_limits_is_refused_before_any_frame_is_decoded(tmp_path: Path) -> None:
    """The 1 KB bomb: Rows and Columns of 65500 (4 GiB a frame), a thousand frames."""
    bomb = cine(tmp_path / "bomb.dcm", 65500, 65500, [claiming(encoded(16, 16), 65500, 65500)] * 1000)
    with pytest.raises(DicomError, match=r"65500x65500 pixels is over the limit of 8192x8192"):
        iter_dicom_frames(bomb)
    small = cine(tmp_path / "small.dcm", 16, 16, [encoded(16, 16)] * 3)
    with pytest.raises(DicomError, match="3 frames is over the limit of 2"):
        iter_dicom_frames(small, limits=ImageLimits(max_frames=2))
    with pytest.raises(DicomError, match="16x16 pixels is over the limit of 8x8"):
        iter_dicom_frames(small, limits=ImageLimits(max_width=8, max_height=8))


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEG2000Lossless])
def test_a_frame_whose_codestream_claims_more_than_the_header_is_refused(tmp_path: Path, syntax: str) -> None:
    """A small header with a codestream claiming 65500 x 65500: decoders allocate what the codestream says."""
    if syntax == JPEGBaseline8Bit:
        liar = claiming(encoded(16, 16), 65500, 65500)
    else:
        data = bytearray(encoded(16, 16, "JPEG2000"))
        siz = data.find(b"\xff\x51")
        struct.pack_into(">II", data, siz + 6, 65500, 65500)  # Xsiz, Ysiz
        liar = bytes(data)
    path = cine(tmp_path / "liar.dcm", 16, 16, [liar], syntax)
    with pytest.raises(DicomSizeError, match="declares 65500x65500 pixels but Columns x Rows are 16x16"):
        iter_dicom_frames(path)
    if syntax == JPEGBaseline8Bit:  # a lie in a later frame ends the file there: frames before it were fine
        later = cine(tmp_path / "later.dcm", 16, 16, [encoded(16, 16), liar])
        _, frames = iter_dicom_frames(later)
        assert next(frames).shape == (16, 16, 3)
        with pytest.raises(DicomSizeError):
            next(frames)


def test_ybr_frames_are_converted_to_rgb_in_slices_the_same_as_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (600, 40, 3)).astype(np.uint8)  # more rows than one conversion slice
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    path = cine(tmp_path / "tall.dcm", 600, 40, [buffer.getvalue()])
    _, frames = iter_dicom_frames(path)
    frame = next(frames)
    reference = pydicom.dcmread(path).pixel_array  # pydicom's own whole-frame conversion
    assert frame.shape == (600, 40, 3)
    assert np.array_equal(frame, reference)


def test_images_and_arrays_over_the_limits_are_refused_from_their_headers(tmp_path: Path) -> None:
    limits = ImageLimits(max_width=64, max_height=64)
    Image.fromarray(np.zeros((80, 100), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(SourceError, match="100x80 pixels is over the limit of 64x64; refused before decoding"):
        list(open_source(str(tmp_path / "wide.png"), limits=limits))
    # An .npy whose header claims a 60000 x 60000 cine, with no data behind it: refused by the header, not by memory.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10, 60000, 60000)})
    (tmp_path / "huge.npy").write_bytes(header.getvalue())
    with pytest.raises(SourceError, match=r"shape \(10, 60000, 60000\).*60000x60000 pixels is over the limit"):
        list(open_source(str(tmp_path / "huge.npy")))
    np.savez(tmp_path / "frames.npz", a=np.zeros((2, 100, 100), np.uint8))
    with pytest.raises(SourceError, match=r"frames.npz\[a\]: an array of shape \(2, 100, 100\)"):
        list(open_source(str(tmp_path / "frames.npz"), limits=limits))
