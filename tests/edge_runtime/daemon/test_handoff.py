"""The reload hand-off: every offer ends exactly one way (taken, withdrawn, or stopped), and the daemon's reloads
that time out are withdrawn and deactivated, never served later, never leaked."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge_runtime.daemon.handoff import Handoff, OfferState
from edge_runtime.daemon.server import Daemon
from edge_runtime.sdk.sender import FrameSender
from tests.conftest import wait_until


def test_an_offer_is_taken_once_and_a_second_is_refused() -> None:
    slot: Handoff[str] = Handoff()
    first = slot.offer("a")
    assert slot.offer("b").state is OfferState.REFUSED  # never overwrites the pending one
    assert slot.take("old") == "a" and slot.take("a") is None
    assert slot.wait(first, 0.0) is OfferState.TAKEN
    assert first.replaced == "old"  # the waiter retires the item it replaced


def test_an_offer_not_taken_in_time_is_withdrawn_and_can_no_longer_be_taken() -> None:
    slot: Handoff[str] = Handoff()
    offer = slot.offer("a")
    assert slot.wait(offer, 0.01) is OfferState.WITHDRAWN
    assert slot.take("old") is None
    assert slot.offer("b").state is OfferState.PENDING  # the slot is free again


def test_close_withdraws_the_pending_offer_and_refuses_later_ones() -> None:
    slot: Handoff[str] = Handoff()
    offer = slot.offer("a")
    waited: list[OfferState] = []
    waiter = threading.Thread(target=lambda: waited.append(slot.wait(offer, 5.0)))
    waiter.start()
    assert slot.close() == "a"
    waiter.join(5)
    assert waited == [OfferState.STOPPED]  # the waiter learns that close()'s caller deactivates it
    assert slot.offer("b").state is OfferState.REFUSED


def test_take_and_withdraw_racing_never_both_win() -> None:
    """Thousands of races between the taker and a waiter giving up at once: each offer ends one way."""
    for _ in range(2000):
        slot: Handoff[int] = Handoff()
        offer = slot.offer(1)
        taken: list[int | None] = []
        taker = threading.Thread(target=lambda: taken.append(slot.take(0)))
        taker.start()
        state = slot.wait(offer, 0.0)
        taker.join()
        assert (state is OfferState.TAKEN) == (taken == [1]), (state, taken)


class Tracked:
    """Wraps a runner's deactivate to count calls."""

    def __init__(self, runner) -> None:  # type: ignore[no-untyped-def]
        self.calls = 0
        original = runner.deactivate

        def deactivate() -> None:
            self.calls += 1
            original()

        runner.deactivate = deactivate


def _reload(ctx: zmq.Context, endpoint: str, package: Path) -> dict:
    with ctx.socket(zmq.REQ) as req:
        req.setsockopt(zmq.LINGER, 0)
        req.connect(endpoint)
        req.send_string(json.dumps({"cmd": "reload", "package": str(package)}))
        assert req.poll(30_000), "no reply to reload"
        return json.loads(req.recv())


@pytest.mark.slow
def test_a_reload_the_busy_inference_thread_cannot_take_in_time_is_withdrawn(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], zmq_ctx: zmq.Context,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A slow fake runner holds the inference thread past the hand-off timeout: the new model is withdrawn and
    deactivated, the old one keeps serving, no reload is counted; the next reload, with the thread free, lands."""
    daemon = start_daemon(tiny_models["seg_tiny"], inference_deadline_ms=5000)
    daemon.reload_take_timeout_s = 0.3
    serving = daemon._pipeline
    assert serving is not None
    original, release = serving.runner.infer, threading.Event()

    def slow(feed):  # type: ignore[no-untyped-def]
        release.wait(5)
        return original(feed)

    serving.runner.infer = slow  # type: ignore[method-assign]
    loaded: list[Tracked] = []
    activate = daemon._activate

    def tracked_activate(package):  # type: ignore[no-untyped-def]
        pipeline = activate(package)
        loaded.append(Tracked(pipeline.runner))
        return pipeline

    monkeypatch.setattr(daemon, "_activate", tracked_activate)
    with FrameSender(daemon.endpoints["ingest"], context=zmq_ctx) as sender:
        wait_until(lambda: sender.send(np.zeros((16, 16), np.uint8)))
        wait_until(lambda: daemon._busy_since is not None)  # the inference thread is stuck in the slow runner
        reply = _reload(zmq_ctx, daemon.endpoints["control"], tiny_models["seg_tiny"])
        assert not reply["ok"] and "did not take it within 0.3 s; withdrawn" in reply["error"]
        assert loaded[0].calls == 1  # withdrawn and deactivated at once
        release.set()
        time.sleep(0.3)  # frames keep flowing: a withdrawn model must never be swapped in later
        assert daemon._pipeline is serving and daemon.reloads == 0 and daemon.reloads_refused == 1
        reply = _reload(zmq_ctx, daemon.endpoints["control"], tiny_models["seg_tiny"])
        assert reply["ok"], reply
        assert daemon._pipeline is not serving and daemon.reloads == 1 and loaded[1].calls == 0
    assert not serving.runner.is_active  # the replaced model was deactivated by the reload thread


@pytest.mark.slow
def test_stop_deactivates_a_reload_that_was_never_taken(
    start_daemon: Callable[..., Daemon], tiny_models: dict[str, Path], zmq_ctx: zmq.Context,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    daemon = start_daemon(tiny_models["seg_tiny"], inference_deadline_ms=5000)
    serving = daemon._pipeline
    assert serving is not None
    original, release = serving.runner.infer, threading.Event()
    serving.runner.infer = lambda feed: (release.wait(3), original(feed))[1]  # type: ignore[method-assign]
    loaded: list[Tracked] = []
    activate = daemon._activate
    monkeypatch.setattr(daemon, "_activate", lambda p: (pipe := activate(p), loaded.append(Tracked(pipe.runner)))[0])
    with FrameSender(daemon.endpoints["ingest"], context=zmq_ctx) as sender:
        wait_until(lambda: sender.send(np.zeros((16, 16), np.uint8)))
        wait_until(lambda: daemon._busy_since is not None)
        with zmq_ctx.socket(zmq.REQ) as req:
            req.setsockopt(zmq.LINGER, 0)
            req.connect(daemon.endpoints["control"])
            req.send_string(json.dumps({"cmd": "reload", "package": str(tiny_models["seg_tiny"])}))
            wait_until(lambda: daemon._handoff._offer is not None, timeout=10)  # loaded, waiting to be taken
            threading.Timer(0.2, release.set).start()  # the inference thread ends its frame while stop() runs
            daemon.stop()
    assert loaded and loaded[0].calls == 1  # exactly once, by stop(): never served, never leaked
    assert daemon.reloads == 0
