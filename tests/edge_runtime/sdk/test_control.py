"""The SDK's ControlClient against a real daemon, and the package's one exception base."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.core.errors import ControlError, DaemonUnavailable, EdgertError, EndpointError
from edge_runtime.daemon.server import Daemon
from edge_runtime.sdk.control import ControlClient


def test_status_stats_health_and_reload(start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path]) -> None:
    daemon = start_daemon(tiny_models["seg_tiny"])
    client = ControlClient(daemon.endpoints["control"])
    status = client.status()
    assert status["ok"] and status["state"] == "ready" and status["model"]["name"] == "seg-tiny"
    assert "frames_in" in client.stats()
    assert client.healthy() == (True, "ready")
    reply = client.reload(tiny_models["seg_tiny"])
    assert reply["ok"]


def test_a_refused_request_raises_the_daemons_reason(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    daemon = start_daemon(tiny_models["seg_tiny"])
    client = ControlClient(daemon.endpoints["control"])
    with pytest.raises(ControlError, match="unknown command 'launch'"):
        client.request("launch")
    with pytest.raises(ControlError, match="reload refused"):
        client.reload(tmp_path / "no-such-package")
    assert client.exchange("launch")["ok"] is False  # exchange returns the refusal as it is


def test_no_daemon_and_a_bad_endpoint_are_typed_errors() -> None:
    with pytest.raises(DaemonUnavailable, match="no answer from the daemon at tcp://127.0.0.1:9 within 0.1 s"):
        ControlClient("tcp://127.0.0.1:9", timeout_s=0.1).status()
    assert ControlClient("tcp://127.0.0.1:9", timeout_s=0.1).healthy()[0] is False
    with pytest.raises(EndpointError, match="bogus"):
        ControlClient("bogus").status()


ERROR_MODULES = [
    "edge_runtime.core.wire", "edge_runtime.core.card", "edge_runtime.daemon.config", "edge_runtime.daemon.server",
    "edge_runtime.sdk.security", "edge_runtime.backends.base", "edge_runtime.tools.demo", "edge_runtime.core.errors",
    "calibration.errors", "calibration.dicom", "calibration.cache", "converters.graph", "edge_runtime.cli.common",
]  # fmt: skip


@pytest.mark.parametrize("module", ERROR_MODULES)
def test_every_error_the_package_defines_derives_from_one_base(module: str) -> None:
    errors = [
        cls
        for _, cls in inspect.getmembers(importlib.import_module(module), inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == module
    ]
    assert errors, module
    assert all(issubclass(cls, EdgertError) for cls in errors), [c.__name__ for c in errors]


def test_every_error_in_every_module_derives_from_the_one_base() -> None:
    """Not only the modules named above: every module of the three packages (training scripts aside: torch)."""
    import pkgutil

    stray = []
    for package in ("edge_runtime", "converters", "calibration"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if ".models." in info.name or info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            stray += [
                f"{info.name}.{name}"
                for name, cls in inspect.getmembers(module, inspect.isclass)
                if issubclass(cls, Exception) and cls.__module__ == info.name and not issubclass(cls, EdgertError)
            ]
    assert not stray


def test_the_sdk_raises_typed_errors_for_bad_endpoints_and_frames() -> None:
    import numpy as np

    from edge_runtime.core.errors import FrameError
    from edge_runtime.sdk.sender import FrameSender
    from edge_runtime.sdk.subscriber import ResultSubscriber

    with pytest.raises(EndpointError, match="cannot connect frame sender to nowhere"):
        FrameSender("nowhere")
    with pytest.raises(EndpointError, match="cannot connect result subscriber"):
        ResultSubscriber("nowhere")
    with FrameSender("tcp://127.0.0.1:9") as sender, pytest.raises(FrameError, match="cannot send an array"):
        sender.send(np.zeros((4, 4, 2), np.uint8))
