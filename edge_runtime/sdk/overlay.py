"""Draw a result onto its frame, for viewers and the demo: masks and contours (segmentation), boxes with label,
score and track id (detection), a banner with the top classes and a saliency heatmap (classification)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edge_runtime.core.protocol import Heatmap, PixelFormat, Result, ResultStatus, Task


def display_pixels(pixels: np.ndarray, pixel_format: PixelFormat) -> np.ndarray:
    """Any protocol frame as 8-bit pixels for display: gray stays (H, W), colour becomes (H, W, 3) RGB."""
    if pixel_format is PixelFormat.GRAY16:
        out: np.ndarray = (pixels >> 8).astype(np.uint8)
    elif pixel_format is PixelFormat.GRAY32F:
        out = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif pixel_format is PixelFormat.BGR8:
        out = np.ascontiguousarray(pixels[:, :, ::-1])
    else:
        out = np.ascontiguousarray(pixels, np.uint8)
    return out


def to_display_rgb(pixels: np.ndarray, pixel_format: PixelFormat) -> np.ndarray:
    """Any protocol frame as (H, W, 3) uint8 RGB for display."""
    out = display_pixels(pixels, pixel_format)
    return np.repeat(out[:, :, None], 3, axis=2) if out.ndim == 2 else np.array(out, np.uint8)


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


def _font(frame_height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(11, frame_height // 28))


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color: tuple[int, int, int],
           font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:  # fmt: skip
    """Text on a filled box of `color`, in black or white, whichever reads better on it."""
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=color)
    ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else (255, 255, 255)
    draw.text(xy, text, fill=ink, font=font)


def _draw_boxes(out: np.ndarray, result: Result, line_width: int) -> np.ndarray:
    h, w = out.shape[:2]
    for b in result.boxes:
        if b.x2 > w + 0.5 or b.y2 > h + 0.5:
            raise ValueError(f"box ({b.x1}, {b.y1}, {b.x2}, {b.y2}) is outside the {w}x{h} frame")
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    font = _font(h)
    for b in sorted(result.boxes, key=lambda b: b.score):  # the best box is drawn last, on top
        color = result.colors[b.class_id]
        draw.rectangle((b.x1, b.y1, max(b.x1, b.x2 - 1), max(b.y1, b.y2 - 1)), outline=color, width=line_width)
        text = f"{result.label(b.class_id)} {b.score:.2f}" + (f" #{b.track_id}" if b.track_id else "")
        size = draw.textbbox((0, 0), text, font=font)
        ty = b.y1 - (size[3] - size[1]) - 4 if b.y1 >= size[3] + 4 else b.y1 + 3
        _label(draw, (b.x1 + 2, ty), text, color, font)
    return np.array(image)  # a copy the caller owns


HEAT_STOPS = np.array([[0, 0, 128], [0, 96, 255], [0, 220, 220], [255, 230, 0], [255, 40, 0]], np.float32)


def heatmap_rgb(heat: Heatmap, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(colors (H, W, 3) float, strength (H, W) 0..1) of a heatmap smoothly upsampled to the frame."""
    plane = Image.fromarray(heat.values.astype(np.float32) / 255.0, mode="F")
    v = np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR))  # centre-aligned, edges clamped
    pos = v * (len(HEAT_STOPS) - 1)
    i = np.minimum(pos.astype(np.intp), len(HEAT_STOPS) - 2)
    f = (pos - i)[..., None]
    return HEAT_STOPS[i] * (1 - f) + HEAT_STOPS[i + 1] * f, v


def _draw_classes(out: np.ndarray, result: Result, alpha: float, saliency: bool) -> np.ndarray:
    h, w = out.shape[:2]
    if saliency and result.saliency is not None:
        colors, strength = heatmap_rgb(result.saliency, h, w)
        a = (alpha * 1.6 * strength)[..., None]  # no tint where the model did not look
        out = (out.astype(np.float32) * (1 - a) + colors * a + 0.5).astype(np.uint8)
    if not result.classes:
        return out
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    font = _font(h)
    top = result.classes[0]
    text = f"{result.label(top.class_id)} {top.score:.2f}"
    if len(result.classes) > 1:
        second = result.classes[1]
        text += f"   ({result.label(second.class_id)} {second.score:.2f})"
    _label(draw, (8, 6), text, result.colors[top.class_id], font)
    return np.array(image)  # a copy the caller owns


def draw_overlay(
    frame_rgb: np.ndarray,
    result: Result,
    alpha: float = 0.35,
    contours: bool = True,
    line_width: int = 2,
    saliency: bool = True,
) -> np.ndarray:
    """A new RGB image with the result drawn on the frame in the card's colors: class colors blended and contours
    (segmentation), boxes labelled with class, score and track id (detection), a banner with the top classes and
    the saliency heatmap (classification; `saliency=False` leaves the heatmap out).

    Refuses (ValueError) a result that does not fit the frame (a mask for another frame size, a box beyond it), so
    a result can never be drawn over the wrong frame geometry. An ERROR result draws nothing: the caller should
    show the frame without AI output.
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8 RGB, got {frame_rgb.dtype} {frame_rgb.shape}")
    out: np.ndarray = frame_rgb.copy()
    if result.status is not ResultStatus.OK:
        return out
    if result.task is Task.DETECTION:
        return _draw_boxes(out, result, line_width)
    if result.task is Task.CLASSIFICATION:
        return _draw_classes(out, result, alpha, saliency)
    if result.mask is None:
        return out
    if result.mask_covers != frame_rgb.shape[:2]:
        raise ValueError(f"result mask for a frame of {result.mask_covers} does not match frame {frame_rgb.shape[:2]}")
    mask = result.frame_mask()
    assert mask is not None
    palette = np.asarray(result.colors, np.float32)
    fg = mask > 0
    blended = out[fg].astype(np.float32) * (1.0 - alpha) + palette[mask[fg]] * alpha
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
