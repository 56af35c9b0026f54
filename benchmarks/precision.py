"""FP32 vs FP16 vs INT8 on ONNX Runtime CPU: latency, size and accuracy, measured side by side in one run.

    python benchmarks/precision.py [--rounds 5] [--iters 100] [--threads 2] [--out benchmarks/results]

Each model is converted with the library (`edgert convert`), then every variant is timed in interleaved rounds
(FP32, FP16, INT8, FP32, ...), so that machine noise hits all of them alike. Accuracy is against the FP32 model on
held-out synthetic frames (mean foreground Dice), and for the demo model also against ground truth masks at frame
resolution. FP16 on a CPU runs through casts and is not expected to be fast here: it is for GPUs; its row shows
the cost. Writes precision.json and precision.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image, ImageDraw

from calibration.sources import Sampling
from calibration.synthetic import SyntheticUltrasound
from converters.convert import ConvertOptions, Precision, convert_model, write_result
from converters.data import load_feeds
from converters.evaluate import compare, head_of, run_model
from converters.int8 import QuantTarget
from edge_runtime.core.package import demo_package_path, load_package
from edge_runtime.core.protocol import Frame, PixelFormat
from edge_runtime.inference.pipeline import InferencePipeline

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = "synthetic:clip=1,seed=77"  # not the calibration data (seed 0)


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _time(
    sessions: dict[str, ort.InferenceSession], feed: dict[str, np.ndarray], rounds: int, iters: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(20):
            s.run(None, feed)
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(None, feed)
                samples[name].append((time.perf_counter() - t0) * 1000.0)
    return samples


def _dice_vs_truth(package_dir: Path, frames: int = 40) -> float:
    gen = SyntheticUltrasound(240, 320, seed=4242)
    inter = total = 0
    with InferencePipeline(load_package(package_dir), threads=2) as pipe:
        for i in range(frames):
            img, truth = gen.sample()
            r = pipe.run(Frame(0, i, 0, 0, PixelFormat.GRAY8, img), 0)
            mask = r.frame_mask()
            assert mask is not None
            for c in range(1, 4):
                p, t = mask == c, truth == c
                inter += int((p & t).sum())
                total += int(p.sum() + t.sum())
    return 2 * inter / total


def _chart(rows: list[dict], path: Path) -> None:
    """Grouped bars: median latency per model and precision, with the Dice vs FP32 written on each bar."""
    colors = {"fp32": (90, 110, 200), "fp16": (220, 150, 60), "int8": (70, 170, 100)}
    models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
    w, h, left, bottom, top = 180 * len(models) + 80, 420, 60, 60, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    peak = max(r["p50_ms"] for r in rows) * 1.15
    d.text((left, 10), "ONNX Runtime CPU, median latency (ms) - label: accuracy vs FP32", fill="black")
    d.line((left, h - bottom, w - 20, h - bottom), fill="black")
    for i, model in enumerate(models):
        x0 = left + 20 + i * 180
        for j, prec in enumerate(("fp32", "fp16", "int8")):
            row = next((r for r in rows if r["model"] == model and r["precision"] == prec), None)
            if row is None:
                continue
            bar_h = (h - bottom - top) * row["p50_ms"] / peak
            x = x0 + j * 50
            d.rectangle((x, h - bottom - bar_h, x + 40, h - bottom), fill=colors[prec])
            d.text((x, h - bottom - bar_h - 24), f"{row['p50_ms']:.2f}", fill="black")
            d.text((x, h - bottom - bar_h - 12), f"{row['vs_fp32']:.3f}", fill=(90, 90, 90))
            d.text((x + 6, h - bottom + 4), prec, fill="black")
        d.text((x0, h - bottom + 22), model[:26], fill="black")
    img.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32, help="calibration and evaluation frames")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "models"))
    from make_models import build

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        models = build(Path(tmp) / "models")
        cases = [
            ("us-seg-demo", demo_package_path(), "synthetic:clip=1"),
            ("unet_bn", models["unet_bn"], "synthetic:clip=1,size=64x64"),
            ("residual", models["residual"], "random"),  # no card: random inputs, cosine similarity
        ]
        for name, path, calib in cases:
            card = load_package(path).card if Path(path).is_dir() else None
            variants: dict[str, onnx.ModelProto] = {
                "fp32": onnx.load(str(load_package(path).onnx_path if card else path))
            }
            dirs = {"fp32": Path(path)}
            conversions = [("fp16", ConvertOptions(precision=Precision.FP16, data=calib, samples=args.samples))]
            if calib != "random":  # INT8 is never judged on random tensors
                conversions.append(("int8", ConvertOptions(precision=Precision.INT8, calib=calib, samples=args.samples,
                                                           target=QuantTarget.ONNXRUNTIME)))  # fmt: skip
            for prec, options in conversions:
                result = convert_model(path, options)
                if result.model is None:  # a refused conversion is a result too: it has no row to time
                    print(f"{name} {prec}: refused: {result.report.failure}", flush=True)
                    rows.append({"model": name, "precision": prec, "refused": result.report.failure})
                    continue
                variants[prec] = result.model
                dirs[prec] = Path(tmp) / f"{name}-{prec}"
                write_result(result, dirs[prec])
                acc = result.report.accuracy
                assert acc is not None
                print(f"{name} {prec}: {acc.metric_name} {acc.metric:.4f} (gate data)", flush=True)
            held_out = load_feeds(
                "random:seed=77" if card is None else HELD_OUT, variants["fp32"], card, Sampling(args.samples)
            ).feeds
            reference = run_model(variants["fp32"], held_out)
            sessions = {k: _session(m, args.threads) for k, m in variants.items()}
            samples = _time(sessions, held_out[0], args.rounds, args.iters)
            for prec, model in variants.items():
                outputs = run_model(model, held_out)
                vs = compare(reference, outputs, head_of(card))
                row = {
                    "model": name,
                    "precision": prec,
                    "bytes": model.ByteSize(),
                    "p50_ms": round(float(np.median(samples[prec])), 3),
                    "p99_ms": round(float(np.percentile(samples[prec], 99)), 3),
                    "vs_fp32": round(vs.metric, 5),
                    "metric": vs.metric_name,
                }
                if name == "us-seg-demo":
                    row["dice_vs_truth"] = round(_dice_vs_truth(dirs[prec]), 4)
                rows.append(row)
            base = next(r for r in rows if r["model"] == name and r["precision"] == "fp32")
            for r in rows:
                if r["model"] == name and "refused" not in r:
                    r["speedup_vs_fp32"] = round(base["p50_ms"] / r["p50_ms"], 3)
                    print(f"  {name:<12} {r['precision']}: p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
                          f"({r['speedup_vs_fp32']:.2f}x), {r['bytes'] / 1024:.0f} KiB, vs FP32 {r['vs_fp32']:.4f}"
                          + (f", Dice vs truth {r['dice_vs_truth']:.4f}" if "dice_vs_truth" in r else ""), flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "rows": rows,
        "held_out": HELD_OUT,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "onnxruntime": ort.__version__, "threads": args.threads},
    }  # fmt: skip
    (args.out / "precision.json").write_text(json.dumps(report, indent=2) + "\n")
    _chart([r for r in rows if "refused" not in r], args.out / "precision.png")


if __name__ == "__main__":
    main()
