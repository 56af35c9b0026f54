"""Frame sources named the same way on every command: a DICOM file or folder, or `synthetic`.

`synthetic` takes options after a colon: `synthetic:frames=300,size=240x320,seed=0,fps=30,clip=60` (clip: frames
per scene; 1 gives independent images).
Sources yield display-ready frames (uint8 gray or RGB) with their color order and pixel spacing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.dicom import DicomError, iter_dicom_frames, read_info
from calibration.preprocessing import Color
from calibration.synthetic import SyntheticUltrasound

log = logging.getLogger("edgert.sources")


class SourceError(ValueError):
    pass


@dataclass(frozen=True)
class SourceFrame:
    pixels: np.ndarray
    color: Color
    spacing_mm: tuple[float, float] | None
    frame_interval_s: float | None  # the recorded frame interval, when the source has one
    meta: dict[str, object]  # safe to send: never names a patient or a file


class FrameSource:
    """Base of all sources: iterable, with a description that is safe to print."""

    description = "frames"

    def __iter__(self) -> Iterator[SourceFrame]:
        raise NotImplementedError


class SyntheticSource(FrameSource):
    def __init__(
        self, frames: int = 300, height: int = 240, width: int = 320, seed: int = 0, fps: float = 30.0, clip: int = 60
    ) -> None:
        if frames <= 0 or fps <= 0 or clip <= 0:
            raise SourceError("synthetic: frames, fps and clip must be positive")
        if height < 32 or width < 32:
            raise SourceError(f"synthetic: size must be at least 32x32, got {height}x{width}")
        self.frames, self.height, self.width, self.seed, self.fps, self.clip = frames, height, width, seed, fps, clip
        self.description = f"synthetic ultrasound, {frames} frames {width}x{height} at {fps:g} fps, a new scene every {clip} (seed {seed})"

    def __iter__(self) -> Iterator[SourceFrame]:
        gen = SyntheticUltrasound(self.height, self.width, seed=self.seed)
        produced = 0
        while produced < self.frames:  # clip=1 gives independent images, as calibration and evaluation want
            for image, _mask in gen.cine(min(self.clip, self.frames - produced)):
                yield SourceFrame(image, Color.GRAY, None, 1.0 / self.fps, {"source": "synthetic", "frame": produced})
                produced += 1


class DicomSource(FrameSource):
    """One DICOM file or every DICOM file in a folder (sorted by name); unreadable files in a folder are skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            self.files = sorted(p for p in path.rglob("*") if p.is_file())
            if not self.files:
                raise SourceError(f"{path}: folder is empty")
            self.description = f"DICOM folder ({len(self.files)} files)"
        else:
            read_info(path)  # fail now, with the file's name, if it cannot be replayed
            self.files = [path]
            self.description = "DICOM file"

    def __iter__(self) -> Iterator[SourceFrame]:
        usable = 0
        for file in self.files:
            try:
                info, frames = iter_dicom_frames(file)
                interval = info.frame_time_ms / 1000.0 if info.frame_time_ms else None
                meta: dict[str, object] = {"source": "dicom", "modality": info.modality, "frames": info.frames}
                for i, pixels in enumerate(frames):
                    usable += 1
                    yield SourceFrame(pixels, info.color, info.spacing_mm, interval, {**meta, "frame": i})
            except DicomError as exc:
                if not self.path.is_dir():
                    raise
                log.warning("skipped %s", exc)
        if usable == 0:
            raise SourceError(f"{self.path}: no readable DICOM frames")


def _synthetic(options: str) -> SyntheticSource:
    kwargs: dict[str, float | int] = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        try:
            if key == "size":
                h, w = value.lower().split("x")
                kwargs["height"], kwargs["width"] = int(h), int(w)
            elif key in ("frames", "seed", "clip"):
                kwargs[key] = int(value)
            elif key == "fps":
                kwargs[key] = float(value)
            else:
                raise SourceError(f"synthetic: unknown option '{key}' (frames, size=HxW, seed, fps, clip)")
        except ValueError:
            raise SourceError(f"synthetic: bad value '{value}' for '{key}'") from None
    try:
        return SyntheticSource(**kwargs)  # type: ignore[arg-type]
    except ValueError as exc:
        raise SourceError(str(exc)) from None


def open_source(spec: str) -> FrameSource:
    """A source from its name: a path to a DICOM file or folder, or `synthetic[:options]`."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _synthetic(spec.partition(":")[2])
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder (or use 'synthetic')")
    return DicomSource(path)
