"""Draw a segmentation result onto its frame (numpy only), for viewers and the demo."""

from __future__ import annotations

import numpy as np

from edge_runtime.protocol import PixelFormat, Result, ResultStatus


def to_display_rgb(pixels: np.ndarray, pixel_format: PixelFormat) -> np.ndarray:
    """Any protocol frame as (H, W, 3) uint8 RGB for display."""
    if pixel_format is PixelFormat.GRAY16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixel_format is PixelFormat.GRAY32F:
        pixels = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if pixel_format is PixelFormat.BGR8:
        return np.ascontiguousarray(pixels[:, :, ::-1])
    return np.array(pixels, np.uint8)


def _draw_polygon(img: np.ndarray, poly: list[tuple[int, int]], color: np.ndarray, width: int) -> None:
    if len(poly) < 2:
        return
    pts = np.asarray(poly + [poly[0]], np.float64)
    h, w = img.shape[:2]
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.rint(np.linspace(x0, x1, n)).astype(np.intp)
        ys = np.rint(np.linspace(y0, y1, n)).astype(np.intp)
        for dy in range(-(width // 2), width - width // 2):
            for dx in range(-(width // 2), width - width // 2):
                img[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)] = color


def draw_overlay(
    frame_rgb: np.ndarray, result: Result, alpha: float = 0.35, contours: bool = True, line_width: int = 2
) -> np.ndarray:
    """A new RGB image: class colors blended over the frame, contours drawn on top.

    Refuses (ValueError) a result whose mask does not have the frame's size, so a result can never be drawn over
    the wrong frame geometry. An ERROR result draws nothing: the caller should show the frame without AI output.
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8 RGB, got {frame_rgb.dtype} {frame_rgb.shape}")
    out = frame_rgb.copy()
    if result.status is not ResultStatus.OK or result.mask is None:
        return out
    if result.mask.shape != frame_rgb.shape[:2]:
        raise ValueError(f"result mask {result.mask.shape} does not match frame {frame_rgb.shape[:2]}")
    palette = np.asarray(result.colors, np.float32)
    fg = result.mask > 0
    blended = out[fg].astype(np.float32) * (1.0 - alpha) + palette[result.mask[fg]] * alpha
    out[fg] = (blended + 0.5).astype(np.uint8)
    if contours:
        index = {name: i for i, name in enumerate(result.labels)}
        for name, polys in result.contours.items():
            if name not in index:
                raise ValueError(f"contour label '{name}' is not among the result's labels {result.labels}")
            color = np.asarray(result.colors[index[name]], np.uint8)
            for poly in polys:
                _draw_polygon(out, poly, color, line_width)
    return out
