"""The one ONNX Runtime session factory: the options it sets are the ones asked for, for the runner and for every
session a conversion times."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.backends import BackendKind, CpuOptions, Spin, create_runner
from edge_runtime.backends.sessions import CpuSetup, cpu_session, ort_error, session_options


def _cpus() -> tuple[int, ...]:
    return tuple(sorted(os.sched_getaffinity(0))[:2]) if hasattr(os, "sched_getaffinity") else ()


@pytest.mark.parametrize("spin", list(Spin))
def test_options_carry_threads_spinning_and_affinity(spin: Spin) -> None:
    import onnxruntime as ort

    setup = CpuSetup(0, CpuOptions(spin, worker_cpus=(0, 1)))
    options = session_options(setup)
    assert options.intra_op_num_threads == 3  # the calling thread plus one worker per worker CPU
    assert options.inter_op_num_threads == 1
    for key, value in setup.options.session_config(0).items():
        assert options.get_session_config_entry(key) == value
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options(CpuSetup(2), optimize=False).graph_optimization_level == (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    assert session_options(CpuSetup(2)).intra_op_num_threads == 2


def test_the_runner_and_a_conversion_session_get_the_same_options(demo_model: Path) -> None:
    setup = CpuSetup(2, CpuOptions(Spin.RUN, worker_cpus=_cpus()[1:]))
    with create_runner(BackendKind.ONNXRUNTIME, demo_model / "model.onnx", setup.threads, cpu=setup.options) as r:
        runner = r._session.get_session_options()  # type: ignore[attr-defined]
        out = r.infer({"image": np.zeros((1, 1, 192, 256), np.float32)})
    converter = cpu_session(demo_model / "model.onnx", setup).get_session_options()
    for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):
        assert runner.get_session_config_entry(key) == converter.get_session_config_entry(key)
    assert runner.intra_op_num_threads == converter.intra_op_num_threads == 2
    assert out["logits"].shape == (1, 4, 192, 256)


def test_a_setup_describes_itself_and_refuses_negative_threads() -> None:
    assert CpuSetup().describe() == "auto threads, spin always"
    assert CpuSetup(0, CpuOptions(Spin.NEVER, (2, 3))).describe() == "3 threads, spin never, workers on CPUs 2,3"
    with pytest.raises(ValueError, match="threads must be >= 0"):
        CpuSetup(-1)


def test_an_unloadable_model_is_named_by_ort_without_its_cpp_source_location(demo_model: Path) -> None:
    """A model newer than the ONNX Runtime here (IR 14 from onnx 1.23 against ORT 1.23, the last release for Python
    3.10): the reason is the message, not 250 characters of C++ signature."""
    import onnx

    model = onnx.load(str(demo_model / "model.onnx"))
    model.ir_version = 99
    with pytest.raises(Exception) as caught:
        cpu_session(model.SerializeToString())
    said = ort_error(caught.value)
    assert said.startswith("Unsupported model IR version: 99"), said
    assert ".cc:" not in said and "onnxruntime::" not in said
