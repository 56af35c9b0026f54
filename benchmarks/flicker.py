"""Box flicker on replayed video, with and without the tracker.

    python benchmarks/flicker.py [--model PKG] [--frames 900] [--fps 30] [--json benchmarks/results/flicker.json]

Plays a synthetic colonoscopy cine (480x640, a new scene every 150 frames, a seed the detector never saw) through
the daemon's own pipeline (`InferencePipeline`: preprocessing, runner, `DetectionHead`, tracker) twice: with the
tracker off and with the card's tracker. Counts flicker as a viewer sees it, boxes appearing or disappearing
between consecutive frames (`edge_runtime.core.tracking.flicker_events`), per second of video, and sets it beside the
flicker of the exact ground-truth boxes (polyps really entering and leaving the view), which is the floor. Also
reports recall and false positives against the ground truth at IoU 0.5, so that a quieter display is not bought
with missed polyps unnoticed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration.endoscopy import SyntheticEndoscopy  # noqa: E402
from converters.bench import machine_info  # noqa: E402
from edge_runtime.core.package import demo_package_path, load_package  # noqa: E402
from edge_runtime.core.protocol import Box, Frame, PixelFormat, Task  # noqa: E402
from edge_runtime.core.tracking import Flicker, flicker_events, match  # noqa: E402
from edge_runtime.inference.pipeline import InferencePipeline  # noqa: E402


def _truth_boxes(boxes: np.ndarray) -> list[Box]:
    return [Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), 0, 1.0) for b in boxes]


def _row(flicker: Flicker, fps: float, shown: list[list[Box]], truth: list[list[Box]]) -> dict[str, float | int]:
    hits = sum(len(match(t, s, 0.5)) for t, s in zip(truth, shown))
    n_truth, n_shown = sum(map(len, truth)), sum(map(len, shown))
    return {
        "events_per_s": round(flicker.per_second(fps), 3),
        "appeared": flicker.appeared,
        "disappeared": flicker.disappeared,
        "recall_iou50": round(hits / n_truth, 4) if n_truth else 1.0,
        "false_positives": n_shown - hits,
        "boxes_shown": n_shown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=demo_package_path(Task.DETECTION))
    parser.add_argument("--frames", type=int, default=900)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--clip", type=int, default=150, help="frames per scene")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "flicker.json")
    args = parser.parse_args()
    package = load_package(args.model)
    spec = package.card.output.detection
    if spec is None:
        raise SystemExit(f"{args.model} is not a detection model")
    gen = SyntheticEndoscopy(480, 640, seed=args.seed)
    raw: list[list[Box]] = []
    tracked: list[list[Box]] = []
    truth: list[list[Box]] = []
    with (
        InferencePipeline(package, threads=2, tracking=False) as plain,
        InferencePipeline(package, threads=2, tracking=True) as steady,
    ):
        seq = 0
        while seq < args.frames:
            for f in gen.cine(min(args.clip, args.frames - seq)):
                frame = Frame(0, seq, 0, 0, PixelFormat.RGB8, f.image)
                raw.append(list(plain.run(frame, 0).boxes))
                tracked.append(list(steady.run(frame, 0).boxes))
                truth.append(_truth_boxes(f.boxes))
                seq += 1
            print(f"{seq} frames", flush=True)
    tracker = steady.tracker_spec
    result = {
        "model": str(package.model_id),
        "video": f"synthetic-endoscopy 480x640, {args.frames} frames at {args.fps:g} fps, a new scene every "
        f"{args.clip} frames, seed {args.seed}",
        "tracker": None
        if tracker is None
        else {
            "min_hits": tracker.min_hits,
            "window": tracker.window,
            "max_missed": tracker.max_missed,
            "iou": tracker.iou,
        },  # fmt: skip
        "ground_truth": _row(flicker_events(truth), args.fps, truth, truth),
        "without_tracker": _row(flicker_events(raw), args.fps, raw, truth),
        "with_tracker": _row(flicker_events(tracked), args.fps, tracked, truth),
        "machine": machine_info(),
    }
    for name in ("ground_truth", "without_tracker", "with_tracker"):
        r = result[name]
        assert isinstance(r, dict)
        print(f"{name:<16} {r['events_per_s']:7.2f} events/s  recall {r['recall_iou50']:.3f}  "
              f"false positives {r['false_positives']}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
