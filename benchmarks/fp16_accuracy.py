"""FP16 vs FP32 size and accuracy for the demo model and the converter test models.

    python benchmarks/fp16_accuracy.py [--samples 32] [--json benchmarks/results/fp16_accuracy.json]

Each model goes through `edgert convert --precision fp16` (the library call). Accuracy is the gate's figure:
the FP16 emulation against the FP32 original on the evaluation data. Segmentation reports mean foreground Dice
and argmax agreement; the models without a card report the minimum cosine similarity on random inputs. Sizes are
the serialized ONNX files. Test models are generated into a temporary folder by tests/models/make_models.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

from converters.convert import ConvertOptions, Precision, convert_model
from edge_runtime.core.package import demo_package_path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/fp16_accuracy.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "models"))
    from make_models import build

    with tempfile.TemporaryDirectory() as tmp:
        models = build(Path(tmp))
        cases = [
            ("us-seg-demo", demo_package_path(), "synthetic:clip=1", None),
            ("unet_bn", models["unet_bn"], "synthetic:clip=1,size=64x64", None),
            ("residual", models["residual"], "random", None),
            ("old_dynamic (opset 11)", models["old_dynamic"], "random", [1, 3, 32, 32]),
            ("fp16_overflow", models["fp16_overflow"], "synthetic:clip=1,size=64x64", None),
            ("fp16_cancellation", models["fp16_cancellation"], "synthetic:clip=1,size=64x64", None),
        ]
        rows = []
        for name, path, data, shape in cases:
            options = ConvertOptions(precision=Precision.FP16, data=data, samples=args.samples, input_shape=shape)
            naive = convert_model(path, ConvertOptions(**{**options.__dict__, "use_ranges": False, "max_fallback": 0}))
            result = convert_model(path, options)
            rep = result.report.to_json()
            acc = rep["accuracy"]
            comp = acc["comparison"]
            rows.append({
                "model": name,
                "data": rep["data"]["description"],
                "fp32_bytes": rep["input"]["size_bytes"],
                "fp16_bytes": rep["output"]["size_bytes"] if rep["output"] else None,
                "size_ratio": rep["output"]["size_ratio"] if rep["output"] else None,
                "metric": acc["metric_name"],
                "fp16_vs_fp32": round(acc["metric"], 5),
                "naive_fp16_vs_fp32": round(naive.report.to_json()["accuracy"]["metric"], 5),
                "pixel_agreement": comp["pixel_agreement"],
                "max_abs_err": comp["outputs"][0]["max_abs"],
                "nodes_fp16": rep["fp16"]["fp16_nodes"],
                "nodes_total": rep["fp16"]["nodes"],
                "kept_fp32": {n["node"]: n["reason"] for n in rep["fp16"]["fp32_nodes"]},
                "passed": rep["passed"],
            })  # fmt: skip
            r = rows[-1]
            print(
                f"{name:<24} {r['fp32_bytes'] / 1024:8.1f} KiB -> {(r['fp16_bytes'] or 0) / 1024:7.1f} KiB "
                f"({r['size_ratio']}x)  {r['metric']}: {r['fp16_vs_fp32']:.5f} (naive {r['naive_fp16_vs_fp32']:.5f})  "
                f"FP16 nodes {r['nodes_fp16']}/{r['nodes_total']}",
                flush=True,
            )
    report = {"rows": rows, "machine": {"python": platform.python_version(), "onnxruntime": ort.__version__}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
