"""The demo model converted with default options, against FP32, measured with `edgert bench` in one run.

    python benchmarks/int8_default.py [--rounds 3] [--duration-s 5] [--json benchmarks/results/int8_default.json]

Runs, as a user would: `edgert convert PKG --precision int8 -o DIR` (no data options: the package's default
calibration and evaluation frames), then `edgert bench PKG` and `edgert bench DIR` alternately for `--rounds`
rounds on the same machine, and reports the median latency of each and their ratio per round. `--model` takes any
model package.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters.bench import machine_info  # noqa: E402
from edge_runtime.core.package import demo_package_path  # noqa: E402


def _edgert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, check=False)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=demo_package_path())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "int8_default.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8"
        convert = _edgert("convert", str(args.model), "--precision", "int8", "-o", str(out), "--json", "-", "-q")
        if convert.returncode != 0:
            raise SystemExit(f"convert failed ({convert.returncode}): {convert.stderr[-2000:]}")
        report = json.loads(convert.stdout)
        q, acc = report["int8"], report["accuracy"]
        print(f"converted in {report['seconds']} s: {q['int8_ops']} of {q['quantizable_ops']} ops INT8, "
              f"{acc['metric_name']} {acc['metric']:.4f}", flush=True)  # fmt: skip
        rounds = []
        for r in range(args.rounds):
            medians = {}
            for name, path in (("fp32", args.model), ("int8", out)):
                bench = _edgert("bench", str(path), "--duration-s", str(args.duration_s), "--json", "-", "-q")
                if bench.returncode != 0:
                    raise SystemExit(f"bench failed: {bench.stderr[-2000:]}")
                medians[name] = json.loads(bench.stdout)["latency_ms"]["median"]
            rounds.append({**medians, "speedup": round(medians["fp32"] / medians["int8"], 3)})
            print(f"round {r + 1}: FP32 {medians['fp32']:.2f} ms, INT8 {medians['int8']:.2f} ms, "
                  f"{rounds[-1]['speedup']:.2f}x", flush=True)  # fmt: skip
    result = {
        "model": str(args.model),
        "conversion": {"seconds": report["seconds"], "int8_ops": q["int8_ops"], "quantizable_ops": q["quantizable_ops"],
                       "method": q["method"], "metric_name": acc["metric_name"], "metric": acc["metric"],
                       "calibration": report["calibration_data"]["description"],
                       "evaluation": report["data"]["description"], "size_ratio": report["output"]["size_ratio"],
                       **{k: acc["comparison"].get(k) for k in ("f1", "kl_divergence", "top1_agreement",
                                                                "pixel_agreement") if acc["comparison"].get(k) is not None}},
        "rounds": rounds,
        "median_speedup": statistics.median(r["speedup"] for r in rounds),
        "machine": machine_info(),
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median speed-up {result['median_speedup']:.2f}x; wrote {args.json}")


if __name__ == "__main__":
    main()
