"""Frame sources named the same way on every command (`replay`, `--data`, `--calib`).

A source is a path, `synthetic[:frames=300,size=240x320,seed=0,fps=30,clip=60]` (ultrasound; clip: frames per
scene; 1 gives independent images) or `synthetic-endoscopy[:...]` (the same options; RGB colonoscopy-like video
with polyps, see `calibration.endoscopy`). A path is a DICOM file (single or multi-frame), an image (PNG, JPEG, BMP, TIFF), a video
(needs the optional `av` package: `pip install edgert[video]`), a `.npy`/`.npz` array of frames, or a folder of
any of these. In a folder, unreadable files are skipped with a warning; a source with no frames is an error.
Sources yield display-ready frames (uint8/uint16 gray or uint8 RGB) with their color order and pixel spacing.
DICOM images are rendered as `dicom_output` says (8-bit display by default; see `DicomOutput`).
"""

from __future__ import annotations

import logging
import random
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from calibration.dicom import DicomError, iter_dicom_frames, read_info
from calibration.endoscopy import EndoscopyQuality, SyntheticEndoscopy
from calibration.errors import SourceError as SourceError
from calibration.errors import escaped
from calibration.kinds import SampleOrder as SampleOrder  # defined with the other option enums, light to import
from calibration.kinds import Sampling as Sampling
from calibration.preprocessing import Color, DicomOutput, ImageLimits
from calibration.synthetic import SyntheticUltrasound

log = logging.getLogger("edgert.sources")


@dataclass(frozen=True)
class SourceFrame:
    pixels: np.ndarray
    color: Color
    spacing_mm: tuple[float, float] | None
    frame_interval_s: float | None  # the recorded frame interval, when the source has one
    meta: dict[str, object]  # safe to send: never names a patient or a file
    truth: FrameTruth | None = None  # synthetic frames: what the generator drew (never sent)


@dataclass(frozen=True)
class FrameTruth:
    """What a generator put in a frame, so a demo or a check can say what the model should have shown."""

    boxes: np.ndarray | None = None  # [K, 4] x1, y1, x2, y2 frame pixels: synthetic endoscopy's polyps
    mask: np.ndarray | None = None  # (H, W) class ids: synthetic ultrasound
    label: str | None = None  # synthetic endoscopy's frame quality


class FrameSource:
    """Base of all sources: iterable, with a description that is safe to print."""

    description = "frames"

    def __iter__(self) -> Iterator[SourceFrame]:
        raise NotImplementedError


SYNTHETIC = "synthetic"  # ultrasound
SYNTHETIC_ENDOSCOPY = "synthetic-endoscopy"


class SyntheticSource(FrameSource):
    """Generated frames: ultrasound (`synthetic`, gray) or colonoscopy (`synthetic-endoscopy`, RGB)."""

    def __init__(
        self,
        frames: int = 300,
        height: int = 240,
        width: int = 320,
        seed: int = 0,
        fps: float = 30.0,
        clip: int = 60,
        kind: str = SYNTHETIC,
        quality: str = "clear",
    ) -> None:
        if frames <= 0 or fps <= 0 or clip <= 0:
            raise SourceError(f"{kind}: frames, fps and clip must be positive")
        if height < 32 or width < 32:
            raise SourceError(f"{kind}: size must be at least 32x32, got {height}x{width}")
        self.frames, self.height, self.width, self.seed, self.fps, self.clip = frames, height, width, seed, fps, clip
        self.kind = kind
        if quality not in ("clear", "mixed") or (quality != "clear" and kind != SYNTHETIC_ENDOSCOPY):
            raise SourceError(f"{kind}: quality must be 'clear' or 'mixed' (endoscopy only), got '{quality}'")
        self.quality = quality
        scenes = "independent scenes" if clip == 1 else f"a new scene every {clip} frames"
        what = "ultrasound" if kind == SYNTHETIC else "endoscopy"
        # the size as the spec writes it (size=HxW), so what is printed reads back as what was asked
        self.description = (
            f"synthetic {what}, {frames} frames size={height}x{width} at {fps:g} fps, {scenes} (seed {seed})"
        )
        if quality == "mixed":
            self.description += ", scenes of every frame quality"

    def __iter__(self) -> Iterator[SourceFrame]:
        produced = 0
        if self.kind == SYNTHETIC_ENDOSCOPY:
            endo = SyntheticEndoscopy(self.height, self.width, seed=self.seed)
            scene = 0
            while produced < self.frames:
                quality = EndoscopyQuality(scene % len(EndoscopyQuality)) if self.quality == "mixed" else None
                scene += 1
                for f in endo.cine(min(self.clip, self.frames - produced), quality):
                    meta: dict[str, object] = {"source": self.kind, "frame": produced}
                    truth = FrameTruth(boxes=f.boxes, label=f.quality.label)
                    yield SourceFrame(f.image, Color.RGB, None, 1.0 / self.fps, meta, truth)
                    produced += 1
            return
        gen = SyntheticUltrasound(self.height, self.width, seed=self.seed)
        while produced < self.frames:  # clip=1 gives independent images, as calibration and evaluation want
            for image, mask in gen.cine(min(self.clip, self.frames - produced)):
                meta = {"source": "synthetic", "frame": produced}
                yield SourceFrame(image, Color.GRAY, None, 1.0 / self.fps, meta, FrameTruth(mask=mask))
                produced += 1


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
NUMPY_SUFFIXES = {".npy", ".npz"}


def _image_frames(path: Path, limits: ImageLimits) -> Iterator[tuple[np.ndarray, Color]]:
    try:
        with Image.open(path) as img:  # reads the header only
            width, height = img.size
            too_big = limits.refuse(width, height, getattr(img, "n_frames", 1))
            if too_big:
                raise SourceError(f"{path}: {too_big}; refused before decoding")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                yield np.clip(np.asarray(img), 0, 65535).astype(np.uint16), Color.GRAY
            elif img.mode == "L":
                yield np.asarray(img, np.uint8), Color.GRAY
            else:
                yield np.asarray(img.convert("RGB"), np.uint8), Color.RGB
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SourceError(f"{path}: cannot decode image ({exc.__class__.__name__}: {exc})") from None


def _check_array(shape: tuple[int, ...], dtype: np.dtype[Any], where: str, limits: ImageLimits) -> None:
    """An array's header, before its data is read: frames of a known type and within the limits."""
    if dtype not in (np.uint8, np.uint16, np.float32):
        raise SourceError(f"{where}: frames must be uint8, uint16 or float32 in [0, 1], not {dtype}")
    frames = shape if len(shape) == 2 or (len(shape) == 3 and shape[-1] == 3) else shape[1:]
    if len(frames) not in (2, 3) or len(shape) > 4:
        raise SourceError(f"{where}: cannot read frames from an array of shape {shape}")
    too_big = limits.refuse(frames[1], frames[0], shape[0] if len(shape) > len(frames) else 1)
    if too_big:
        raise SourceError(f"{where}: an array of shape {shape}: {too_big}")


def _array_frames(array: np.ndarray, where: str) -> Iterator[tuple[np.ndarray, Color]]:
    """(H, W) -> one gray frame; (H, W, 3) -> one RGB frame; (N, H, W) and (N, H, W, 3) -> N frames."""
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3):
        array = array[None]
    if array.ndim == 3:
        yield from ((frame, Color.GRAY) for frame in array)
    elif array.ndim == 4 and array.shape[-1] == 3 and array.dtype == np.uint8:
        yield from ((frame, Color.RGB) for frame in array)
    else:
        raise SourceError(f"{where}: cannot read frames from an array of shape {array.shape}")


def _npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read(f)
    return tuple(shape), dtype


def _numpy_frames(path: Path, limits: ImageLimits) -> Iterator[tuple[np.ndarray, Color]]:
    """Each array's header is checked before its data is read (or, in a .npz, decompressed)."""
    try:
        if path.suffix == ".npy":
            with path.open("rb") as f:
                _check_array(*_npy_header(f), str(path), limits)
            yield from _array_frames(np.load(path, allow_pickle=False), str(path))
            return
        with np.load(path, allow_pickle=False) as archive:
            for key in sorted(archive.files):
                with archive.zip.open(f"{key}.npy") as member:  # NpzFile's own ZipFile: the header alone
                    _check_array(*_npy_header(member), f"{path}[{key}]", limits)
                yield from _array_frames(archive[key], f"{path}[{key}]")
    except SourceError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # pickled arrays are refused too
        raise SourceError(f"{path}: cannot load array ({exc})") from None


def _video_frames(path: Path, limits: ImageLimits) -> Iterator[tuple[np.ndarray, Color]]:
    try:
        import av
    except ImportError:
        raise SourceError(
            f"{path}: reading video needs the optional 'av' package (pip install edgert[video])"
        ) from None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            too_big = limits.refuse(stream.codec_context.width, stream.codec_context.height, stream.frames or 1)
            if too_big:
                raise SourceError(f"{path}: the video stream is {too_big}; refused before decoding")
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24"), Color.RGB
    except av.FFmpegError as exc:
        raise SourceError(f"{path}: cannot decode video ({exc})") from None


def _video_interval(path: Path) -> float | None:
    try:
        import av

        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            return float(1 / rate) if rate else None
    except Exception:  # unreadable here is reported when the frames are decoded
        return None


class PathSource(FrameSource):
    """A file (DICOM, image, video, array) or a folder of them, read in name order."""

    def __init__(
        self, path: Path, dicom_output: DicomOutput = DicomOutput.DISPLAY8, limits: ImageLimits = ImageLimits()
    ) -> None:
        self.path = path
        self.dicom_output = dicom_output
        self.limits = limits
        if path.is_dir():
            self.files = sorted(p for p in path.rglob("*") if p.is_file())
            if not self.files:
                raise SourceError(f"{path}: folder is empty")
            self.description = f"folder of {len(self.files)} files"
        else:
            self.files = [path]
            kind = self._kind(path)
            if kind == "dicom":
                read_info(path, dicom_output, limits)  # fail now, with the file's name, if it cannot be replayed
            self.description = f"{kind} file"

    @staticmethod
    def _kind(path: Path) -> str:
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return "image"
        if suffix in VIDEO_SUFFIXES:
            return "video"
        if suffix in NUMPY_SUFFIXES:
            return "array"
        return "dicom"

    def _file_frames(self, file: Path) -> Iterator[SourceFrame]:
        kind = self._kind(file)
        if kind == "dicom":
            info, frames = iter_dicom_frames(file, self.dicom_output, self.limits)
            interval = info.frame_time_ms / 1000.0 if info.frame_time_ms else None
            meta: dict[str, object] = {"source": "dicom", "modality": info.modality, "frames": info.frames}
            for i, pixels in enumerate(frames):
                yield SourceFrame(pixels, info.color, info.spacing_mm, interval, {**meta, "frame": i})
            return
        readers = {"image": _image_frames, "video": _video_frames, "array": _numpy_frames}
        interval = _video_interval(file) if kind == "video" else None
        for i, (pixels, color) in enumerate(readers[kind](file, self.limits)):
            yield SourceFrame(pixels, color, None, interval, {"source": kind, "frame": i})

    def __iter__(self) -> Iterator[SourceFrame]:
        usable = 0
        for file in self.files:
            try:
                for frame in self._file_frames(file):
                    usable += 1
                    yield frame
            except (DicomError, SourceError) as exc:
                if not self.path.is_dir():
                    raise
                log.warning("skipped %s", escaped(exc, 1000))
        if usable == 0:
            raise SourceError(f"{self.path}: no readable frames")


def sample_frames(frames: Iterable[SourceFrame], sampling: Sampling) -> list[SourceFrame]:
    """Up to `sampling.count` frames among every `stride`-th one: the first ones, or a seeded uniform sample of
    the whole source (reservoir sampling: one pass, at most `count` frames held)."""
    count = sampling.count
    chosen: list[SourceFrame] = []
    rng = random.Random(sampling.seed)
    spread = sampling.order is SampleOrder.SPREAD
    for seen, frame in enumerate(f for i, f in enumerate(frames) if i % sampling.stride == 0):
        if len(chosen) < count:
            chosen.append(frame)
        elif spread:
            j = rng.randrange(seen + 1)
            if j < count:
                chosen[j] = frame
        else:
            break
    if not chosen:
        raise SourceError("the source gave no frames")
    return chosen


def sample_source(
    spec: str, sampling: Sampling, dicom_output: DicomOutput = DicomOutput.DISPLAY8
) -> tuple[list[SourceFrame], str]:
    """Frames for calibration or evaluation from a named source, and a description of what was taken.

    A synthetic source sampled without its own `clip`, `frames` or `seed` gives independent scenes (clip=1), just
    as many as needed, seeded by the sampling seed: a cine's consecutive frames are nearly the same image, and
    calibrating on one scene is how INT8 ranges go wrong."""
    kind = _synthetic_kind(spec)
    if kind:
        given: dict[str, int | float | str] = dict(_synthetic_options(spec.partition(":")[2], kind))
        given["kind"] = kind
        given.setdefault("clip", 1)
        given.setdefault("frames", sampling.count * sampling.stride)
        given.setdefault("seed", sampling.seed)
        source: FrameSource = _synthetic_source(given)
        first = Sampling(sampling.count, sampling.stride, SampleOrder.FIRST, sampling.seed)
        frames = sample_frames(source, first if given["clip"] == 1 else sampling)
        taken = "" if len(frames) == given["frames"] else f"{len(frames)} frames of "  # the description counts them
        return frames, taken + source.description
    source = open_source(spec, dicom_output)
    frames = sample_frames(source, sampling)
    return frames, f"{len(frames)} frames from {source.description} ({sampling.describe()})"


@dataclass(frozen=True)
class Split:
    """One split of a source: its name, the frames it wants and its seed offset (synthetic sources draw each split
    from its own seed; others are partitioned)."""

    name: str
    count: int
    offset: int


def sample_splits(
    spec: str, splits: Sequence[Split], sampling: Sampling, dicom_output: DicomOutput = DicomOutput.DISPLAY8
) -> dict[str, tuple[list[SourceFrame], str]]:
    """Disjoint frame sets from one source, one per split (calibration, search, verify), so that no frame that
    chose anything also delivers the verdict. A synthetic source generates each split from the sampling seed
    (or its own `seed=`) plus the split's offset. Any other source is sampled once for all splits together
    (`sampling` with the summed count), shuffled with the seed and cut into parts; a source with fewer frames
    shares them out in proportion, and one with fewer frames than splits is an error. Frames of one cine are
    near-duplicates: for splits that share no scene, give each its own source."""
    kind = _synthetic_kind(spec)
    if kind:
        given = dict(_synthetic_options(spec.partition(":")[2], kind))
        base = int(given.pop("seed", sampling.seed))
        out = {}
        for split in splits:
            options = ",".join(f"{k}={v}" for k, v in given.items() if k not in ("height", "width"))
            if "height" in given:
                options += f",size={given['height']}x{given['width']}"
            seeded = f"{kind}:{options.strip(',')},seed={base + split.offset}".replace(":,", ":")
            out[split.name] = sample_source(seeded, replace(sampling, count=split.count), dicom_output)
        return out
    total = sum(s.count for s in splits)
    source = open_source(spec, dicom_output)
    frames = sample_frames(source, replace(sampling, count=total))
    if len(frames) < len(splits):
        raise SourceError(
            f"{spec}: {len(frames)} frame(s) cannot be split {len(splits)} ways ({', '.join(s.name for s in splits)})"
        )
    order = list(range(len(frames)))
    random.Random(sampling.seed).shuffle(order)
    sizes = [s.count for s in splits]
    if len(frames) < total:  # share out in proportion, at least one each
        sizes = [max(1, len(frames) * s.count // total) for s in splits]
        while sum(sizes) > len(frames):
            sizes[sizes.index(max(sizes))] -= 1
    out, start = {}, 0
    for split, size in zip(splits, sizes):
        part = [frames[i] for i in sorted(order[start : start + size])]
        start += size
        out[split.name] = (
            part,
            f"{len(part)} frames from {source.description} ({sampling.describe()}; the {split.name} part of "
            f"{len(frames)} sampled frames, disjoint from the other parts)",
        )
    return out


def _synthetic_kind(spec: str) -> str | None:
    for kind in (SYNTHETIC, SYNTHETIC_ENDOSCOPY):
        if spec == kind or spec.startswith(kind + ":"):
            return kind
    return None


def _synthetic_options(options: str, kind: str = SYNTHETIC) -> list[tuple[str, int | float | str]]:
    parsed: list[tuple[str, int | float | str]] = []
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        try:
            if key == "size":
                h, w = value.lower().split("x")
                parsed += [("height", int(h)), ("width", int(w))]
            elif key in ("frames", "seed", "clip"):
                parsed.append((key, int(value)))
            elif key == "fps":
                parsed.append((key, float(value)))
            elif key == "quality" and kind == SYNTHETIC_ENDOSCOPY:
                parsed.append((key, value))
            else:
                extra = ", quality=clear|mixed" if kind == SYNTHETIC_ENDOSCOPY else ""
                raise SourceError(f"{kind}: unknown option '{key}' (frames, size=HxW, seed, fps, clip{extra})")
        except SourceError:
            raise
        except ValueError:
            raise SourceError(f"{kind}: bad value '{value}' for '{key}'") from None
    return parsed


def _synthetic_source(options: dict[str, int | float | str]) -> SyntheticSource:
    try:
        return SyntheticSource(**options)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise SourceError(str(exc)) from None


def open_source(
    spec: str, dicom_output: DicomOutput = DicomOutput.DISPLAY8, limits: ImageLimits = ImageLimits()
) -> FrameSource:
    """A source from its name: a path (file or folder), `synthetic[:options]` or `synthetic-endoscopy[:options]`.
    DICOM images in it are rendered as `dicom_output` says; no file is decoded past `limits`."""
    kind = _synthetic_kind(spec)
    if kind:
        return _synthetic_source({**dict(_synthetic_options(spec.partition(":")[2], kind)), "kind": kind})
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder (or use 'synthetic' or 'synthetic-endoscopy')")
    return PathSource(path, dicom_output, limits)
