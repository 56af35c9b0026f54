"""ONNX Runtime backends: provider chains, a clear error for a missing GPU provider, and no silent CPU fallback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_runtime.backends import BackendError, BackendKind, CpuOptions, GpuOptions, Spin, create_runner
from edge_runtime.backends.onnxruntime import (
    CPU,
    CUDA,
    TENSORRT,
    check_available,
    check_session,
    ort_cache_dir,
    provider_chain,
)


def test_provider_chains_put_the_requested_provider_first_and_the_cpu_last(tmp_path: Path) -> None:
    assert [n for n, _ in provider_chain(BackendKind.ONNXRUNTIME, GpuOptions(), None)] == [CPU]
    cuda = provider_chain(BackendKind.ONNXRUNTIME_CUDA, GpuOptions(device=1), None)
    assert [n for n, _ in cuda] == [CUDA, CPU] and cuda[0][1]["device_id"] == 1
    trt = provider_chain(
        BackendKind.ONNXRUNTIME_TENSORRT, GpuOptions(fp16=True, int8=True, workspace_mib=512), tmp_path
    )
    assert [n for n, _ in trt] == [TENSORRT, CUDA, CPU]
    options = trt[0][1]
    assert options["trt_fp16_enable"] and options["trt_int8_enable"]
    assert options["trt_max_workspace_size"] == 512 << 20
    assert options["trt_engine_cache_path"] == str(tmp_path) == options["trt_timing_cache_path"]
    with pytest.raises(BackendError, match="not an ONNX Runtime backend"):
        provider_chain(BackendKind.TENSORRT, GpuOptions(), None)


def test_a_missing_provider_is_an_error_that_says_how_to_get_it() -> None:
    chain = provider_chain(BackendKind.ONNXRUNTIME_CUDA, GpuOptions(), None)
    with pytest.raises(BackendError, match=r"no CUDAExecutionProvider here .*onnxruntime-gpu"):
        check_available(chain, ["CPUExecutionProvider"])
    check_available(chain, [CUDA, CPU])  # no error


def test_a_session_that_fell_back_to_the_cpu_is_refused() -> None:
    chain = provider_chain(BackendKind.ONNXRUNTIME_TENSORRT, GpuOptions(), None)
    with pytest.raises(BackendError, match="fell back to CUDAExecutionProvider, CPUExecutionProvider"):
        check_session(chain, [CUDA, CPU])
    check_session(chain, [TENSORRT, CUDA, CPU])


@pytest.mark.skipif(
    CUDA in ort.get_available_providers(), reason="this onnxruntime has the CUDA provider (a GPU build)"
)
def test_the_runner_refuses_a_gpu_backend_on_a_cpu_only_onnxruntime(demo_model: Path) -> None:
    runner = create_runner(BackendKind.ONNXRUNTIME_CUDA, demo_model / "model.onnx")
    with pytest.raises(BackendError, match="no CUDAExecutionProvider"):
        runner.activate()
    assert not runner.is_active


def test_the_cpu_runner_runs_on_the_cpu_provider(demo_model: Path) -> None:
    with create_runner(BackendKind.ONNXRUNTIME, demo_model / "model.onnx") as runner:
        out = runner.infer({"image": np.zeros((1, 1, 192, 256), np.float32)})
        assert runner.providers == [CPU]  # type: ignore[attr-defined]
        assert runner.stage_times() is None  # no transfers to split on the CPU
    assert out["logits"].shape == (1, 4, 192, 256)


def test_trt_provider_caches_get_one_folder_per_content_and_options(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"model a")
    b.write_bytes(b"model b")
    chain = provider_chain(BackendKind.ONNXRUNTIME_TENSORRT, GpuOptions(), None)
    fp16 = provider_chain(BackendKind.ONNXRUNTIME_TENSORRT, GpuOptions(fp16=True), None)
    folders = {
        ort_cache_dir(a, chain, tmp_path, "1.31.0"),
        ort_cache_dir(b, chain, tmp_path, "1.31.0"),
        ort_cache_dir(a, fp16, tmp_path, "1.31.0"),
        ort_cache_dir(a, chain, tmp_path, "1.32.0"),
    }
    assert len(folders) == 4
    assert ort_cache_dir(a, chain, tmp_path, "1.31.0") == ort_cache_dir(a, chain, tmp_path, "1.31.0")  # no drift


def test_the_tensorrt_backend_needs_an_engine(demo_model: Path) -> None:
    with pytest.raises(BackendError, match="runs a built engine"):
        create_runner(BackendKind.TENSORRT, demo_model / "model.onnx")


def test_spin_policies_become_session_config_entries() -> None:
    assert CpuOptions().session_config(0) == {
        "session.intra_op.allow_spinning": "1",
        "session.force_spinning_stop": "0",  # ONNX Runtime's default, measured the fastest (docs/LATENCY.md)
    }
    assert CpuOptions(Spin.RUN).session_config(0)["session.force_spinning_stop"] == "1"  # spin during runs only
    assert CpuOptions(Spin.NEVER).session_config(0) == {"session.intra_op.allow_spinning": "0"}


def test_worker_cpus_pin_one_worker_each() -> None:
    options = CpuOptions(worker_cpus=(2, 3))
    assert options.threads(0) == 3  # the calling thread and one worker per CPU
    assert options.session_config(0)["session.intra_op_thread_affinities"] == "2;3"
    assert options.session_config(5)["session.intra_op_thread_affinities"] == "2;3;2;3"  # more workers: in turn
    assert "session.intra_op_thread_affinities" not in CpuOptions(worker_cpus=(1,)).session_config(1)


@pytest.mark.parametrize("spin", list(Spin))
def test_onnxruntime_accepts_every_cpu_option(demo_model: Path, spin: Spin) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else []
    cpu = CpuOptions(spin, worker_cpus=tuple(cpus[1:]))
    with create_runner(BackendKind.ONNXRUNTIME, demo_model / "model.onnx", cpu=cpu) as runner:
        out = runner.infer({"image": np.zeros((1, 1, 192, 256), np.float32)})
        applied = runner._session.get_session_options()  # type: ignore[attr-defined]
        for key, value in cpu.session_config(0).items():
            assert applied.get_session_config_entry(key) == value
    assert out["logits"].shape == (1, 4, 192, 256)
