"""Prometheus metrics over HTTP (standard client library), read from the daemon's own counters at scrape time.

Served on localhost unless configured otherwise; each daemon has its own registry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from edge_runtime.core.protocol import DaemonState
from edge_runtime.daemon.stats import DaemonStats

log = logging.getLogger("edgert.metrics")


class MetricsSource(Protocol):
    """What metrics read from the daemon; the daemon satisfies it without metrics importing the daemon."""

    stats: DaemonStats

    @property
    def reloads(self) -> int: ...

    def status(self) -> dict[str, Any]: ...


class _DaemonCollector:
    def __init__(self, daemon: MetricsSource) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        snap = d.stats.snapshot()
        frames = CounterMetricFamily("edgert_frames", "Frames by outcome", labels=["outcome"])
        for outcome, key in (("in", "frames_in"), ("out", "frames_out"), ("dropped", "frames_dropped")):
            frames.add_metric([outcome], snap[key])
        yield frames
        rejected = CounterMetricFamily("edgert_frames_rejected", "Messages refused, by reason", labels=["reason"])
        for reason, count in snap["rejected_by_reason"].items():
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily(
            "edgert_inference_errors", "Frames whose inference failed", value=snap["inference_errors"]
        )
        yield CounterMetricFamily(
            "edgert_deadline_misses", "Inferences longer than the watchdog deadline", value=snap["deadline_misses"]
        )
        yield CounterMetricFamily("edgert_reloads", "Successful model reloads", value=d.reloads)
        yield CounterMetricFamily(
            "edgert_ingest_resets", "Ingest socket re-opened to drop a message", value=snap["ingest_resets"]
        )
        for stage, (buckets, total) in d.stats.histograms().items():
            h = HistogramMetricFamily(f"edgert_{stage}_seconds", f"Latency of the {stage} stage")
            h.add_metric([], buckets=buckets, sum_value=total)
            yield h
        stages = HistogramMetricFamily("edgert_stage_seconds", "Time a frame spends in each stage", labels=["stage"])
        for stage, (buckets, total) in d.stats.stage_histograms().items():
            stages.add_metric([stage.value], buckets=buckets, sum_value=total)
        yield stages
        status = d.status()
        ready = GaugeMetricFamily("edgert_ready", "1 when serving (model loaded, warmed up, not degraded)")
        ready.add_metric([], 1.0 if status["state"] == DaemonState.READY.name.lower() else 0.0)
        yield ready
        model = status.get("model") or {}
        info = GaugeMetricFamily(
            "edgert_model_info", "The model being served", labels=["name", "version", "sha256", "backend"]
        )
        info.add_metric(
            [model.get("name", ""), model.get("version", ""), model.get("sha256", ""), status["backend"]], 1.0
        )
        yield info


class MetricsServer:
    def __init__(self, daemon: MetricsSource, endpoint: str) -> None:
        host, _, port = endpoint.rpartition(":")
        self.registry = CollectorRegistry()
        self.registry.register(_DaemonCollector(daemon))
        self._server: Any
        self._server, self._thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        self.address = f"{host or '127.0.0.1'}:{self._server.server_port}"
        if host in ("0.0.0.0", "", "::"):
            log.warning("metrics served on all interfaces (%s)", endpoint)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
