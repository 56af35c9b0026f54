"""The TensorRT runner and build on a real GPU. Every test here needs TensorRT, pycuda and an NVIDIA GPU, and
skips with the reason where one is missing (this project's CI machines have no GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends import BackendKind, create_runner
from edge_runtime.backends.trt_api import bindings_version


def _gpu_reason() -> str | None:
    if bindings_version() is None:
        return "TensorRT's Python bindings are not installed"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA device"
    except Exception as exc:  # ImportError or a driver error
        return f"pycuda cannot reach a GPU ({exc.__class__.__name__})"
    return None


REASON = _gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"needs a GPU with TensorRT: {REASON}")]


@pytest.fixture(scope="module")
def demo_engine(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from converters.engine import BuildOptions, build_engine
    from edge_runtime.backends.engine_cache import EngineCache
    from edge_runtime.core.package import load_package

    cache = EngineCache(tmp_path_factory.mktemp("engines"))
    first = build_engine(load_package(demo_model), BuildOptions(workspace_mib=512), cache=cache)
    again = build_engine(load_package(demo_model), BuildOptions(workspace_mib=512), cache=cache)
    assert not first.cached and again.cached and again.engine == first.engine
    assert sum(first.layers.counts.values()) > 0
    return first.engine


def test_engine_outputs_match_onnxruntime_and_report_stage_times(demo_model: Path, demo_engine: Path) -> None:
    rng = np.random.default_rng(0)
    feed = {"image": rng.standard_normal((1, 1, 192, 256)).astype(np.float32)}
    with create_runner(BackendKind.ONNXRUNTIME, demo_model / "model.onnx") as cpu:
        want = cpu.infer(feed)["logits"]
    with create_runner(BackendKind.TENSORRT, demo_model / "model.onnx", engine=demo_engine) as gpu:
        got = gpu.infer(feed)["logits"]
        times = gpu.stage_times()
    assert got.shape == want.shape
    agree = (got.argmax(1) == want.argmax(1)).mean()
    assert agree > 0.99, agree
    assert times is not None and times.compute_ms > 0 and times.h2d_ms >= 0 and times.d2h_ms >= 0
