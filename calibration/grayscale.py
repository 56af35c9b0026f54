"""The grayscale display pipeline of PS3.3 C.11 for one frame: the modality transform (a LUT, or rescale slope and
intercept), then the VOI transform (a LINEAR, LINEAR_EXACT or SIGMOID window, or a VOI LUT), each read from the
frame's functional group first, the shared group next, then the data set's top level (`frame_transforms`).
A malformed LUT or window is a `GrayscaleError`; `calibration.dicom` reports it as the file's DicomError."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from calibration.errors import EdgertError


class GrayscaleError(EdgertError, ValueError):
    """A LUT or window that the standard's pipeline cannot apply (too few entries, a bad width or function)."""


@dataclass(frozen=True)
class Lut:
    """A modality or VOI LUT: entries for stored (or modality) values first, first + 1, ..."""

    first: int
    entries: np.ndarray
    bits: int

    @classmethod
    def parse(cls, item: Dataset, little_endian: bool) -> Lut:
        count, first, bits = (int(v) for v in item.LUTDescriptor)
        count = count or 65536
        elem = item["LUTData"]
        if isinstance(elem.value, bytes | bytearray):
            data = np.frombuffer(elem.value, dtype="<u2" if little_endian else ">u2")
        else:
            data = np.asarray(elem.value if isinstance(elem.value, list) else [elem.value], dtype=np.int64)
        if len(data) < count or not 1 <= bits <= 16:
            raise GrayscaleError(f"LUT of {len(data)} entries and {bits} bits; the descriptor says {count} entries")
        return cls(first, data[:count].astype(np.float64), bits)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        index = np.clip(np.rint(values).astype(np.int64) - self.first, 0, len(self.entries) - 1)
        mapped: np.ndarray = self.entries[index]
        return mapped

    @property
    def top(self) -> float:
        return float((1 << self.bits) - 1)


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str  # LINEAR | LINEAR_EXACT | SIGMOID

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """PS3.3 C.11.2.1.2 and C.11.2.1.3, onto [0, 1]."""
        c, w = self.center, self.width
        if self.function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700.0, 700.0)))
        if self.function == "LINEAR":
            c, w = c - 0.5, w - 1.0
        if w <= 0:  # LINEAR with width 1: a threshold at the center
            return (x > c).astype(np.float64)
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class FrameTransform:
    """Stored values to [0, 1] for one frame: modality (LUT, or slope and intercept), then VOI (window or LUT)."""

    slope: float = 1.0
    intercept: float = 0.0
    modality_lut: Lut | None = None
    voi: Window | Lut | None = None

    def modality(self, stored: np.ndarray) -> np.ndarray:
        if self.modality_lut is not None:
            return self.modality_lut(stored)
        values = stored.astype(np.float64)
        if self.slope != 1.0 or self.intercept != 0.0:
            values = values * self.slope + self.intercept
        return values

    def modality_range(self, lo: float, hi: float) -> tuple[float, float]:
        """The modality values that stored values lo..hi can take."""
        if self.modality_lut is not None:
            reached = self.modality_lut(np.arange(int(lo), int(hi) + 1))
            return float(reached.min()), float(reached.max())
        ends = (lo * self.slope + self.intercept, hi * self.slope + self.intercept)
        return min(ends), max(ends)


def first_number(value: Any) -> float:
    """A DS/IS value that may be multi-valued: the first (the producer's default view)."""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def window_of(source: Dataset, where: str) -> Window | None:
    if source.get("WindowCenter") is None or source.get("WindowWidth") is None:
        return None
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    center, width = first_number(source.WindowCenter), first_number(source.WindowWidth)
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise GrayscaleError(f"{where}: VOI LUT Function {function} is not LINEAR, LINEAR_EXACT or SIGMOID")
    if width < (1.0 if function == "LINEAR" else np.finfo(float).tiny):
        raise GrayscaleError(f"{where}: Window Width {width:g} is not valid for a {function} window")
    return Window(center, width, function)


def frame_transforms(ds: Dataset) -> Callable[[int], FrameTransform]:
    """The transform for each frame: the frame's functional group first, then the shared one, then the top level."""
    little = ds.file_meta.TransferSyntaxUID.is_little_endian
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    cache: dict[int, FrameTransform] = {}

    def for_frame(index: int) -> FrameTransform:
        key = index if per_frame else 0
        if key in cache:
            return cache[key]
        groups = ([per_frame[index]] if per_frame and index < len(per_frame) else []) + ([shared[0]] if shared else [])
        rescale: Dataset | None = None
        voi: Window | Lut | None = None
        for group in groups:
            if rescale is None and group.get("PixelValueTransformationSequence"):
                rescale = group.PixelValueTransformationSequence[0]
            if voi is None and group.get("FrameVOILUTSequence"):
                item = group.FrameVOILUTSequence[0]
                voi = window_of(item, f"frame {index + 1} VOI")
                if voi is None and item.get("VOILUTSequence"):
                    voi = Lut.parse(item.VOILUTSequence[0], little)
        if rescale is None and ds.get("ModalityLUTSequence"):
            transform = FrameTransform(modality_lut=Lut.parse(ds.ModalityLUTSequence[0], little))
        else:
            source = rescale if rescale is not None else ds
            slope = source.get("RescaleSlope")
            intercept = source.get("RescaleIntercept")
            transform = FrameTransform(
                slope=1.0 if slope in (None, "") else first_number(slope),
                intercept=0.0 if intercept in (None, "") else first_number(intercept),
            )
        if voi is None:
            voi = window_of(ds, "VOI")
        if voi is None and ds.get("VOILUTSequence"):
            voi = Lut.parse(ds.VOILUTSequence[0], little)
        cache[key] = FrameTransform(transform.slope, transform.intercept, transform.modality_lut, voi)
        return cache[key]

    return for_frame
