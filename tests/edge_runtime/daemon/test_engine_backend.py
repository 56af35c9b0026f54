"""The daemon with `backend = "tensorrt"`: it asks its engine source before it reports ready, and every way that
can fail is a clear error at start, never a half-started daemon."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.backends import BackendKind
from edge_runtime.backends.engine_cache import EngineCache, OnMismatch, resolve
from edge_runtime.backends.trt_api import bindings_version
from edge_runtime.core.package import ModelPackage
from edge_runtime.daemon.config import DaemonConfig, IngestConfig
from edge_runtime.daemon.server import Daemon, DaemonError

LOOPBACK = "tcp://127.0.0.1:*"


def _config(model: Path) -> DaemonConfig:
    return DaemonConfig(
        model=model, backend=BackendKind.TENSORRT, warmup=0, ingest=IngestConfig(endpoint=LOOPBACK),
        results_endpoint=LOOPBACK, control_endpoint=LOOPBACK,
    )  # fmt: skip


def test_the_tensorrt_backend_without_an_engine_source_is_refused(demo_model: Path) -> None:
    daemon = Daemon(_config(demo_model))
    with pytest.raises(DaemonError, match="needs an engine source"):
        daemon.start()
    assert daemon.endpoints == {}  # nothing opened


def test_an_engine_cache_miss_with_building_off_names_the_fix(demo_model: Path, tmp_path: Path) -> None:
    from edge_runtime.backends.engine_cache import EngineKey, Platform

    asked: list[str] = []

    def lookup_only(package: ModelPackage, say: Callable[[str], None]) -> Path:
        asked.append(package.card.name)
        key = EngineKey(package.sha256, Platform("10.3.0", "Orin", "8.7"), "fp32")
        return resolve(EngineCache(tmp_path), key, OnMismatch.REBUILD, build=None, say=say)

    daemon = Daemon(_config(demo_model), engine_source=lookup_only)
    with pytest.raises(DaemonError, match=r"no engine for us-seg-demo.*run `edgert build PACKAGE`"):
        daemon.start()
    assert asked == ["us-seg-demo"]


def test_an_engine_that_cannot_be_loaded_stops_the_start(demo_model: Path, tmp_path: Path) -> None:
    if bindings_version() is not None:
        pytest.skip("TensorRT is installed here: the runner would try to deserialize the file")
    engine = tmp_path / "engine.plan"
    engine.write_bytes(b"not an engine")
    daemon = Daemon(_config(demo_model), engine_source=lambda package, say: engine)
    with pytest.raises(Exception, match="TensorRT is not installed"):
        daemon.start()


def test_serve_with_the_tensorrt_backend_fails_in_one_line_without_tensorrt(
    demo_model: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from converters.engine import installed_version
    from edge_runtime.cli import main

    if installed_version() is not None:
        pytest.skip("TensorRT is installed here")
    code = main(["serve", "--model", str(demo_model), "--backend", "tensorrt", "--ingest", "tcp://127.0.0.1:0",
                 "--results", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0"])  # fmt: skip
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "edgert serve" in line]
    assert len(err) == 1 and "TensorRT is not installed" in err[0]
