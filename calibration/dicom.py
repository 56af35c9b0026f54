"""DICOM files and cines to frames, rendered the way the standard's display pipeline defines them.

Gray images pass through the grayscale pipeline of PS3.3 C.11 once, in order: the modality LUT or rescale, then the
VOI transform (the first window with the function the file names, LINEAR, LINEAR_EXACT or SIGMOID, else the first
VOI LUT), then presentation (MONOCHROME1 is inverted), then the output range. Enhanced multi-frame objects take
rescale and window per frame from their functional groups. A frame without a window is mapped by one range for the
whole object, never per frame, so a cine's brightness changes stay visible: Smallest/Largest Pixel Value in Series or
Image Pixel Value where the file has them; else, for data of at most 8 bits, the range its bits can hold (8-bit
ultrasound is shown as stored, 1-bit masks as 0/255); else the smallest and largest values of all its frames.

Color images become 8-bit RGB: YBR data is converted by the decoder, PALETTE COLOR through its LUT. Photometric
interpretations that cannot be displayed as stored (YBR_ICT, YBR_RCT or YBR_PARTIAL_* outside the codecs that
define them) are refused. Compressed transfer syntaxes other than RLE and 8-bit JPEG need the `dicom` extra.

Nothing that identifies a patient leaves this module: errors and warnings name the file, and values that pydicom
quotes in its own messages are redacted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames, get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, convert_color_space
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from calibration.codestream import CodestreamError, declared_size
from calibration.errors import EdgertError, escaped
from calibration.grayscale import FrameTransform, Lut, Window, frame_transforms
from calibration.preprocessing import Color, DicomOutput, ImageLimits

log = logging.getLogger("edgert.dicom")
# pydicom sends every warning both to `warnings` and to its logger, and logs decoder failures with tracebacks. We
# report its warnings once (below) and its failures as DicomError, so its logger would only repeat them.
logging.getLogger("pydicom").propagate = False

DECODERS_EXTRA = "pip install 'edgert[dicom]'"
_CM_UNITS = 3  # Physical Units X/Y Direction code for centimetres in ultrasound regions
_FLOAT_PIXELS = ("FloatPixelData", "DoubleFloatPixelData")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_COLOR_ROWS = 256  # YBR is converted to RGB this many rows at a time: the float copy stays a sliver of the frame


class DicomError(EdgertError, ValueError):
    """A DICOM file that cannot be read or shown; the message names the file and the reason."""


class DicomSizeError(DicomError):
    """A frame whose codestream declares another size than the header: the file is refused, not just the frame."""


def _safe(text: str) -> str:
    """pydicom's messages may quote element values (a name, an ID): redact them all, and keep one line."""
    return " ".join(_QUOTED.sub("'...'", text).split())


@contextlib.contextmanager
def _reported_warnings(path: Path) -> Iterator[None]:
    """pydicom warns (and logs) about each problem it meets; report each distinct one once, through our logger."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:  # also when the file is refused: the warnings may say why
            for message in dict.fromkeys(_safe(str(w.message).replace(f" in file {path}", "")) for w in caught):
                log.warning("%s: %s", escaped(path), escaped(message, 500))


@dataclass(frozen=True)
class DicomInfo:
    path: Path
    modality: str
    photometric: str
    frames: int  # frames that can be played (fewer than the header says when the file was cut short)
    rows: int
    columns: int
    frame_time_ms: float | None
    spacing_mm: tuple[float, float] | None  # (x, y)
    transfer_syntax: str = ""
    bits_stored: int = 8
    signed: bool = False

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
    """PixelSpacing (top level or shared functional group), else a single ultrasound region in cm that fits the
    image; None when unknown or inconsistent."""
    spacing = ds.get("PixelSpacing")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not spacing and shared and shared[0].get("PixelMeasuresSequence"):
        spacing = shared[0].PixelMeasuresSequence[0].get("PixelSpacing")
    if spacing:
        row, col = (float(v) for v in spacing)
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


# ---------------------------------------------------------------------------------------------------------------
# Reading: preamble-less files, truncated pixel data, decoder availability


def _looks_like_dicom(ds: Dataset) -> bool:
    return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)


def _read_forced(path: Path) -> Dataset:
    """A file without the 128-byte preamble and 'DICM' may still be a DICOM data set: read it as one if it parses
    into image attributes, and give it the transfer syntax its encoding shows (it has no file meta to say so)."""
    ds: Dataset
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception:  # whatever pydicom makes of arbitrary bytes
        ds = Dataset()
    if not _looks_like_dicom(ds):
        raise DicomError(f"{path}: not a DICOM file (no DICM preamble, and its content is not a DICOM data set)")
    log.info("%s: no DICOM preamble; read as a bare data set", escaped(path))
    return ds


def _cut_short(path: Path, ds: Dataset, caught: list[warnings.WarningMessage]) -> bool:
    """Did the file end inside an element? pydicom warns for an unterminated sequence, keeps a last value short,
    and stops without a word at a partial tag, leaving bytes after the last element it read."""
    if any(str(w.message).startswith("End of file reached") for w in caught):
        return True
    if not len(ds):
        return False
    last = ds.get_item(max(ds.keys()))  # still the raw element: nothing has read it yet
    length, value, tell = (getattr(last, k, None) for k in ("length", "value", "value_tell"))
    if not isinstance(value, bytes) or not isinstance(length, int) or length == 0xFFFFFFFF:
        return False
    return len(value) < length or (isinstance(tell, int) and tell + length < path.stat().st_size)


def _read_dataset(path: Path) -> tuple[Dataset, bool]:
    """The data set, and whether the file was cut short."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds: Dataset
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                ds = _read_forced(path)
            truncated = _cut_short(path, ds, caught)
        for w in caught:  # back to the reporting context around us
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if "PixelData" not in ds and not any(k in ds for k in _FLOAT_PIXELS):
            # Compressed pixel data cut short by the end of the file makes pydicom drop the whole data set: the
            # header before it is still there to read (and the frames are salvaged later).
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            ds = header if len(header) > len(ds) else ds
        if "TransferSyntaxUID" not in ds.file_meta:  # no file meta, or meta without it: the encoding tells
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            )
        return ds, truncated
    except DicomError:
        raise
    except OSError as exc:
        raise DicomError(f"{path}: cannot read the file ({exc.strerror or exc.__class__.__name__})") from None
    except (EOFError, struct.error) as exc:
        raise DicomError(f"{path}: truncated: the file ends inside its header ({_safe(str(exc))})") from None
    except Exception as exc:  # garbled files raise many unrelated types inside pydicom
        raise DicomError(f"{path}: cannot parse DICOM ({exc.__class__.__name__}: {_safe(str(exc))})") from None


def _salvage_native(path: Path, ds: Dataset, frames: int) -> int:
    """Native pixel data shorter than its header says: keep the whole frames that are there."""
    expected = int(get_expected_length(ds, "bytes"))
    if len(ds.PixelData) >= expected:
        return frames
    # bits per frame: 1-bit frames are packed back to back, YBR_FULL_422 holds two samples per pixel
    frame_bits = (
        expected * 8 // frames if int(ds.BitsAllocated) > 1 else int(get_expected_length(ds, "pixels")) // frames
    )
    whole = min(frames, len(ds.PixelData) * 8 // frame_bits)
    if whole == 0:
        raise DicomError(
            f"{path}: truncated: pixel data has {len(ds.PixelData)} of {expected} bytes, not one whole frame"
        )
    ds.PixelData = bytes(ds.PixelData[: (frame_bits * whole + 7) // 8])
    if "NumberOfFrames" in ds:
        ds.NumberOfFrames = whole
    return whole


def _pixel_element(path: Path) -> bytes | None:
    """The file's bytes from its top-level Pixel Data element on, or None where it has none."""
    with path.open("rb") as f:
        pydicom.dcmread(f, stop_before_pixels=True, force=True)
        raw = f.read()
    return raw if raw[:4] == b"\xe0\x7f\x10\x00" else None


def _salvage_encapsulated(path: Path, ds: Dataset, frames: int) -> int:
    """Compressed pixel data cut short: pydicom drops the whole element. Read its items up to the cut, keep the
    frames whose last fragment is complete (JPEG, JPEG-LS and JPEG 2000 codestreams end in FFD9; RLE has one
    fragment per frame), and give them back to the data set."""
    raw = _pixel_element(path) or b""
    items: list[bytes] = []
    pos = 12  # tag, VR 'OB', two reserved bytes, undefined length
    while pos + 8 <= len(raw):
        group, element, length = struct.unpack_from("<HHI", raw, pos)
        if (group, element) != (0xFFFE, 0xE000) or pos + 8 + length > len(raw):
            break
        items.append(raw[pos + 8 : pos + 8 + length])
        pos += 8 + length
    one_per_frame = ds.file_meta.TransferSyntaxUID == RLELossless
    whole: list[bytes] = []
    pending: list[bytes] = []
    for fragment in items[1:]:  # items[0] is the basic offset table
        pending.append(fragment)
        if one_per_frame or fragment.rstrip(b"\x00").endswith(b"\xff\xd9"):
            whole.append(b"".join(pending))
            pending = []
    whole = whole[:frames]
    if whole:
        ds.add_new(0x7FE00010, "OB", encapsulate(whole))
        ds["PixelData"].is_undefined_length = True
        if "NumberOfFrames" in ds:
            ds.NumberOfFrames = len(whole)
    return len(whole)


def _index_frames(ds: Dataset, frames: int) -> None:
    """Give a compressed cine without a Basic Offset Table one, so that frame k is found directly rather than by
    walking every fragment before it (which makes playing a long cine quadratic)."""
    data = ds.PixelData
    if frames > 1 and len(data) >= 8 and struct.unpack_from("<I", data, 4)[0] == 0:
        ds.PixelData = encapsulate(list(generate_frames(data, number_of_frames=frames)))


def _playable_frames(path: Path, ds: Dataset, frames: int) -> int:
    syntax = ds.file_meta.TransferSyntaxUID
    if "PixelData" in ds:
        if syntax.is_encapsulated:
            _index_frames(ds, frames)
        played = frames if syntax.is_encapsulated else _salvage_native(path, ds, frames)
    elif syntax.is_encapsulated:
        played = _salvage_encapsulated(path, ds, frames)
        if played == 0:
            raise DicomError(f"{path}: truncated: the file ends inside its pixel data before one whole frame")
    else:
        return frames  # float pixel data: checked by the decoder
    if played < frames:
        log.warning("%s: truncated: %d of %d frames are whole; playing those", escaped(path), played, frames)
    return played


def _check_decoder(path: Path, syntax: UID) -> None:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(f"{path}: pixel data in {syntax.name} cannot be decoded (no decoder exists for it)") from None
    if not decoder.is_available:
        raise DicomError(
            f"{path}: pixel data in {syntax.name} needs a decoder plugin that is not installed ({DECODERS_EXTRA})"
        )


def read_info(
    path: str | Path, output: DicomOutput = DicomOutput.DISPLAY8, limits: ImageLimits = ImageLimits()
) -> tuple[DicomInfo, Dataset]:
    """Parse the header, check that the image can be shown as `output` and fits `limits` (Rows, Columns, frames,
    and the first frame's own codestream), and salvage a truncated file's whole frames."""
    path = Path(path)
    with _reported_warnings(path):
        return _read_info(path, output, limits)


def _read_info(path: Path, output: DicomOutput, limits: ImageLimits) -> tuple[DicomInfo, Dataset]:
    ds, truncated = _read_dataset(path)
    if "PixelData" not in ds and not any(k in ds for k in _FLOAT_PIXELS):
        # pydicom drops compressed pixel data that the file's end cuts short: its frames may still be salvaged
        salvage = truncated and ds.file_meta.get("TransferSyntaxUID", UID("")).is_encapsulated and _pixel_element(path)
        if truncated and not salvage:
            raise DicomError(f"{path}: truncated: the file ends before its pixel data")
        if not salvage:
            raise DicomError(f"{path}: no pixel data (not an image object)")
    missing = [k for k in ("Rows", "Columns", "PhotometricInterpretation", "BitsAllocated") if ds.get(k) in (None, "")]
    if missing:
        raise DicomError(f"{path}: image attributes missing or empty: {', '.join(missing)}")

    def positive(keyword: str, default: int | None = None) -> int:
        value = ds.get(keyword, default)
        try:
            number = int(value if value not in (None, "") else default)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = 0
        if number <= 0:
            raise DicomError(f"{path}: image attribute {keyword} is not a positive integer")
        return number

    bits_allocated = positive("BitsAllocated")
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        spacing, frame_time = _spacing_mm(ds), _frame_time_ms(ds)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        log.warning("%s: invalid pixel spacing or frame timing attributes; ignored", escaped(path))
        spacing, frame_time = None, None
    info = DicomInfo(
        path=path,
        modality=str(ds.get("Modality", "")),
        photometric=str(ds.PhotometricInterpretation).strip().upper(),
        frames=positive("NumberOfFrames", 1),
        rows=positive("Rows"),
        columns=positive("Columns"),
        frame_time_ms=frame_time,
        spacing_mm=spacing,
        transfer_syntax=syntax.name,
        bits_stored=positive("BitsStored", bits_allocated),
        signed=ds.get("PixelRepresentation", 0) == 1,
    )
    if info.photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR") and not (
        info.photometric.startswith("YBR_")
    ):
        raise DicomError(f"{path}: photometric interpretation {info.photometric} is not supported")
    # Every size is checked before anything is decoded: a decoder allocates what the header claims.
    too_big = limits.refuse(info.columns, info.rows, info.frames)
    if too_big:
        raise DicomError(f"{path}: Columns x Rows {info.columns}x{info.rows}, {info.frames} frame(s): {too_big}")
    samples = ds.get("SamplesPerPixel", 1)
    if samples not in (1, 3) or bits_allocated > 64:
        raise DicomError(f"{path}: {samples} samples per pixel of {bits_allocated} bits is not an image we show")
    is_float = any(k in ds for k in _FLOAT_PIXELS)
    if output is DicomOutput.STORED and info.color is Color.GRAY and (info.signed or is_float or info.bits_stored > 16):
        kind = "float" if is_float else f"{'signed' if info.signed else 'unsigned'} {info.bits_stored}-bit"
        raise DicomError(
            f"{path}: stored values are {kind} and cannot be sent as unsigned 16-bit; use display8 or display16"
        )
    _check_decoder(path, syntax)
    frames = _playable_frames(path, ds, info.frames)
    info = dataclasses.replace(info, frames=frames)
    if syntax.is_encapsulated:
        _check_codestream(info, ds, 0)  # a file whose first frame lies about its size is refused before decoding
    return info, ds


def _check_codestream(info: DicomInfo, ds: Dataset, index: int) -> None:
    """The frame's codestream must declare the size the header does (a decoder allocates what it declares)."""
    try:
        data = get_frame(ds.PixelData, index, number_of_frames=info.frames)
        declared = declared_size(data)
    except CodestreamError as exc:
        raise DicomError(f"{info.path}: frame {index + 1}: {exc}") from None
    except Exception as exc:  # pydicom's fragment reader on broken items
        raise DicomError(f"{info.path}: frame {index + 1}: cannot read its fragments ({_safe(str(exc))})") from None
    if declared is not None and declared != (info.columns, info.rows):
        raise DicomSizeError(
            f"{info.path}: frame {index + 1}'s codestream declares {declared[0]}x{declared[1]} pixels but Columns x "
            f"Rows are {info.columns}x{info.rows}: refused before decoding"
        )


class _Renderer:
    """Decodes and renders the frames of one file. Built by `iter_dicom_frames`; holds the data set."""

    def __init__(self, info: DicomInfo, ds: Dataset, output: DicomOutput) -> None:
        self.info, self.ds, self.output = info, ds, output
        self.decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
        self.is_float = any(k in ds for k in _FLOAT_PIXELS)
        self._transforms = frame_transforms(ds)
        self.transform(0)  # a malformed LUT or window refuses the file at once, not frame by frame
        self._series: tuple[float, float] | None = None

    def transform(self, index: int) -> FrameTransform:
        try:
            return self._transforms(index)
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            raise DicomError(f"{self.info.path}: invalid grayscale transform ({_safe(str(exc))})") from None

    def decode(self, index: int) -> tuple[np.ndarray, str]:
        """The frame's pixels and the photometric interpretation they are in (YBR comes back as RGB)."""
        if self.ds.file_meta.TransferSyntaxUID.is_encapsulated and index > 0:  # read_info checked the first
            _check_codestream(self.info, self.ds, index)
        # as_rgb=False: pydicom converts a whole frame through float64 (8x the frame); we convert in slices
        arr, changes = self.decoder.as_array(self.ds, index=index, as_rgb=False)  # type: ignore[arg-type]  # pydicom types **kwargs as one DecodeOptions
        photometric = str(changes.get("photometric_interpretation", self.info.photometric))
        if photometric in ("YBR_FULL", "YBR_FULL_422") and arr.ndim == 3:
            arr = np.require(arr, requirements=["W"])
            for top in range(0, arr.shape[0], _COLOR_ROWS):
                rows = arr[top : top + _COLOR_ROWS]
                rows[...] = convert_color_space(rows, "YBR_FULL", "RGB")
            photometric = "RGB"
        return arr, photometric

    # -- range for frames without a VOI transform: one for the whole object
    def _declared_range(self) -> tuple[float, float] | None:
        for low, high in (
            ("SmallestPixelValueInSeries", "LargestPixelValueInSeries"),
            ("SmallestImagePixelValue", "LargestImagePixelValue"),
        ):
            lo, hi = self.ds.get(low), self.ds.get(high)
            if isinstance(lo, int) and isinstance(hi, int) and hi > lo:
                return self.transform(0).modality_range(lo, hi)
        return None

    def series_range(self, first: np.ndarray | None) -> tuple[float, float]:
        if self._series is not None:
            return self._series
        declared = self._declared_range()
        if declared is not None:
            self._series = declared
        elif not self.is_float and self.info.bits_stored <= 8:
            bits = self.info.bits_stored
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if self.info.signed else (0, (1 << bits) - 1)
            self._series = self.transform(0).modality_range(lo, hi)
        else:
            self._series = self._measured_range(first)
        return self._series

    def _measured_range(self, first: np.ndarray | None) -> tuple[float, float]:
        """Smallest and largest modality values over every frame (one extra decoding pass for a cine)."""
        lo, hi = np.inf, -np.inf
        for index in range(self.info.frames):
            try:
                stored = first if (index == 0 and first is not None) else self.decode(index)[0]
            except Exception:  # reported when the frame itself is played
                continue
            values = self.transform(index).modality(stored)
            finite = values[np.isfinite(values)] if self.is_float else values
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        return (lo, hi) if lo <= hi else (0.0, 1.0)

    # -- one frame
    def render(self, index: int) -> np.ndarray:
        stored, photometric = self.decode(index)
        if photometric == "PALETTE COLOR":
            return self._palette(stored)
        if photometric == "RGB":
            return self._rgb(stored)
        if not photometric.startswith("MONOCHROME"):
            raise DicomError(
                f"{self.info.path}: {photometric} pixel data in {self.info.transfer_syntax} cannot be shown "
                "(this photometric interpretation is only defined inside the codecs that use it)"
            )
        if self.is_float and not np.isfinite(stored).all():
            raise DicomError(f"{self.info.path}: frame {index + 1} has NaN or infinite float pixel values")
        if self.output is DicomOutput.STORED:
            return stored.astype(np.uint16)
        return self._gray(stored, index)

    def _gray(self, stored: np.ndarray, index: int) -> np.ndarray:
        transform = self.transform(index)
        values = transform.modality(stored)
        voi = transform.voi
        if isinstance(voi, Window):
            unit = voi(values)
        elif isinstance(voi, Lut):
            unit = voi(values) / voi.top
        else:
            lo, hi = self.series_range(stored if index == 0 else None)
            unit = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
        if self.info.photometric == "MONOCHROME1":
            unit = 1.0 - unit
        return _quantize(unit, self.output)

    def _rgb(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.dtype == np.uint8:
            return rgb
        top = float((1 << min(self.info.bits_stored, 32)) - 1)
        return _quantize(rgb.astype(np.float64) / top, DicomOutput.DISPLAY8)

    def _palette(self, indices: np.ndarray) -> np.ndarray:
        rgb = apply_color_lut(indices, self.ds)
        bits = int(self.ds.RedPaletteColorLookupTableDescriptor[2])
        return rgb if bits <= 8 else _quantize(rgb.astype(np.float64) / 65535.0, DicomOutput.DISPLAY8)


def _quantize(unit: np.ndarray, output: DicomOutput) -> np.ndarray:
    scale, dtype = (65535.0, np.uint16) if output is DicomOutput.DISPLAY16 else (255.0, np.uint8)
    quantized: np.ndarray = np.rint(np.clip(unit, 0.0, 1.0) * scale).astype(dtype)
    return quantized


def iter_dicom_frames(
    path: str | Path, output: DicomOutput = DicomOutput.DISPLAY8, limits: ImageLimits = ImageLimits()
) -> tuple[DicomInfo, Iterator[np.ndarray]]:
    """Header info now, rendered frames lazily (one decoded frame in memory at a time).

    A frame that fails to decode or render is skipped with one warning naming the file and the frame; the file
    fails (DicomError) only if no frame at all could be shown.
    """
    info, ds = read_info(path, output, limits)
    renderer = _Renderer(info, ds, output)

    def frames() -> Iterator[np.ndarray]:
        shown, first_error = 0, ""
        for index in range(info.frames):
            try:
                with _reported_warnings(info.path):
                    frame = renderer.render(index)
            except DicomSizeError:
                raise
            except DicomError as exc:
                reason = str(exc).removeprefix(f"{info.path}: ")
            except Exception as exc:  # decoder plugins raise their own types
                reason = f"cannot decode pixel data ({info.transfer_syntax}): {_safe(str(exc))}"
            else:
                shown += 1
                yield frame
                continue
            first_error = first_error or reason
            if info.frames == 1:
                break
            log.warning("%s: frame %d of %d skipped: %s", escaped(info.path), index + 1, info.frames, escaped(reason))
        if shown == 0:
            raise DicomError(f"{info.path}: {first_error}")

    return info, frames()
