"""PNG charts for the pipeline benchmark, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

COLORS = {
    "floor": (120, 120, 120),
    "edgert": (40, 120, 200),
    "edgert-triton": (60, 170, 90),
    "imagezmq-reqrep": (220, 120, 40),
    "imagezmq-pubsub": (200, 60, 60),
}


def latency_chart(runs: list[Any], path: Path) -> None:
    """Per (size, rate) group, one bar per pipeline: p50 filled, p99 as a tick, on a log scale."""
    import math

    groups = sorted({(r.size, r.rate) for r in runs}, key=lambda g: [(r.size, r.rate) for r in runs].index(g))
    pipelines = list(dict.fromkeys(r.pipeline for r in runs))
    width, height, left, bottom, top = 90 + len(groups) * (26 * len(pipelines) + 30), 420, 60, 70, 40
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    values = [v for r in runs if r.latency_ms for v in (r.latency_ms["p50"], r.latency_ms["p99"])]
    lo, hi = math.log10(max(0.5, min(values))), math.log10(max(values) * 1.5)

    def y(ms: float) -> float:
        return height - bottom - (height - bottom - top) * (math.log10(max(ms, 10**lo)) - lo) / (hi - lo)

    d.text((left, 10), "End-to-end latency, ms (log): bar = p50, tick = p99", fill="black")
    for ms in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000):
        if lo <= math.log10(ms) <= hi:
            d.line((left - 4, y(ms), width - 10, y(ms)), fill=(230, 230, 230))
            d.text((5, y(ms) - 6), f"{ms}", fill="black")
    x = left + 10
    for size, rate in groups:
        for p in pipelines:
            r = next((r for r in runs if (r.size, r.rate, r.pipeline) == (size, rate, p)), None)
            if r is not None and r.latency_ms:
                d.rectangle((x, y(r.latency_ms["p50"]), x + 20, height - bottom), fill=COLORS.get(p, (0, 0, 0)))
                d.line((x - 2, y(r.latency_ms["p99"]), x + 22, y(r.latency_ms["p99"])), fill="black", width=2)
            x += 26
        d.text((x - 26 * len(pipelines), height - bottom + 6), f"{size}", fill="black")
        d.text((x - 26 * len(pipelines), height - bottom + 20), f"{rate} fps", fill="black")
        x += 30
    lx = left
    for p in pipelines:
        d.rectangle((lx, height - 22, lx + 10, height - 12), fill=COLORS.get(p, (0, 0, 0)))
        d.text((lx + 14, height - 24), p, fill="black")
        lx += 20 + 7 * len(p)
    img.save(path)


def overload_chart(runs: list[Any], path: Path) -> None:
    """Latency of every frame over the run when frames arrive twice as fast as the model runs."""
    width, height, left, bottom, top = 720, 380, 60, 50, 40
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    points = [(seq, ms) for r in runs for seq, ms in r.series]
    if not points:
        img.save(path)
        return
    max_seq = max(s for s, _ in points) or 1
    max_ms = max(ms for _, ms in points) * 1.1
    d.text((left, 10), f"Overload ({runs[0].rate} fps): end-to-end latency per frame, ms", fill="black")
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        yy = height - bottom - (height - bottom - top) * frac
        d.line((left, yy, width - 10, yy), fill=(230, 230, 230))
        d.text((5, yy - 6), f"{max_ms * frac:.0f}", fill="black")
    for r in runs:
        color = COLORS.get(r.pipeline, (0, 0, 0))
        pts = [
            (left + (width - left - 10) * s / max_seq, height - bottom - (height - bottom - top) * ms / max_ms)
            for s, ms in r.series
        ]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
    lx = left
    for r in runs:
        d.rectangle((lx, height - 22, lx + 10, height - 12), fill=COLORS.get(r.pipeline, (0, 0, 0)))
        d.text((lx + 14, height - 24), r.pipeline, fill="black")
        lx += 20 + 7 * len(r.pipeline)
    d.text((width - 120, height - bottom + 6), "frame index", fill="black")
    img.save(path)
