"""Benchmarks are not tests: this only checks that each script starts and writes valid JSON on a tiny setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _smoke(script: str, tmp_path: Path, out_flag: str, out: Path) -> None:
    """A benchmark's --smoke run with its cache under tmp_path, writing its JSON to `out`."""
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--cache", str(tmp_path / "cache"), out_flag,
         str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip


def test_demo_model_speed_smoke(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "demo_model_speed.py"), "--seconds", "0.1", "--threads", "1",
         "--json", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["inference_per_s"] > 0 and report["pipeline_ms"]["p50"] > 0


def test_fp16_accuracy_smoke(tmp_path: Path) -> None:
    out = tmp_path / "fp16.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fp16_accuracy.py"), "--samples", "2", "--json", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 6 and all(r["passed"] for r in rows)


def test_pruning_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "pruning.json"
    _smoke("pruning.py", tmp_path, "--json", out)
    model = json.loads(out.read_text())["models"][0]
    assert {r["variant"] for r in model["curve"]} == {"repair_0.20", "bias_0.20"}
    assert all(r["speedup"] > 0 and 0 < r["flops_ratio"] < 1 for r in model["curve"])
    assert model["gated"]["passed"] and model["gated_int8"]["speedup"] > 0
    assert model["sparse_2_4"]["verified"] and model["sparse_2_4"]["weights_fraction"] > 0


def test_precision_benchmark_smoke(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "precision.py"), "--rounds", "1", "--iters", "3", "--samples", "4",
         "--out", str(tmp_path)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
    )  # fmt: skip
    rows = json.loads((tmp_path / "precision.json").read_text())["rows"]
    assert {(r["model"], r["precision"]) for r in rows} >= {("us-seg-demo", p) for p in ("fp32", "fp16", "int8")}
    timed = [r for r in rows if "refused" not in r]  # on 4 calibration frames the verdict may refuse INT8
    assert all(r["p50_ms"] > 0 and r["bytes"] > 0 for r in timed) and ("residual", "int8") not in {
        (r["model"], r["precision"]) for r in rows
    }  # INT8 is never judged on random tensors
    assert (tmp_path / "precision.png").stat().st_size > 0


def test_pipeline_benchmark_smoke(tmp_path: Path) -> None:
    pytest.importorskip("imagezmq", reason="the pipeline benchmark's peer needs the 'bench' extra")
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pipeline" / "run.py"), "--frames", "12", "--sizes", "120x160",
         "--rates", "30", "--rounds", "1", "--overload-frames", "20", "--out", str(tmp_path)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    report = json.loads((tmp_path / "pipeline.json").read_text())
    assert {r["pipeline"] for r in report["runs"]} == {"floor", "edgert", "imagezmq-reqrep", "imagezmq-pubsub"}
    assert all(r["received"] > 0 and r["latency_ms"]["p50"] > 0 for r in report["runs"])
    assert report["overload"] and all(r["series"] for r in report["overload"])
    assert report["machine"]["cores"] >= 1 and "daemon_peak_rss_mb" in report["targets"]
    assert (tmp_path / "pipeline_latency.png").stat().st_size > 0 and (tmp_path / "pipeline_overload.png").exists()


def test_soak_smoke(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--frames", "60", "--warmup-frames", "10", "--out", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["daemon"]["frames_out"] >= 60 and report["rss_mb"]["end"] > 0 and report["exit_status"] == 0


def test_attack_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "attack.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "attack.py"), "--seconds", "1.5", "--scenarios", "alone", "parts",
         "imz_alone", "--out", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=180,
    )  # fmt: skip
    scenarios = json.loads(out.read_text())["scenarios"]
    assert scenarios["alone"]["results"] > 0 and scenarios["alone"]["health"]["failed"] == 0
    assert scenarios["parts"]["rss_mb"]["peak"] > 0 and "p99_vs_alone" in scenarios["parts"]
    assert scenarios["imz_alone"]["results"] > 0 and scenarios["imz_alone"]["reply_ms"]["p99"] > 0


def test_attack_files_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "attack_files.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "attack_files.py"), "--scenarios", "dicom_liar", "reloads",
         "--reloads", "10", "--out", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=180,
    )  # fmt: skip
    scenarios = json.loads(out.read_text())["scenarios"]
    assert scenarios["dicom_liar"]["exit"] == 1 and "refused before decoding" in scenarios["dicom_liar"]["last_line"]
    assert scenarios["reloads"]["failed"] == 0 and scenarios["reloads"]["leftover_folders"] == 0


def test_int8_default_smoke(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "int8.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "int8_default.py"), "--model", str(tiny_models["unet_bn"]),
         "--rounds", "1", "--duration-s", "0.1", "--json", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert len(report["rounds"]) == 1 and report["rounds"][0]["fp32"] > 0 and report["median_speedup"] > 0
    assert "independent scenes" in report["conversion"]["calibration"]


def test_converter_zoo_smoke(tmp_path: Path) -> None:
    """The zoo script on a tiny generated model (no download): every variant converts, runs and is compared."""
    out = tmp_path / "zoo.json"
    variants = "fp32,edgert_int8,ort_default,ort_cpu_best"  # nncf is not a test dependency
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "converter_zoo.py"), "--smoke", "--cache", str(tmp_path / "cache"),
         "--rounds", "2", "--runs", "2", "--samples", "4", "--variants", variants, "--json", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    (model,) = json.loads(out.read_text())["models"]
    rows = {r["variant"]: r for r in model["rows"]}
    assert list(rows) == variants.split(",") and all(r["error"] is None for r in rows.values())
    assert rows["fp32"]["speedup"] == 1.0 and rows["fp32"]["metric"] == 1.0
    assert all(0.9 < r["metric"] <= 1.0 and r["ms"] > 0 for r in rows.values())
    assert out.with_suffix(".png").stat().st_size > 1000


def test_flicker_benchmark_smoke(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "flicker.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "flicker.py"), "--model", str(tiny_models["det_dense"]),
         "--frames", "6", "--clip", "3", "--json", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["ground_truth"]["recall_iou50"] == 1.0 and report["tracker"]["min_hits"] == 3
    assert {"events_per_s", "recall_iou50", "false_positives"} <= set(report["with_tracker"])


@pytest.mark.slow
def test_view_latency_benchmark_smoke(tmp_path: Path) -> None:
    """A few seconds of the display-latency benchmark: daemon, scanner, `edgert view` and headless Chromium."""
    out = tmp_path / "view.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "view_latency.py"), "--size", "120x160", "--fps", "15",
         "--seconds", "3", "--json", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    report = json.loads(out.read_text())
    display, to_view = report["display_latency_ms"], report["to_view_latency_ms"]
    assert display["n"] > 10 and 0 < to_view["p50"] < display["p50"]  # painting comes after pairing
    assert report["frames"]["painted"] > 10 and report["painted_fps"] > 5


@pytest.mark.slow
def test_imagezmq_ingest_benchmark_smoke(tmp_path: Path) -> None:
    """A few frames of the imagezmq sender benchmark: both sides send, get OK, and are timed."""
    out = tmp_path / "izmq.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "imagezmq_ingest.py"), "--frames", "10", "--size", "120x160",
         "--json", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    report = json.loads(out.read_text())
    for side in ("edgert_imagezmq_ingest", "imagezmq_hub_infer_then_reply"):
        assert report[side]["n"] == 10 and report[side]["replies"] == ["OK"] and report[side]["p50"] > 0


def test_reproducibility_smoke(tmp_path: Path) -> None:
    out = tmp_path / "repro.json"
    _smoke("reproducibility.py", tmp_path, "--out", out)
    rows = json.loads(out.read_text())["results"]
    assert [r["subject"] for r in rows] == ["tiny-int8", "tiny-prune"]
    for r in rows:  # the same command in fresh processes, and the plan replayed: the same bytes
        assert r["identical"] and r["replay_identical"] and len(r["runs"]) == 2 and r["runs"][0]["model_sha256"]
        assert r["unseen"] is not None and 0.0 <= r["unseen"]["lower_bound"] <= r["unseen"]["metric"] <= 1.0


def test_conversion_cost_smoke(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    _smoke("conversion_cost.py", tmp_path, "--out", out)
    (row,) = json.loads(out.read_text())["results"]
    assert row["fp16"]["exit"] == 0 and row["fp16"]["peak_rss_mib"] > row["model_mib"]
    assert row["activations_one_frame_mib"] > 0
    sens = row["prune_sensitivity"]
    assert sens["exit"] == 0 and 1 <= sens["whole_model_runs"] <= 2 * sens["families"]
