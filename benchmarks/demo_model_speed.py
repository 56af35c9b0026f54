"""Demo model speed on this CPU: bare ONNX Runtime inference and the full per-frame pipeline, side by side.

    python benchmarks/demo_model_speed.py [--threads 2] [--seconds 5] [--json benchmarks/results/demo_model_speed.json]

The pipeline figure is what the daemon pays per frame: shared preprocessing of a 240x320 frame, inference,
argmax, mask resize to frame resolution, areas and contours. Both loops run in one process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from calibration.synthetic import SyntheticUltrasound
from edge_runtime.core.package import demo_package_path, load_package
from edge_runtime.core.protocol import Frame, PixelFormat
from edge_runtime.daemon.stats import percentiles_ms
from edge_runtime.inference.pipeline import InferencePipeline


def _timed(fn, seconds: float, min_iters: int = 50) -> list[int]:
    for _ in range(10):  # warm-up
        fn()
    samples: list[int] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < min_iters:
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/demo_model_speed.json"))
    args = parser.parse_args()

    pkg = load_package(demo_package_path())
    frames = [img for img, _ in (SyntheticUltrasound(240, 320, seed=s).sample() for s in range(8))]
    with InferencePipeline(pkg, threads=args.threads) as pipe:
        x, _ = pipe.preprocess(frames[0], pipe.preprocess.spec.color)
        feed = {pkg.card.input_name: x}
        bare = _timed(lambda: pipe.runner.infer(feed), args.seconds)
        counter = iter(range(10**9))

        def one_frame() -> None:
            i = next(counter)
            pipe.run(Frame(0, i, 0, 0, PixelFormat.GRAY8, frames[i % len(frames)]), 0)

        full = _timed(one_frame, args.seconds)
    report = {
        "model": str(pkg.model_id),
        "input_shape": list(pkg.card.preprocess.input_shape),
        "frame": "240x320 GRAY8",
        "threads": args.threads,
        "inference_ms": percentiles_ms(bare),
        "inference_per_s": round(1e9 / float(np.median(bare)), 1),
        "pipeline_ms": percentiles_ms(full),
        "pipeline_per_s": round(1e9 / float(np.median(full)), 1),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
        },
    }
    print(json.dumps(report, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
