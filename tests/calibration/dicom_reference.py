"""An independent rendering of DICOM images, built from pydicom's own LUT functions, to check ours against.

Gray: `apply_modality_lut`, then `apply_voi_lut` (windows preferred over a VOI LUT, as ours), whose output range
is the one pydicom documents: for a window, the stored range passed through the rescale or modality LUT; for a
VOI LUT, 0 .. 2**bits - 1. That range is mapped onto [0, 1], then MONOCHROME1 is inverted. Enhanced multi-frame
objects are flattened per frame (functional groups over the top level) before pydicom's functions see them.
Frames without a VOI transform use the rule our module documents (declared Smallest/Largest values, else the
nominal range for 8 bits or fewer, else the measured range of all frames), through pydicom's modality function.
Color: the decoder's RGB output, scaled from its bit depth; PALETTE COLOR through `apply_color_lut`.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

_FLOAT_PIXELS = ("FloatPixelData", "DoubleFloatPixelData")


def _flatten(ds: Dataset, index: int) -> Dataset:
    """Frame `index` as a classic single-frame data set: functional group values copied to the top level."""
    flat = copy.copy(ds)
    groups = []
    if ds.get("SharedFunctionalGroupsSequence"):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    if ds.get("PerFrameFunctionalGroupsSequence"):
        groups.append(ds.PerFrameFunctionalGroupsSequence[index])
    for group in groups:  # shared first, so the frame's own group wins
        for sequence in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if group.get(sequence):
                for elem in group[sequence][0]:
                    flat[elem.tag] = copy.deepcopy(elem)
    return flat


def _windowed_range(ds: Dataset) -> tuple[float, float]:
    """pydicom's apply_windowing output range (its documented y_min, y_max)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1)
    bits = int(ds.BitsStored)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        lo, hi = (
            lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
            hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
        )
    return float(lo), float(hi)


def _has_window(ds: Dataset) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _modality_endpoints(ds: Dataset, lo: float, hi: float) -> tuple[float, float]:
    ends = apply_modality_lut(np.array([lo, hi], dtype=np.int64), ds).astype(np.float64)
    return float(ends.min()), float(ends.max())


def _no_voi_range(ds: Dataset, frames: np.ndarray, is_float: bool) -> tuple[float, float]:
    flat0 = _flatten(ds, 0)
    for low, high in (
        ("SmallestPixelValueInSeries", "LargestPixelValueInSeries"),
        ("SmallestImagePixelValue", "LargestImagePixelValue"),
    ):
        if isinstance(ds.get(low), int) and isinstance(ds.get(high), int) and ds.get(high) > ds.get(low):
            return _modality_endpoints(flat0, ds.get(low), ds.get(high))
    if not is_float and int(ds.BitsStored) <= 8:
        bits = int(ds.BitsStored)
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
        return _modality_endpoints(flat0, lo, hi)
    values = [apply_modality_lut(frame, _flatten(ds, i)).astype(np.float64) for i, frame in enumerate(frames)]
    return float(min(v.min() for v in values)), float(max(v.max() for v in values))


def reference_frames(ds: Dataset) -> list[np.ndarray]:
    """Every frame of `ds` on [0, 1] as float64: (H, W) gray or (H, W, 3) RGB."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array  # pydicom's own decoding, YBR converted to RGB
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.PhotometricInterpretation)
    is_float = any(k in ds for k in _FLOAT_PIXELS)
    gray = photometric.startswith("MONOCHROME")
    if frames == 1:
        arr = arr[None]
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds).astype(np.float64)
        top = 255.0 if ds.RedPaletteColorLookupTableDescriptor[2] <= 8 else 65535.0
        return [f / top for f in rgb]
    if not gray:
        top = 255.0 if arr.dtype == np.uint8 else float(2 ** int(ds.BitsStored) - 1)
        return [f.astype(np.float64) / top for f in arr]
    out = []
    no_voi: tuple[float, float] | None = None
    for index, stored in enumerate(arr):
        flat = _flatten(ds, index)
        values = apply_modality_lut(stored, flat)
        if _has_window(flat) or flat.get("VOILUTSequence"):
            voi = apply_voi_lut(values, flat, prefer_lut=False).astype(np.float64)
            if _has_window(flat):
                lo, hi = _windowed_range(flat)
            else:
                lo, hi = 0.0, float(2 ** flat.VOILUTSequence[0].LUTDescriptor[2] - 1)
            unit = (voi - lo) / (hi - lo)
        else:
            no_voi = no_voi or _no_voi_range(ds, arr, is_float)
            lo, hi = no_voi
            unit = np.clip((values.astype(np.float64) - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros(values.shape)
        out.append(1.0 - unit if photometric == "MONOCHROME1" else unit)
    return out


def read(path: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)
