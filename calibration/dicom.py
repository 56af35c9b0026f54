"""DICOM files and cines to display-ready frames, as a scanner would show them.

Handles MONOCHROME1/2 (rescale slope/intercept and windowing where present), RGB, YBR_* (JPEG-compressed
included), PALETTE COLOR, multi-frame cines with their recorded frame rate, and pixel spacing. Output frames are
uint8, (H, W) gray or (H, W, 3) RGB. No patient identifier leaves this module: errors name the file only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, iter_pixels

from calibration.preprocessing import Color

_CM_UNITS = 3  # Physical Units X/Y Direction code for centimetres in ultrasound regions


class DicomError(ValueError):
    """A DICOM file that cannot be replayed; the message names the file and the reason."""


@dataclass(frozen=True)
class DicomInfo:
    path: Path
    modality: str
    photometric: str
    frames: int
    rows: int
    columns: int
    frame_time_ms: float | None
    spacing_mm: tuple[float, float] | None  # (x, y)

    @property
    def color(self) -> Color:
        return Color.GRAY if self.photometric.startswith("MONOCHROME") else Color.RGB


def _frame_time_ms(ds: Dataset) -> float | None:
    if ds.get("FrameTime"):
        return float(ds.FrameTime)
    if ds.get("FrameTimeVector"):
        vector = [float(v) for v in ds.FrameTimeVector][1:]  # the first entry is 0 by definition
        return float(np.mean(vector)) if vector else None
    for rate_tag in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = ds.get(rate_tag)
        if rate and float(rate) > 0:
            return 1000.0 / float(rate)
    return None


def _spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing, else a single ultrasound region in cm that fits the image; None when unknown or inconsistent."""
    if ds.get("PixelSpacing"):
        row, col = (float(v) for v in ds.PixelSpacing)
        return (col, row) if row > 0 and col > 0 else None
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        return None
    spacings = set()
    for r in regions:
        fits = r.get("RegionLocationMaxX1", 1 << 30) < ds.Columns and r.get("RegionLocationMaxY1", 1 << 30) < ds.Rows
        if r.get("PhysicalUnitsXDirection") == _CM_UNITS and r.get("PhysicalUnitsYDirection") == _CM_UNITS and fits:
            spacings.add((round(float(r.PhysicalDeltaX) * 10.0, 6), round(float(r.PhysicalDeltaY) * 10.0, 6)))
    # A region larger than the image means the pixels were resampled after the regions were written: don't guess.
    return spacings.pop() if len(spacings) == 1 else None


def read_info(path: str | Path) -> tuple[DicomInfo, Dataset]:
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise DicomError(f"{path}: not a DICOM file (no DICM preamble)") from None
    except Exception as exc:  # truncated or garbled files raise many unrelated types inside pydicom
        raise DicomError(f"{path}: cannot parse DICOM ({exc.__class__.__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no pixel data (not an image object)")
    try:
        info = DicomInfo(
            path=path,
            modality=str(ds.get("Modality", "")),
            photometric=str(ds.PhotometricInterpretation),
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            frame_time_ms=_frame_time_ms(ds),
            spacing_mm=_spacing_mm(ds),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomError(f"{path}: missing or invalid image attribute ({exc})") from None
    supported = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR") + tuple(
        p for p in (info.photometric,) if p.startswith("YBR_")
    )
    if info.photometric not in supported:
        raise DicomError(f"{path}: photometric interpretation {info.photometric} is not supported")
    return info, ds


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((values.astype(np.float32) - lo) * scale + 0.5, 0, 255).astype(np.uint8)


def _display_frame(arr: np.ndarray, ds: Dataset, info: DicomInfo, gray_range: tuple[float, float] | None) -> np.ndarray:
    if info.photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)  # 16-bit LUT entries
    if info.color is Color.RGB:  # RGB, or YBR already converted to RGB by iter_pixels
        if arr.dtype == np.uint8:
            return arr
        return _to_uint8(arr, 0, float((1 << int(ds.BitsStored)) - 1))
    values = apply_modality_lut(arr, ds)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        values = apply_voi_lut(values, ds, prefer_lut=False)
        center = float(np.atleast_1d(ds.WindowCenter)[0])
        width = float(np.atleast_1d(ds.WindowWidth)[0])
        lo, hi = center - width / 2.0, center + width / 2.0
    elif gray_range is not None:
        lo, hi = gray_range
    else:
        lo, hi = float(values.min()), float(values.max())
    out = _to_uint8(values, lo, hi)
    return 255 - out if info.photometric == "MONOCHROME1" else out


def iter_dicom_frames(path: str | Path) -> tuple[DicomInfo, Iterator[np.ndarray]]:
    """Header info now, display frames lazily (one decoded frame in memory at a time)."""
    info, ds = read_info(path)
    # Without a window, stretch gray data over the range its bits can hold (8-bit data is left as it is), so
    # that every frame of a cine maps the same way and the display does not flicker.
    gray_range: tuple[float, float] | None = None
    if info.color is Color.GRAY and ds.get("WindowCenter") is None and int(ds.BitsStored) <= 8:
        gray_range = (0.0, 255.0)

    def frames() -> Iterator[np.ndarray]:
        try:
            for arr in iter_pixels(ds):
                yield _display_frame(arr, ds, info, gray_range)
        except DicomError:
            raise
        except Exception as exc:  # decoder plugins raise their own types
            syntax = ds.file_meta.get("TransferSyntaxUID")
            name = syntax.name if syntax is not None else "unknown transfer syntax"
            raise DicomError(f"{info.path}: cannot decode pixel data ({name}): {exc}") from None

    return info, frames()
