"""edgert runtime: wire protocol, inference daemon, backends and the integrator SDK.

The SDK names are importable from here (`from edge_runtime import FrameSender, ResultSubscriber`); they load on
first use, so `import edge_runtime` stays cheap on a display or scanner process.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FrameSender": "edge_runtime.sdk.sender",
    "ResultSubscriber": "edge_runtime.sdk.subscriber",
    "ControlClient": "edge_runtime.sdk.control",
    "EdgertError": "edge_runtime.core.errors",
    "draw_overlay": "edge_runtime.sdk.overlay",
    "typed": "edge_runtime.core.results",
    "to_display_rgb": "edge_runtime.sdk.overlay",
    "Daemon": "edge_runtime.daemon.server",
    "load_package": "edge_runtime.core.package",
    "InferencePipeline": "edge_runtime.inference.pipeline",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_runtime' has no attribute '{name}'")
