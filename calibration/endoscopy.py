"""Synthetic colonoscopy-like video with exact polyp boxes and masks, and frame-quality labels.

Nothing here is real anatomy: it is a generator with the look that matters to a detector and a frame-quality
classifier, so that the demo models can be trained, measured and converted here with no data set download.

A scene is a large canvas of mucosa (smooth reddish texture with fine vessels), dark curved folds and polyps
(irregular domes of varied size, shape and color, shaded as lit from the scope). A frame is a window on the
canvas that drifts along a smooth path (the scope moving), seen through the scope's light: vignetting, specular
highlights, sometimes bubbles, motion blur when the scope moves fast, and exposure changes. Each frame comes with
the polyps' exact masks and boxes in frame pixels (edges: a polyp covering columns 3..7 has x1 = 3, x2 = 8).

`EndoscopyQuality` names the frame-quality classes that `quality_frame` renders on purpose: clear, blurred,
bubbles, too dark.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from calibration.errors import OptionError


class EndoscopyQuality(enum.IntEnum):
    CLEAR = 0
    BLURRED = 1
    BUBBLES = 2
    DARK = 3

    @property
    def label(self) -> str:
        return {0: "clear", 1: "blurred", 2: "bubbles", 3: "too dark"}[int(self)]


@dataclass(frozen=True)
class EndoscopyFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # [K, 4] float32 x1, y1, x2, y2 in frame pixels (edges), one per visible polyp
    mask: np.ndarray  # (H, W) uint8: 0 background, k = polyp k (1-based, in `boxes` order)
    quality: EndoscopyQuality = EndoscopyQuality.CLEAR


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise: a random grid of about `cells` cells on the longer side, bilinearly upsampled to (h, w)."""
    gh, gw = max(2, round(cells * h / max(h, w)) + 2), max(2, round(cells * w / max(h, w)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    ys = np.linspace(0, gh - 1.001, h, dtype=np.float32)
    xs = np.linspace(0, gw - 1.001, w, dtype=np.float32)
    y0, x0 = ys.astype(np.intp), xs.astype(np.intp)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no grid creases
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    out: np.ndarray = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    return out


def _box_blur(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Motion blur along (dx, dy) pixels: the mean of shifted copies along the path."""
    steps = max(1, int(round(max(abs(dx), abs(dy)))))
    if steps <= 1:
        return img
    acc = np.zeros_like(img, dtype=np.float32)
    for t in np.linspace(-0.5, 0.5, steps):
        acc += np.roll(img, (int(round(t * dy)), int(round(t * dx))), axis=(0, 1))
    out: np.ndarray = acc / steps
    return out


@dataclass
class _Polyp:
    cy: float
    cx: float
    radius: float
    aspect: float
    angle: float
    harmonics: np.ndarray  # boundary irregularity: amplitude and phase of 3 harmonics
    color: np.ndarray  # RGB 0..1
    stalk: bool


class SyntheticEndoscopy:
    """Scenes and cines of synthetic colonoscopy. Deterministic for a seed."""

    def __init__(self, height: int = 240, width: int = 320, seed: int = 0, polyp_rate: float = 0.7) -> None:
        if height < 32 or width < 32:
            raise OptionError(f"synthetic endoscopy frames must be at least 32x32, got {height}x{width}")
        self.height, self.width = height, width
        self.rng = np.random.default_rng(seed)
        self.polyp_rate = polyp_rate
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self._yy, self._xx = yy, xx
        r2 = ((yy - height / 2) / (height / 2)) ** 2 + ((xx - width / 2) / (width / 2)) ** 2
        self._vignette = np.clip(1.0 - 0.45 * r2, 0.15, 1.0)[..., None]
        self._noise = self.rng.normal(0, 0.012, (8, height, width, 3)).astype(np.float32)  # sensor noise, reused

    # --- scene ---------------------------------------------------------------------------------------------------

    def _canvas(self, ch: int, cw: int) -> tuple[np.ndarray, list[_Polyp]]:
        rng = self.rng
        base = np.array([rng.uniform(0.68, 0.85), rng.uniform(0.28, 0.40), rng.uniform(0.25, 0.35)], np.float32)
        scale = max(ch, cw)
        tex = 0.08 * _smooth_noise(rng, ch, cw, 6) + 0.04 * _smooth_noise(rng, ch, cw, 24)
        img = np.clip(base[None, None, :] * (1.0 + tex[..., None]), 0, 1)
        vessels = np.abs(_smooth_noise(rng, ch, cw, 14))  # thin dark lines where the noise crosses zero
        img[..., 1:] *= (0.75 + 0.25 * np.clip(vessels / 0.08, 0, 1))[..., None]
        img[..., 0] *= 0.9 + 0.1 * np.clip(vessels / 0.08, 0, 1)
        yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
        for _ in range(int(rng.integers(1, 4))):  # folds: dark curved bands with a lit edge
            amp, freq, phase = rng.uniform(0.05, 0.2) * ch, rng.uniform(0.5, 2.0) * np.pi / cw, rng.uniform(0, 6.3)
            y0, width = rng.uniform(0.1, 0.9) * ch, rng.uniform(0.01, 0.03) * scale
            d = yy - (y0 + amp * np.sin(freq * xx + phase))
            shade = 1.0 - 0.5 * np.exp(-((d / width) ** 2)) + 0.12 * np.exp(-(((d - 1.5 * width) / width) ** 2))
            img *= shade[..., None]
        polyps: list[_Polyp] = []
        n = rng.poisson(1.6 * self.polyp_rate) if rng.uniform() < self.polyp_rate else 0
        for _ in range(n):
            hue = rng.uniform()
            color = np.array(
                [rng.uniform(0.75, 0.95), 0.35 + 0.25 * hue, 0.3 + 0.2 * rng.uniform()], np.float32
            )  # from redder than the mucosa to paler
            polyps.append(
                _Polyp(
                    cy=rng.uniform(0.15, 0.85) * ch,
                    cx=rng.uniform(0.15, 0.85) * cw,
                    radius=rng.uniform(0.035, 0.12) * scale,
                    aspect=rng.uniform(0.65, 1.0),
                    angle=rng.uniform(0, np.pi),
                    harmonics=np.stack([rng.uniform(0, 0.12, 3), rng.uniform(0, 6.3, 3)]),
                    color=color,
                    stalk=bool(rng.uniform() < 0.3),
                )
            )
        return img.astype(np.float32), polyps

    def _window(self, cy: float, cx: float, r: float) -> tuple[slice, slice]:
        """The frame rows and columns within `r` of (cy, cx): local work only, the frame is large."""
        y0, y1 = max(0, int(cy - r)), min(self.height, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r)), min(self.width, int(cx + r) + 2)
        return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))

    def _polyp_field(self, p: _Polyp, oy: float, ox: float, win: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """(inside mask, normalized radius 0 at the centre .. 1 at the rim) of a polyp, over the window `win`."""
        dy, dx = self._yy[win] - (p.cy - oy), self._xx[win] - (p.cx - ox)
        ca, sa = np.cos(p.angle), np.sin(p.angle)
        u, v = dx * ca + dy * sa, (-dx * sa + dy * ca) / p.aspect
        theta = np.arctan2(v, u)
        amp, phase = p.harmonics
        wobble = 1.0 + sum(amp[k] * np.cos((k + 2) * theta + phase[k]) for k in range(3))
        rho = np.sqrt(u * u + v * v) / (p.radius * wobble)
        return rho < 1.0, rho

    # --- frames --------------------------------------------------------------------------------------------------

    def cine(self, frames: int, quality: EndoscopyQuality | None = None) -> Iterator[EndoscopyFrame]:
        """`frames` consecutive frames of one scene: the view drifts smoothly (sometimes fast, with blur)."""
        rng = self.rng
        h, w = self.height, self.width
        ch, cw = int(h * 1.6), int(w * 1.6)
        canvas, polyps = self._canvas(ch, cw)
        start = np.array([rng.uniform(0, ch - h), rng.uniform(0, cw - w)])
        end = np.array([rng.uniform(0, ch - h), rng.uniform(0, cw - w)])
        wobble = rng.uniform(0, 6.3, 2)
        exposure = rng.uniform(0.85, 1.1)
        for i in range(frames):
            t = i / max(1, frames - 1)
            s = t * t * (3 - 2 * t)
            pos = start + (end - start) * s + 0.02 * np.array([h, w]) * np.sin(2 * np.pi * t + wobble)
            ds = 6 * t * (1 - t) / max(1, frames - 1)  # d(smoothstep)/di: the speed of the scope
            velocity = (end - start) * ds
            oy, ox = int(np.clip(round(pos[0]), 0, ch - h)), int(np.clip(round(pos[1]), 0, cw - w))
            yield self._render(canvas, polyps, oy, ox, velocity, exposure, quality)

    def sample(self, quality: EndoscopyQuality | None = None) -> EndoscopyFrame:
        """One independent frame (a new scene)."""
        return next(self.cine(1, quality))

    def _render(
        self,
        canvas: np.ndarray,
        polyps: list[_Polyp],
        oy: int,
        ox: int,
        velocity: np.ndarray,
        exposure: float,
        quality: EndoscopyQuality | None,
    ) -> EndoscopyFrame:
        rng = self.rng
        h, w = self.height, self.width
        img = canvas[oy : oy + h, ox : ox + w] * self._vignette
        mask = np.zeros((h, w), np.uint8)
        boxes: list[list[float]] = []
        light = np.array([-0.5, -0.6])  # light from the scope, up-left: domes are brighter on that side
        for p in polyps:
            win = self._window(p.cy - oy, p.cx - ox, p.radius * 1.5)
            if win[0].stop <= win[0].start or win[1].stop <= win[1].start:
                continue
            inside, rho = self._polyp_field(p, oy, ox, win)
            if not inside.any():
                continue
            dy, dx = (self._yy[win] - (p.cy - oy)) / p.radius, (self._xx[win] - (p.cx - ox)) / p.radius
            dome = np.sqrt(np.clip(1.0 - rho * rho, 0, 1))
            shade = 0.75 + 0.35 * dome + 0.25 * np.clip(-(dx * light[1] + dy * light[0]), -1, 1) * dome
            surface = p.color[None, None, :] * shade[..., None]
            edge = np.clip((1.0 - rho) / 0.12, 0, 1)[..., None]  # a soft rim blends into the mucosa
            local = img[win]
            local = np.where(inside[..., None], local * (1 - edge) + surface * edge, local)
            local[(rho > 1.0) & (rho < 1.12)] *= 0.8  # the dark shadow round a raised lesion
            img[win] = local
            k = len(boxes) + 1
            local_mask = mask[win]
            local_mask[inside & (local_mask == 0)] = k
            rows, cols = np.nonzero(local_mask == k)
            if len(rows):
                y0, x0 = win[0].start, win[1].start
                boxes.append([float(x0 + cols.min()), float(y0 + rows.min()), float(x0 + cols.max() + 1),
                              float(y0 + rows.max() + 1)])  # fmt: skip
        want = quality if quality is not None else EndoscopyQuality.CLEAR
        for _ in range(int(rng.integers(2, 8))):  # specular highlights: small saturated spots
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.004, 0.015) * max(h, w)
            win = self._window(cy, cx, 3 * r)
            squash = rng.uniform(0.5, 1.5)
            spot = np.exp(-(((self._yy[win] - cy) ** 2 + ((self._xx[win] - cx) * squash) ** 2) / (r * r)))
            img[win] += 0.9 * spot[..., None]
        bubbles = int(rng.integers(6, 14)) if want is EndoscopyQuality.BUBBLES else int(rng.uniform() < 0.15)
        for _ in range(bubbles):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.02, 0.07) * max(h, w)
            win = self._window(cy, cx, 1.3 * r)
            yy, xx = self._yy[win], self._xx[win]
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
            ring = np.exp(-(((d - 1.0) / 0.08) ** 2))
            glint = np.exp(-(((yy - cy + 0.4 * r) ** 2 + (xx - cx + 0.4 * r) ** 2) / (0.05 * r * r)))
            img[win] = img[win] * (1 - 0.1 * (d < 1)[..., None]) + 0.55 * ring[..., None] + 0.8 * glint[..., None]
        speed = float(np.hypot(*velocity))
        if want is EndoscopyQuality.BLURRED:
            angle = rng.uniform(0, np.pi)
            length = rng.uniform(0.03, 0.07) * max(h, w)
            img = _box_blur(img, length * np.cos(angle), length * np.sin(angle))
        elif speed > 1.5:
            img = _box_blur(img, float(velocity[1]), float(velocity[0]))
        gain = exposure * (rng.uniform(0.12, 0.3) if want is EndoscopyQuality.DARK else 1.0)
        img = img * gain + self._noise[rng.integers(0, 8)]
        image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        return EndoscopyFrame(image, np.asarray(boxes, np.float32).reshape(-1, 4), mask, want)

    def quality_frame(self, quality: EndoscopyQuality) -> EndoscopyFrame:
        """One frame rendered to show `quality` (the classifier's training and evaluation data)."""
        return self.sample(quality)
