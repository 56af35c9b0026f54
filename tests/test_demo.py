"""`edgert demo`, the README's main command, end to end on a bounded number of frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_streams_the_bundled_cine_and_writes_overlays(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "demo", "--frames", "45", "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "end-to-end" in proc.stdout and "daemon stopped (exit status 0)" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    frames = summary["frames"]
    assert frames["sent"] + frames["dropped_sender"] == 45
    assert frames["received"] == frames["processed"] > 0
    assert frames["errors"] == frames["out_of_order"] == frames["rejected"] == 0
    for stage in ("end_to_end", "inference", "queue"):
        lat = summary["latency_ms"][stage]
        assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert summary["latency_ms"]["inference"]["p50"] <= summary["latency_ms"]["end_to_end"]["p50"]
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames > 10 and gif.size == (320, 240 + 28)
    with Image.open(out / "overlay_first.png") as png:
        assert png.mode == "RGB"


@pytest.mark.slow
@pytest.mark.parametrize("task, color", [("detection", (40, 255, 120)), ("classification", None)])
def test_demo_per_task_writes_overlays(tmp_path: Path, task: str, color: tuple[int, int, int] | None) -> None:
    """The bundled detector and classifier on their synthetic colonoscopy, the same files as the default demo."""
    out = tmp_path / task
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "demo", "--task", task, "--frames", "40", "--fps", "20",
         "--source", "synthetic-endoscopy:frames=40,size=240x320,clip=40,seed=5" + (",quality=mixed" if color is None else ""),
         "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"({task}," in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"]["received"] > 0 and summary["frames"]["errors"] == 0
    with Image.open(out / "overlay_last.png") as png:
        pixels = np.asarray(png.convert("RGB"))
    if color is not None:  # seed 5 shows two polyps throughout: their class color is drawn below the caption
        assert (pixels[28:] == color).all(axis=2).sum() > 20
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames > 5


@pytest.mark.slow
def test_the_detection_demo_draws_boxes_and_counts_them_against_the_generator(tmp_path: Path) -> None:
    """Its default source, as a new user runs it: boxes on the saved frames, in the GIF in their exact colour, and a
    count that the generator's own boxes check."""
    out = tmp_path / "det"
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "demo", "--task", "detection", "--frames", "60", "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = json.loads((out / "summary.json").read_text())["shown"]
    assert shown["boxes"] > 0 and shown["frames_with_boxes"] >= shown["results"] // 2
    truth = shown["truth"]
    assert truth["frames"] > 0 and truth["boxes"] > 0 and 0 < truth["found_at_iou_0_5"] <= truth["boxes"]
    assert f"shown   boxes on {shown['frames_with_boxes']} of {shown['results']} frames" in proc.stdout
    assert f"{truth['found_at_iou_0_5']} found at IoU >= 0.5" in proc.stdout
    green = (40, 255, 120)  # the card's polyp colour
    for still in ("overlay_first.png", "overlay_last.png"):
        with Image.open(out / still) as png:
            assert (np.asarray(png.convert("RGB"))[28:] == green).all(axis=2).sum() > 20, still
    with Image.open(out / "overlay.gif") as gif:
        gif.seek(gif.n_frames - 1)
        assert (np.asarray(gif.convert("RGB"))[28:] == green).all(axis=2).sum() > 20  # one palette keeps the colour


@pytest.mark.slow
def test_demo_whose_source_fails_part_way_exits_1_without_a_traceback(tmp_path: Path) -> None:
    """Every frame of this DICOM fails to render after its header was read: the failure happens in the scanner
    thread, and the demo reports it in one line and exits 1."""
    sys.path.insert(0, str(ROOT))
    from tests.calibration import make_dicom

    ds = make_dicom.float_pixels_nan()
    frames = np.full((3, 16, 24), np.nan, np.float32)
    ds.FloatPixelData = frames.tobytes()
    path = make_dicom.write(ds, tmp_path / "all_nan.dcm")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "demo", "--frames", "10", "--source", str(path),
         "--out", str(tmp_path / "demo")],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"error: {path}: frame 1 has NaN or infinite float pixel values" in proc.stderr
