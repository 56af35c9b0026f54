"""What state the daemon reports (heartbeats, `ctl status`, `/health`): the one rule for DEGRADED."""

from __future__ import annotations

import time
from typing import Any

from edge_runtime.core.protocol import DaemonState
from edge_runtime.daemon.slots import StreamTable
from edge_runtime.daemon.stats import DaemonStats

PRESSURE_WINDOW_NS = 2_000_000_000  # DEGRADED for this long after a served or declared stream lost a frame (slots.py)


def health(
    state: DaemonState,
    busy_since: float | None,
    deadline_ms: float,
    slots: StreamTable,
    stats: DaemonStats,
    backend_down: str | None = None,
) -> tuple[DaemonState, dict[str, Any]]:
    """The state to report, and why: DEGRADED while the backend says it cannot serve (`backend_down`: a Triton
    server down or too slow, until a request succeeds), while an inference has run past its deadline (a hung
    backend; `busy_since` is the monotonic start of the inference in progress), and for a while after the stream
    table refused a frame or dropped a stale one (frames refused or starved); else `state` as it is."""
    if state is not DaemonState.READY:
        return state, {}
    if backend_down is not None:
        return DaemonState.DEGRADED, {"backend_unavailable": {"reason": backend_down, "errors": stats.inference_errors}}
    if busy_since is not None:
        busy_ms = (time.monotonic() - busy_since) * 1000.0
        if busy_ms > deadline_ms:
            return DaemonState.DEGRADED, {"watchdog": {"busy_ms": round(busy_ms, 1), "deadline_ms": deadline_ms}}
    pressure = slots.last_pressure_ns
    if pressure and time.monotonic_ns() - pressure < PRESSURE_WINDOW_NS:
        ingest: dict[str, Any] = {
            "live_streams": slots.live_streams,
            "refused": stats.rejected_count("stream_limit", "pending_bytes"),
            "stale": stats.frames_stale,
        }
        return DaemonState.DEGRADED, {"ingest": ingest}
    return state, {}
