"""One liveness and freshness rule: the pure rule, and the SDK's subscriber and the view's feed agreeing on a live socket."""

from __future__ import annotations

import time

import pytest
import zmq

from edge_runtime.core.protocol import DaemonState, Heartbeat, ModelId
from edge_runtime.integrations.view.feed import Feed
from edge_runtime.sdk.liveness import MONITOR_HEAD, Link, LinkStatus, Liveness, age_ms, is_fresh
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import FakeDaemon, wait_until

MODEL = ModelId("seg", "2.0", "cd" * 32)


def _hb(state: DaemonState = DaemonState.READY, interval_ms: float = 100.0) -> Heartbeat:
    return Heartbeat(state, time.time_ns(), 0, 0, 0, 0, MODEL, {"interval_ms": interval_ms})


def test_offline_after_missed_heartbeats_or_a_dropped_connection() -> None:
    live = Liveness(misses=2.5)
    assert live.status(0.0).link is Link.WAITING
    hb = Heartbeat(DaemonState.READY, 1, 0, 0, 0, 0, MODEL, {"interval_ms": 200})
    live.on_heartbeat(hb, now=10.0)
    assert live.timeout_s == pytest.approx(0.5)  # 2.5 intervals of the daemon's own heartbeat
    assert live.status(10.4).link is Link.ONLINE
    status = live.status(10.6)
    assert status.link is Link.OFFLINE and "no heartbeat" in status.reason and status.banner == "AI offline"
    live.on_result(now=11.0)
    assert live.status(11.1).link is Link.ONLINE
    live.on_disconnect()  # the daemon's process is gone: no need to wait for the timeout
    assert live.status(11.1).link is Link.OFFLINE
    live.on_heartbeat(hb, now=11.2)  # was queued before the drop: not a sign of life
    assert live.status(11.2).link is Link.OFFLINE
    live.on_connect()
    live.on_heartbeat(hb, now=12.0)  # back
    assert live.status(12.0).link is Link.ONLINE
    live.on_heartbeat(Heartbeat(DaemonState.STOPPING, 2, 0, 0, 0, 0, MODEL, {}), now=13.0)
    assert live.status(13.0).link is Link.STOPPED and live.status(13.0).banner == "AI offline (stopped)"
    live.on_result(now=14.0)  # a restarted daemon
    assert live.status(14.0).link is Link.ONLINE


def test_a_heartbeat_queued_before_a_drop_does_not_bring_the_daemon_back() -> None:
    """The race CI hit: the monitor's disconnect is read before a heartbeat that was already queued in the socket."""
    live = Liveness()
    live.on_heartbeat(_hb(), now=0.0)
    live.on_monitor([MONITOR_HEAD.pack(zmq.EVENT_DISCONNECTED, 7), b"tcp://127.0.0.1:1"])
    live.on_heartbeat(_hb(), now=0.05)  # a leftover
    live.on_result(now=0.06)
    assert live.status(0.07).link is Link.OFFLINE and "connection" in live.status(0.07).reason
    live.on_monitor([b"junk"])  # malformed monitor messages change nothing
    live.on_monitor([MONITOR_HEAD.pack(zmq.EVENT_HANDSHAKE_SUCCEEDED, 0), b"tcp://127.0.0.1:1"])
    assert live.status(0.08).link is Link.OFFLINE  # connected, but silent so far
    live.on_heartbeat(_hb(), now=0.1)
    assert live.status(0.1).link is Link.ONLINE


def test_an_announced_interval_that_is_not_a_sane_number_is_ignored() -> None:
    live = Liveness()
    for bad in (float("nan"), float("inf"), -5, 0, 1e9, True, "100"):
        live.on_heartbeat(Heartbeat(DaemonState.READY, 1, 0, 0, 0, 0, MODEL, {"interval_ms": bad}), now=0.0)
        assert live.interval_ms == 500.0, bad
    assert live.status(0.9).live and not live.status(1.1).live


def test_degraded_is_live_and_says_so() -> None:
    live = Liveness()
    live.on_heartbeat(_hb(DaemonState.DEGRADED), now=0.0)
    status = live.status(0.1)
    assert status.live and status.banner == "AI live (degraded)"
    assert LinkStatus(Link.WAITING, "").banner.startswith("AI offline")


def test_freshness_is_judged_on_the_capture_time_and_an_unknown_one_is_never_fresh() -> None:
    now = 10_000_000_000
    assert age_ms(now - 30_000_000, now) == pytest.approx(30.0)
    assert is_fresh(now - 30_000_000, now, 50.0) and not is_fresh(now - 60_000_000, now, 50.0)
    assert age_ms(0, now) == float("inf") and not is_fresh(0, now, 1e9)
    assert is_fresh(0, now, None)  # max_age_ms=None keeps everything


def test_the_sdk_subscriber_and_the_view_feed_give_the_same_banner_for_the_same_daemon(
    fake_daemon: FakeDaemon, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Heartbeats, DEGRADED, a gap, a dropped connection and STOPPING: both displays say the same at each step."""
    endpoint = f"tcp://127.0.0.1:{fake_daemon.port}"
    feed = Feed(endpoint, None)
    feed.start()
    try:
        with ResultSubscriber(endpoint, max_age_ms=None, context=zmq_ctx) as sub:

            def both(link: Link, banner: str, reason: str = "") -> bool:
                sub.recv(10)  # the SDK's subscriber learns when its owner reads it
                a, b = sub.link_status(), feed.status()
                return all(s.link is link and s.banner == banner and reason in s.reason for s in (a, b))

            wait_until(lambda: both(Link.ONLINE, "AI live"), timeout=5)
            fake_daemon.state = DaemonState.DEGRADED
            wait_until(lambda: both(Link.ONLINE, "AI live (degraded)"), timeout=2)
            fake_daemon.state = None  # a gap: more than two announced intervals (2 x 100 ms) of silence
            wait_until(lambda: both(Link.OFFLINE, "AI offline", "no heartbeat"), timeout=2)
            fake_daemon.state = DaemonState.READY
            wait_until(lambda: both(Link.ONLINE, "AI live"), timeout=5)
            fake_daemon.interval_ms = 5000.0  # a 10 s timeout from now: only the dropped connection can explain it
            time.sleep(0.1)
            fake_daemon.close()
            wait_until(lambda: both(Link.OFFLINE, "AI offline", "connection"), timeout=2)
            fake_daemon.open()
            wait_until(lambda: both(Link.ONLINE, "AI live"), timeout=5)
            fake_daemon.state = DaemonState.STOPPING
            wait_until(lambda: both(Link.STOPPED, "AI offline (stopped)"), timeout=2)
    finally:
        feed.stop()
