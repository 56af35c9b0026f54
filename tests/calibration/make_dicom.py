"""Small DICOM files for the cases pydicom does not ship: signed 8-bit with rescale, sigmoid and LINEAR_EXACT windows,
VOI and modality LUTs, enhanced multi-frame objects with per-frame functional groups, float pixel data, a cine that
brightens, invalid YBR combinations. Each builder returns a data set; `write` saves it as a standard file.

Run as a script to write them all into a folder: `python tests/calibration/make_dicom.py OUT_DIR`.
"""

from __future__ import annotations

import io
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


def image(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", stored: int | None = None) -> Dataset:
    """A data set holding `pixels`: (H, W) gray, (N, H, W) gray frames, or (..., 3) color, native little endian."""
    pixels = np.asarray(pixels)
    color = photometric not in ("MONOCHROME1", "MONOCHROME2")
    frames = pixels.shape[0] if pixels.ndim == (4 if color else 3) else 1
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.PatientName = "Doe^Jane"  # never to appear in any output
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if color else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixels.dtype.kind == "f":
        ds.BitsAllocated = 32
        ds.FloatPixelData = pixels.astype("<f4").tobytes()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PARAMETRIC_MAP
        return ds
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def encoded(width: int, height: int, fmt: str = "JPEG") -> bytes:
    """A small flat RGB image compressed as `fmt` (JPEG, JPEG2000)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def claiming(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header claims another size (the pixels stay those of the small image)."""
    out = bytearray(data)
    sof = out.find(b"\xff\xc0")
    struct.pack_into(">HH", out, sof + 5, height, width)
    return bytes(out)


def cine(path: Path, rows: int, columns: int, fragments: list[bytes], syntax: str = JPEGBaseline8Bit) -> Path:
    """An encapsulated multi-frame file whose header says rows x columns and whose frames are `fragments` (which may
    claim another size: the DICOM bombs of the hostile-input tests and benchmarks/attack_files.py)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID, "US"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, len(fragments)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp(rows: int = 16, cols: int = 24, lo: float = 0, hi: float = 1, dtype: str = "uint16") -> np.ndarray:
    ramp = np.linspace(lo, hi, rows * cols).reshape(rows, cols)
    return (ramp if np.dtype(dtype).kind == "f" else ramp.round()).astype(dtype)


def signed8_rescale() -> Dataset:
    ds = image(_ramp(lo=-128, hi=127, dtype="int8"))
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    return ds


def unsigned8_rescale() -> Dataset:
    ds = image(_ramp(lo=0, hi=255, dtype="uint8"))
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "1000"
    return ds


def sigmoid_window() -> Dataset:
    ds = image(_ramp(lo=0, hi=4000), stored=12)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 2000, 1000, "SIGMOID"
    return ds


def linear_exact_window() -> Dataset:
    ds = image(_ramp(lo=-1000, hi=1000, dtype="int16"))
    ds.RescaleSlope, ds.RescaleIntercept = 1, -24
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40, 400, "LINEAR_EXACT"
    return ds


def two_windows_monochrome1() -> Dataset:
    ds = image(_ramp(lo=0, hi=4095), photometric="MONOCHROME1", stored=12)
    ds.WindowCenter, ds.WindowWidth = [1500, 3000], [1000, 200]  # the first is the default view
    return ds


def voi_lut_only() -> Dataset:
    ds = image(_ramp(lo=0, hi=1023), stored=10)
    item = Dataset()
    item.LUTDescriptor = [1024, 0, 12]
    item.add_new(0x00283006, "US", [int(v) for v in np.round(np.sqrt(np.arange(1024) / 1023) * 4095)])  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    return ds


def modality_lut() -> Dataset:
    ds = image(_ramp(lo=0, hi=255, dtype="uint8"))
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "OD"
    item.add_new(0x00283006, "US", [int(v) for v in np.arange(256) ** 2])  # LUT Data
    ds.ModalityLUTSequence = Sequence([item])
    return ds


def declared_range() -> Dataset:
    ds = image(_ramp(lo=100, hi=900), stored=12)
    ds.SmallestImagePixelValue, ds.LargestImagePixelValue = 0, 1000
    return ds


def brightening_cine() -> Dataset:
    """16-bit frames without a window; each frame is twice as bright as the one before."""
    base = _ramp(lo=0, hi=500)
    return image(np.stack([base, base * 2, base * 4]).astype(np.uint16))


def enhanced_per_frame() -> Dataset:
    """Enhanced multi-frame: the same stored frame three times, each with its own rescale and window."""
    stored = _ramp(lo=0, hi=2000)
    ds = image(np.stack([stored] * 3))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.25]
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    groups = []
    for slope, center, width in ((1, 1000, 2000), (2, 1000, 2000), (1, 500, 200)):
        group = Dataset()
        rescale = Dataset()
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = slope, 0, "US"
        group.PixelValueTransformationSequence = Sequence([rescale])
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        group.FrameVOILUTSequence = Sequence([voi])
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    return ds


def enhanced_shared_only() -> Dataset:
    ds = image(np.stack([_ramp(lo=0, hi=3000)] * 2), photometric="MONOCHROME1")
    shared = Dataset()
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = 1500, 1000, "SIGMOID"
    shared.FrameVOILUTSequence = Sequence([voi])
    rescale = Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept = 1, -500
    shared.PixelValueTransformationSequence = Sequence([rescale])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    return ds


def float_pixels() -> Dataset:
    return image(np.stack([_ramp(lo=-2.5, hi=7.5, dtype="float32"), _ramp(lo=0, hi=2.5, dtype="float32")]))


def float_pixels_nan() -> Dataset:
    frames = np.stack([_ramp(lo=0, hi=1, dtype="float32")] * 3)
    frames[1, 3, 4] = np.nan
    return image(frames)


def bits12_in_16() -> Dataset:
    return image(_ramp(lo=10, hi=3000), stored=12)


def ybr(photometric: str) -> Callable[[], Dataset]:
    def build() -> Dataset:
        return image(np.full((8, 8, 3), 128, np.uint8), photometric=photometric)

    build.__name__ = f"uncompressed_{photometric.lower()}"
    return build


RENDERED: dict[str, Callable[[], Dataset]] = {
    f.__name__: f
    for f in (
        signed8_rescale,
        unsigned8_rescale,
        sigmoid_window,
        linear_exact_window,
        two_windows_monochrome1,
        voi_lut_only,
        modality_lut,
        declared_range,
        brightening_cine,
        enhanced_per_frame,
        enhanced_shared_only,
        float_pixels,
        bits12_in_16,
    )
}
REFUSED: dict[str, Callable[[], Dataset]] = {
    b.__name__: b for b in (ybr("YBR_ICT"), ybr("YBR_RCT"), ybr("YBR_PARTIAL_422"), float_pixels_nan)
}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "built-dicom")
    out.mkdir(parents=True, exist_ok=True)
    for name, builder in {**RENDERED, **REFUSED}.items():
        print(write(builder(), out / f"{name}.dcm"))
