"""The synthetic endoscopy generator: exact boxes and masks, frame-quality renderings, the source syntax."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.endoscopy import EndoscopyQuality, SyntheticEndoscopy
from calibration.preprocessing import Color
from calibration.sources import SourceError, open_source


def test_boxes_are_the_exact_extent_of_each_polyp_mask() -> None:
    gen = SyntheticEndoscopy(120, 160, seed=5, polyp_rate=1.0)
    seen = 0
    for _ in range(10):
        for f in gen.cine(4):
            assert f.image.shape == (120, 160, 3) and f.image.dtype == np.uint8
            assert len(f.boxes) == int(f.mask.max())
            for k, (x1, y1, x2, y2) in enumerate(f.boxes, start=1):
                rows, cols = np.nonzero(f.mask == k)
                assert (x1, y1, x2, y2) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
                seen += 1
    assert seen >= 10


def test_a_cine_moves_smoothly_and_a_seed_repeats() -> None:
    a = [f.image for f in SyntheticEndoscopy(96, 128, seed=2).cine(5)]
    b = [f.image for f in SyntheticEndoscopy(96, 128, seed=2).cine(5)]
    assert all((x == y).all() for x, y in zip(a, b))
    step = np.abs(a[1].astype(int) - a[0].astype(int)).mean()
    other_scene = np.abs(SyntheticEndoscopy(96, 128, seed=3).sample().image.astype(int) - a[0].astype(int)).mean()
    assert step < other_scene  # consecutive frames are closer than two scenes


def _sharpness(img: np.ndarray) -> float:
    g = img.astype(np.float32).mean(axis=2)
    return float(np.abs(np.diff(g, axis=1)).mean())


def test_quality_renderings_differ_as_named() -> None:
    gen = SyntheticEndoscopy(120, 160, seed=9)
    frames = {q: [gen.quality_frame(q).image for _ in range(6)] for q in EndoscopyQuality}
    brightness = {q: np.mean([f.mean() for f in v]) for q, v in frames.items()}
    sharp = {q: np.mean([_sharpness(f) for f in v]) for q, v in frames.items()}
    assert brightness[EndoscopyQuality.DARK] < 0.5 * brightness[EndoscopyQuality.CLEAR]
    assert sharp[EndoscopyQuality.BLURRED] < sharp[EndoscopyQuality.CLEAR]
    assert EndoscopyQuality.BUBBLES.label == "bubbles" and EndoscopyQuality.DARK.label == "too dark"


def test_synthetic_endoscopy_source() -> None:
    source = open_source("synthetic-endoscopy:frames=3,size=64x96,seed=1")
    frames = list(source)
    assert len(frames) == 3 and frames[0].color is Color.RGB and frames[0].pixels.shape == (64, 96, 3)
    assert "synthetic endoscopy" in source.description
    with pytest.raises(SourceError, match="synthetic-endoscopy: unknown option 'speed'"):
        open_source("synthetic-endoscopy:speed=2")
