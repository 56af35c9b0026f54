"""Synthetic B-mode ultrasound images with exact ground-truth masks.

Images are built the way a scanner forms them, so that a model trained on them sees the cues real ones carry:
an echogenicity map (layered tissue, anechoic vessels and cysts, hyperechoic lesions), multiplicative speckle
from a band-limited complex field (Rayleigh envelope), depth attenuation with time-gain compensation, and log
compression. Cysts show posterior acoustic enhancement and hyperechoic lesions cast a shadow, as in real scans.

Classes: 0 background, 1 vessel (elongated, anechoic, bright wall), 2 cyst (round, anechoic, enhancement below),
3 lesion (hyperechoic, shadow below). Only numpy is needed: the generator serves calibration, replay and tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from calibration.errors import OptionError

LABELS: tuple[str, ...] = ("background", "vessel", "cyst", "lesion")


@dataclass(frozen=True)
class _Blob:
    cls: int
    cy: float
    cx: float
    ry: float
    rx: float
    angle: float
    vy: float  # motion in px per frame, for cines
    vx: float


def _gaussian_blur(img: np.ndarray, sigma_y: float, sigma_x: float) -> np.ndarray:
    """Separable Gaussian blur through the FFT (periodic borders are fine for texture synthesis)."""
    h, w = img.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    transfer = np.exp(-2.0 * np.pi**2 * ((sigma_y * fy) ** 2 + (sigma_x * fx) ** 2))
    return np.fft.irfft2(np.fft.rfft2(img) * transfer, s=(h, w))


def _ellipse(shape: tuple[int, int], blob: _Blob, t: float, wobble: np.ndarray | None = None) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = blob.cy + blob.vy * t, blob.cx + blob.vx * t
    c, s = np.cos(blob.angle), np.sin(blob.angle)
    dy, dx = yy - cy, xx - cx
    u = (c * dx + s * dy) / blob.rx
    v = (-s * dx + c * dy) / blob.ry
    r = np.sqrt(u * u + v * v)
    if wobble is not None:  # irregular margin: radius modulated by a few harmonics of the polar angle
        theta = np.arctan2(v, u)
        r = r / (1.0 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(wobble)))
    radius: np.ndarray = r
    return radius


class SyntheticUltrasound:
    """Generates (image, mask) pairs; `image` is uint8 (H, W), `mask` uint8 class ids.

    The same seed always gives the same images, so held-out sets and tests are reproducible.
    """

    def __init__(self, height: int = 240, width: int = 320, seed: int = 0) -> None:
        if height < 32 or width < 32:
            raise OptionError(f"synthetic images need at least 32x32 pixels, got {height}x{width}")
        self.height = height
        self.width = width
        self._rng = np.random.default_rng(seed)

    def _sector(self) -> np.ndarray | None:
        """Field of view of a curvilinear/phased probe (a fan, black outside), or None for a linear probe."""
        h, w, rng = self.height, self.width, self._rng
        if rng.uniform() < 0.4:
            return None
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        apex_y = rng.uniform(-0.15, 0.02) * h
        half_angle = rng.uniform(0.5, 0.85)
        radius = rng.uniform(0.85, 1.05) * h - apex_y
        theta = np.arctan2(xx - w / 2 + rng.uniform(-0.05, 0.05) * w, yy - apex_y)
        dist = np.hypot(xx - w / 2, yy - apex_y)
        sector: np.ndarray = (np.abs(theta) < half_angle) & (dist < radius) & (yy >= 0)
        return sector

    def _scene(self) -> tuple[np.ndarray, list[_Blob], list[np.ndarray | None]]:
        h, w, rng = self.height, self.width, self._rng
        depth = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        # Layered soft tissue: a few horizontal interfaces with different echogenicity, gently curved.
        tissue = np.full((h, w), 0.55, np.float32)
        xs = np.linspace(0, 1, w, dtype=np.float32)[None, :]
        for _ in range(rng.integers(2, 5)):
            y0 = rng.uniform(0.1, 0.9)
            curve = y0 + 0.05 * np.sin(2 * np.pi * (xs * rng.uniform(0.3, 1.2) + rng.uniform()))
            tissue += np.where(depth > curve, rng.uniform(-0.15, 0.15), 0.0).astype(np.float32)
            tissue += 0.6 * np.exp(-(((depth - curve) * h / 1.5) ** 2)).astype(np.float32)  # bright fascia line
        tissue *= 1.0 + 0.25 * _gaussian_blur(rng.standard_normal((h, w)), h / 12, w / 12).astype(np.float32) * 8
        blobs: list[_Blob] = []
        wobbles: list[np.ndarray | None] = []
        scale = min(h, w)
        for _ in range(rng.integers(1, 5)):
            cls = int(rng.integers(1, 4))
            if cls == 1:  # vessel: elongated, near-horizontal (long-axis view)
                ry = rng.uniform(0.04, 0.08) * scale
                rx = ry * rng.uniform(2.5, 5.0)
                angle = rng.uniform(-0.35, 0.35)
                wobble = None
            elif cls == 2:  # cyst: round
                ry = rng.uniform(0.06, 0.13) * scale
                rx = ry * rng.uniform(0.85, 1.2)
                angle = rng.uniform(-np.pi, np.pi)
                wobble = None
            else:  # lesion: hyperechoic, irregular margin
                ry = rng.uniform(0.06, 0.12) * scale
                rx = ry * rng.uniform(0.8, 1.6)
                angle = rng.uniform(-np.pi, np.pi)
                wobble = np.stack([rng.uniform(0.0, 0.12, 3), rng.uniform(0, 2 * np.pi, 3)], axis=1)
            blobs.append(
                _Blob(
                    cls=cls,
                    cy=rng.uniform(0.2, 0.8) * h,
                    cx=rng.uniform(0.15, 0.85) * w,
                    ry=ry,
                    rx=rx,
                    angle=angle,
                    vy=rng.uniform(-0.3, 0.3),
                    vx=rng.uniform(-0.8, 0.8),
                )
            )
            wobbles.append(wobble)
        return tissue, blobs, wobbles

    def _render(
        self,
        tissue: np.ndarray,
        blobs: list[_Blob],
        wobbles: list[np.ndarray | None],
        sector: np.ndarray | None,
        gain: float,
        t: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w, rng = self.height, self.width, self._rng
        echo = tissue.copy()
        mask = np.zeros((h, w), np.uint8)
        rows = np.arange(h, dtype=np.float32)[:, None]
        for blob, wobble in zip(blobs, wobbles):
            r = _ellipse((h, w), blob, t, wobble)
            inside = r < 1.0
            if not inside.any():
                continue
            cols = np.any(inside, axis=0, keepdims=True)
            bottom = np.where(cols, h - 1 - np.argmax(inside[::-1], axis=0)[None, :], -1)
            below = (rows > bottom) & cols
            falloff = np.exp(-(rows - bottom) / (0.5 * h)).astype(np.float32)
            if blob.cls == 1:
                echo = np.where((r >= 1.0) & (r < 1.25), echo + 0.7, echo)  # echogenic vessel wall
                echo = np.where(inside, 0.03, echo)
            elif blob.cls == 2:
                echo = np.where(below, echo * (1.0 + 0.8 * falloff), echo)  # posterior enhancement
                echo = np.where(inside, 0.05, echo)
            else:
                echo = np.where(below, echo * (1.0 - 0.65 * falloff), echo)  # acoustic shadow
                echo = np.where(inside, echo * 0.4 + 1.3, echo)
            mask[inside] = blob.cls
        # Speckle: envelope of a band-limited complex Gaussian field (fully developed speckle is Rayleigh).
        field = rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))
        field = _gaussian_blur(field.real, 1.2, 0.8) + 1j * _gaussian_blur(field.imag, 1.2, 0.8)
        speckle = np.abs(field).astype(np.float32)
        speckle /= speckle.mean()
        depth = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        attenuation = np.exp(-1.2 * depth) * (1.0 + 0.9 * depth)  # attenuation partly undone by TGC
        env = np.clip(echo, 0.0, None) * speckle * attenuation
        img = np.log1p(30.0 * env) / np.log1p(30.0 * 3.0)  # log compression to display range
        img = np.clip(img * gain + rng.uniform(-0.03, 0.03), 0.0, 1.0)
        if sector is not None:  # nothing is imaged outside the fan: black pixels, background class
            img = np.where(sector, img, 0.0)
            mask = np.where(sector, mask, 0).astype(np.uint8)
        return (img * 255.0 + 0.5).astype(np.uint8), mask

    def _burn_in(self, img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scanner UI drawn over the image: text, a depth scale, sometimes a toolbar. Never anatomy: background."""
        h, w, rng = self.height, self.width, self._rng
        if rng.uniform() < 0.3:
            return img, mask
        canvas = Image.fromarray(img)
        draw = ImageDraw.Draw(canvas)
        font = ImageFont.load_default(size=int(rng.integers(8, 13)))
        chars = "ABCDEFGHIKLMNPRSTX0123456789 .:/%"
        for _ in range(rng.integers(2, 9)):
            text = "".join(rng.choice(list(chars), size=rng.integers(2, 8)))
            x = rng.uniform(0, 0.25) * w if rng.uniform() < 0.5 else rng.uniform(0.8, 0.95) * w
            draw.text((x, rng.uniform(0, 0.85) * h), text, fill=int(rng.integers(140, 256)), font=font)
        tick_x = int(rng.uniform(0.85, 0.97) * w)
        for y in range(int(rng.uniform(0.05, 0.2) * h), int(0.85 * h), int(rng.integers(8, 20))):
            draw.rectangle((tick_x, y, tick_x + 1, y + 1), fill=int(rng.integers(120, 220)))
        band = 0
        if rng.uniform() < 0.5:
            band = int(rng.uniform(0.05, 0.09) * h)
            draw.rectangle((0, h - band, w, h), fill=int(rng.integers(25, 80)))
            for x in range(int(rng.uniform(0, 0.1) * w), w - 20, int(rng.integers(30, 60))):
                draw.text((x, h - band + 1), "".join(rng.choice(list(chars), size=4)), fill=200, font=font)
        out = np.asarray(canvas).copy()
        mask = np.where(out != img, 0, mask).astype(np.uint8)  # pixels the UI drew over show no anatomy
        if band:
            mask[h - band :] = 0
        return out, mask

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One independent image and its mask."""
        tissue, blobs, wobbles = self._scene()
        return self._burn_in(*self._render(tissue, blobs, wobbles, self._sector(), self._gain(), 0.0))

    def _gain(self) -> float:
        return float(self._rng.uniform(0.45, 1.1))  # scanners are often run dim: real cines sit low in the range

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` independent pairs stacked as (n, H, W) arrays."""
        pairs = [self.sample() for _ in range(n)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def cine(self, frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """A moving scene: structures drift slowly while speckle decorrelates, as under a sliding probe."""
        tissue, blobs, wobbles = self._scene()
        sector, gain = self._sector(), self._gain()
        for t in range(frames):
            yield self._render(tissue, blobs, wobbles, sector, gain, float(t))
