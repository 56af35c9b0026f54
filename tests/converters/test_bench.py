from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from converters.bench import SCHEMA, BenchOptions, ProgressBar, bench_runner
from edge_runtime.backends.onnxruntime import OnnxRuntimeRunner
from edge_runtime.cli import main


def test_bench_runner_honours_duration_and_iterations(tiny_models: dict[str, Path]) -> None:
    feed = {"image": np.zeros((1, 1, 16, 16), np.float32)}
    with OnnxRuntimeRunner(tiny_models["seg_tiny"] / "model.onnx", threads=1) as runner:
        result = bench_runner(runner, feed, BenchOptions(warmup_ms=20, duration_s=0.2, min_iterations=50))
    assert result["schema"] == SCHEMA
    assert result["iterations"] >= 50 and result["duration_s"] >= 0.2 and result["warmup"]["iterations"] >= 1
    lat = result["latency_ms"]
    assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert result["throughput_per_s"] == pytest.approx(result["iterations"] / result["duration_s"], rel=0.01)
    assert result["h2d_ms"] is None and result["d2h_ms"] is None and result["compute_ms"] == lat
    assert isinstance(result["cv_warning"], bool) and result["machine"]["cores"] >= 1


class _SplitRunner(OnnxRuntimeRunner):
    """ONNX Runtime on the CPU, reporting each inference's measured time as a fixed 1:6:1 split, as a GPU backend
    reports its CUDA-event times: this checks how bench aggregates the parts, nothing about a GPU."""

    def _infer(self, feed):  # type: ignore[no-untyped-def]
        import time

        start = time.perf_counter()
        out = super()._infer(feed)
        time.sleep(0.0005)  # long enough that the stats' rounding to 0.1 us is far below the split's resolution
        self._ms = (time.perf_counter() - start) * 1000.0
        return out

    def stage_times(self):  # type: ignore[no-untyped-def]
        from edge_runtime.backends import StageTimes

        return StageTimes(self._ms / 8, self._ms * 6 / 8, self._ms / 8)


def test_bench_reports_transfer_and_compute_times_where_the_backend_splits_them(tiny_models: dict[str, Path]) -> None:
    feed = {"image": np.zeros((1, 1, 16, 16), np.float32)}
    with _SplitRunner(tiny_models["seg_tiny"] / "model.onnx", threads=1) as runner:
        result = bench_runner(runner, feed, BenchOptions(warmup_ms=10, duration_s=0.1, min_iterations=20))
    h2d, compute, d2h = result["h2d_ms"], result["compute_ms"], result["d2h_ms"]
    assert h2d is not None and d2h is not None and compute != result["latency_ms"]
    assert compute["median"] == pytest.approx(6 * h2d["median"], rel=0.01)
    assert compute["max"] <= result["latency_ms"]["max"]


def test_bench_options_are_validated() -> None:
    with pytest.raises(ValueError):
        BenchOptions(duration_s=0)


def test_progress_bar_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar(1.0, stream)
        bar.update(0.5, 10)
        bar.close()
    assert "[###############" in tty.getvalue() and pipe.getvalue() == ""


def test_bench_command_writes_json(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    code = main(["bench", str(tiny_models["seg_tiny"]), "--duration-s", "0.2", "--warmup-ms", "10", "--threads", "1",
                 "--json", str(out)])  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    assert data["backend"] == "onnxruntime" and data["input_shapes"] == {"image": [1, 1, 16, 16]}
    assert "inferences/s" in capsys.readouterr().out


def test_bench_times_as_a_daemon_config_runs(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text('[model]\npackage = "pkg"\nthreads = 1\n[cpu]\nspin = "run"\n')
    out = tmp_path / "bench.json"
    args = ["bench", str(tiny_models["seg_tiny"]), "--duration-s", "0.1", "--warmup-ms", "10", "--config", str(config)]
    assert main([*args, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["threads"] == 1 and data["cpu"] == "1 threads, spin run"
    assert main([*args, "--spin", "never", "--threads", "2", "--json", str(out)]) == 0  # flags over the file
    assert json.loads(out.read_text())["cpu"] == "2 threads, spin never"
    assert "2 threads, spin never" in capsys.readouterr().out
    config.write_text("[cpu]\nspin = 3\n")
    assert main([*args]) == 1  # a broken config is an error, not ORT's defaults


def test_bench_of_a_converted_precision_reports_its_accuracy(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", str(tiny_models["unet_bn"]), "--precision", "int8", "--duration-s", "0.1",
                 "--data", "synthetic:clip=1,size=64x64", "--json", str(out)]) == 0  # fmt: skip
    conversion = json.loads(out.read_text())["conversion"]
    assert conversion["precision"] == "int8" and conversion["metric"] >= 0.99
    assert conversion["metric_name"] == "worst-class Dice / drawn components vs reference"


def test_bench_of_a_dynamic_model_needs_a_shape(
    tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", str(tiny_models["old_dynamic"]), "--duration-s", "0.1"]) == 1
    assert "static input shapes" in capsys.readouterr().err
    assert main(["bench", str(tiny_models["old_dynamic"]), "--input-shape", "1,3,32,32", "--duration-s", "0.1"]) == 0
