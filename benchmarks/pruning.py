"""Pruning: channel pruning's speed/accuracy curve with and without the least-squares repair, the gated result with
and without INT8, and 2:4 sparsity at the gate, on the demo model and real third-party models, timed side by side.

    python benchmarks/pruning.py                                   # demo, ppocr_det, yolox_chars
    python benchmarks/pruning.py --models demo --ratios 0.2,0.4 --rounds 3
    python benchmarks/pruning.py --smoke                           # a tiny generated model, no download (CI)

Per model (zoo models are fetched as benchmarks/converter_zoo.py fetches them, with the same cards and data):

- **curve**: for each `--ratios` value, with the repair and without it (bias correction only), `prune_channels`
  removes that fraction of the weighted layers' time (the latency budget: profiled here, counted in this CPU's
  channel blocks). Metric: the card's task metric against the unpruned model on held-out frames (detection,
  which has no decoder yet, by the lowest cosine similarity of the raw outputs); FLOPs and parameters after.
- **gated**: `edgert convert --prune channels --prune-budget B` with the model's pruning tolerance (the targets:
  Dice >= 0.98 for the demo), and the same with `--precision int8` (tolerance `--int8-tolerance`).
- **2:4**: `edgert convert --prune 2:4` at the pruning tolerance: the fraction of the model's weights in layers
  made 2:4 and the metric. It brings no speed here (ONNX Runtime's CPU kernels are dense), so it is not timed.
- **speed**: the original, its prepared FP32 graph (edgert's folding and fusion, no pruning) and every pruned
  variant in the same interleaved rounds (`converters.timing.time_models`); speed-up = the prepared FP32
  graph's median over the variant's, so that it shows what pruning (and INT8) add.

Writes JSON (default benchmarks/results/pruning.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import converter_zoo as zoo  # noqa: E402

from calibration.sources import Sampling  # noqa: E402
from converters.convert import ConvertOptions, Precision, convert_model, load_model  # noqa: E402
from converters.data import load_feeds  # noqa: E402
from converters.evaluate import compare, head_of, run_model  # noqa: E402
from converters.prepare import PrepareOptions, prepare  # noqa: E402
from converters.prune import PruneOptions, conv_flops, plan_pruning, prune_channels  # noqa: E402
from converters.report import PruneMethod  # noqa: E402
from converters.timing import time_models  # noqa: E402
from edge_runtime.core.package import demo_package_path  # noqa: E402


@dataclass
class Subject:
    name: str
    architecture: str
    package: Path
    calib: str  # frame source for calibration (and the pruner)
    data: str  # frame source for evaluation
    tolerance: float  # the pruning gate's


def _subjects(args: argparse.Namespace, work: Path) -> list[Subject]:
    out = []
    wanted = args.models.split(",")
    if args.smoke:
        model, path = zoo.smoke_model(args.cache)
        pkg = zoo.write_package(model, zoo.fixed_shape(path, model, work / "smoke.onnx"), work / "smoke")
        source = "synthetic:frames=8,size=96x96"
        return [Subject("smoke", model.architecture, pkg, source, source, 0.5)]
    if "demo" in wanted:
        out.append(Subject("demo", "edgert's ultrasound U-Net (us-seg-demo)", demo_package_path(), "synthetic",
                           "synthetic", args.tolerance))  # fmt: skip
    for model in zoo.ZOO:
        if model.name not in wanted:
            continue
        fixed = zoo.fixed_shape(zoo.fetch(model, args.cache), model, work / f"{model.name}.onnx")
        pkg = zoo.write_package(model, fixed, work / model.name)
        h, w = model.shape[2], model.shape[3]
        folder = args.cache / "data" / model.name
        calib = zoo.make_images(folder / "calib", model.data, args.samples, seed=1, size=(h, w))
        evals = zoo.make_images(folder / "eval", model.data, args.samples, seed=2, size=(h, w))
        out.append(Subject(model.name, model.architecture, pkg, str(calib), str(evals), args.tolerance))
    return out


def _convert(subject: Subject, args: argparse.Namespace, **changes: Any) -> Any:
    settings: dict[str, Any] = {"calib": subject.calib, "data": subject.data, "samples": args.samples,
                                "tolerance": subject.tolerance, "prune_frames": args.frames,
                                # the data folder is cut into search and verify parts; the verdict judges classes
                                # with at least 3 frames of support in the smaller sets this script makes
                                "search_samples": args.samples, "verify_samples": args.samples, "min_support": 3,
                                **changes}  # fmt: skip
    options = ConvertOptions(**settings)
    start = time.perf_counter()
    result = convert_model(subject.package, options)
    return result, round(time.perf_counter() - start, 1)


def bench(subject: Subject, args: argparse.Namespace) -> dict[str, Any]:
    print(f"{subject.name}: {subject.architecture}", flush=True)
    original, card, _, _ = load_model(subject.package, None)
    prepared, _ = prepare(original, PrepareOptions())
    head = head_of(card)
    calib = load_feeds(subject.calib, prepared, card, Sampling(args.samples, seed=0)).feeds[: args.frames]
    evals = load_feeds(subject.data, prepared, card, Sampling(args.samples, seed=1)).feeds
    reference = run_model(original, evals)
    flops, params = conv_flops(prepared)
    models: dict[str, onnx.ModelProto] = {"original": original, "fp32": prepared}  # speed-ups are against the
    # prepared FP32 graph (folding and fusion only), so that they show what pruning adds
    rows: list[dict[str, Any]] = []
    ratios = [float(r) for r in args.ratios.split(",")]
    for repair in (True, False):
        start = time.perf_counter()
        plan = plan_pruning(prepared, calib, PruneOptions(repair=repair), head)
        plan_s = time.perf_counter() - start
        for ratio in ratios:
            start = time.perf_counter()
            pruned, rep = prune_channels(prepared, calib, PruneOptions(ratio=ratio, repair=repair), plan=plan)
            c = compare(reference, run_model(pruned, evals), head)
            key = f"{'repair' if repair else 'bias'}_{ratio:.2f}"
            models[key] = pruned
            rows.append({"variant": key, "ratio": ratio, "repair": repair, "metric": round(c.metric, 5),
                         "metric_name": c.metric_name, "flops_ratio": round(rep.flops_ratio, 4),
                         "params_ratio": round(rep.params_after / max(params, 1), 4),
                         "plan_s": round(plan_s, 1), "prune_s": round(time.perf_counter() - start, 1),
                         "kept": {lc.node: [lc.before, lc.after] for lc in rep.layers}})  # fmt: skip
            print(f"  {key}: FLOPs x{rep.flops_ratio:.2f}, {c.metric_name} {c.metric:.4f}", flush=True)

    gated: dict[str, Any] = {}
    for name, extra in (("gated", {}), ("gated_int8", {"precision": Precision.INT8, "tolerance": args.int8_tolerance})):
        result, seconds = _convert(subject, args, prune=PruneMethod.CHANNELS, prune_budget=args.budget, **extra)
        pr = result.report.prune
        entry: dict[str, Any] = {"passed": result.passed, "convert_s": seconds, "tolerance": extra.get("tolerance", subject.tolerance),
                                 "used": pr.used if pr else None, "attempts": [[a.ratio, a.metric] for a in pr.attempts] if pr else [],
                                 "flops_ratio": round(pr.details.flops_ratio, 4) if pr and pr.details else 1.0}  # fmt: skip
        if result.model is not None:
            models[name] = result.model
            c = compare(reference, run_model(result.model, evals), head)
            entry.update(metric=round(c.metric, 5), metric_name=c.metric_name)
            print(f"  {name}: used {entry['used']}, {c.metric_name} {c.metric:.4f} ({seconds} s)", flush=True)
        gated[name] = entry

    result, seconds = _convert(subject, args, prune=PruneMethod.SPARSE_2_4)
    sp = result.report.sparsity
    sparse: dict[str, Any] = {"convert_s": seconds, "tolerance": subject.tolerance}
    if sp is not None and result.model is not None:
        c = compare(reference, run_model(result.model, evals), head)
        sparse.update(layers=len(sp.applied), eligible=len(sp.eligible), weights_fraction=round(sp.fraction, 4),
                      verified=sp.verified, metric=round(c.metric, 5), metric_name=c.metric_name)  # fmt: skip
        print(f"  2:4: {len(sp.applied)}/{len(sp.eligible)} layers, {100 * sp.fraction:.1f}% of the weights, "
              f"{c.metric_name} {c.metric:.4f}", flush=True)  # fmt: skip

    names = list(models)
    times = time_models([models[n] for n in names], evals[:4], rounds=args.rounds, runs=args.runs)
    ms = dict(zip(names, times))
    for row in rows:
        row.update(ms=round(ms[row["variant"]], 3), speedup=round(ms["fp32"] / ms[row["variant"]], 3))
    for name, entry in gated.items():
        if name in ms:
            entry.update(ms=round(ms[name], 3), speedup=round(ms["fp32"] / ms[name], 3))
            print(f"  {name}: x{entry['speedup']:.2f}", flush=True)
    print(f"  {'variant':<12} {'FLOPs':>6} {'speed-up':>8} {'metric':>8}")
    for row in rows:
        print(
            f"  {row['variant']:<12} {row['flops_ratio']:6.2f} {row['speedup']:8.2f} {row['metric']:8.4f}", flush=True
        )
    return {"name": subject.name, "architecture": subject.architecture, "flops": flops, "params": params,
            "original_ms": round(ms["original"], 3), "fp32_ms": round(ms["fp32"], 3), "curve": rows, **gated, "sparse_2_4": sparse}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,ppocr_det,yolox_chars", help="demo and/or converter-zoo names")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5", help="fractions of the layers' time to remove")
    ap.add_argument("--budget", type=float, default=0.5, help="--prune-budget of the gated conversions")
    ap.add_argument("--tolerance", type=float, default=0.02, help="the pruning gate's (0.02: Dice >= 0.98)")
    ap.add_argument("--int8-tolerance", type=float, default=0.03, help="pruning + INT8 (0.03: Dice >= 0.97)")
    ap.add_argument("--samples", type=int, default=32, help="calibration and evaluation frames")
    ap.add_argument("--frames", type=int, default=16, help="calibration frames the pruner measures and refits on")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgert-zoo")
    ap.add_argument("--smoke", action="store_true", help="a tiny generated model, two ratios (no download)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "pruning.json")
    args = ap.parse_args()
    if args.smoke:
        args.ratios, args.samples, args.frames, args.rounds, args.runs = "0.2", 8, 4, 1, 2
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgert-pruning-") as tmp:
        results = [bench(s, args) for s in _subjects(args, Path(tmp))]
    meta = {"machine": zoo._cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": __import__("onnxruntime").__version__, "rounds": args.rounds, "runs": args.runs,
            "samples": args.samples, "frames": args.frames, "budget": args.budget}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "models": results}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
