"""[cpu] levers on the calling thread: affinity, and SCHED_FIFO where the system permits it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from edge_runtime.daemon.scheduling import (
    configure_zmq_threads,
    pin_current_thread,
    realtime_current_thread,
    realtime_permitted,
)

linux = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity and SCHED_FIFO are Linux's")


def available_cpus() -> set[int]:
    return set(os.sched_getaffinity(0))


def _in_thread(work: Callable[[], Any]) -> Any:
    """Run `work` on a fresh thread, so that nothing it changes sticks to the test's own thread."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(work()))
    thread.start()
    thread.join(10)
    return out[0]


@linux
def test_a_thread_is_pinned_to_the_cpus_given() -> None:
    cpu = min(available_cpus())
    problem, now = _in_thread(lambda: (pin_current_thread([cpu]), os.sched_getaffinity(0)))
    assert problem is None and now == {cpu}
    assert os.sched_getaffinity(0) == available_cpus()  # the test's thread is untouched


@linux
def test_a_cpu_that_does_not_exist_is_reported_not_raised() -> None:
    problem = _in_thread(lambda: pin_current_thread([4096]))
    assert problem is not None and "cannot pin to CPUs [4096]" in problem


def test_nothing_asked_nothing_done() -> None:
    assert pin_current_thread([]) is None and realtime_current_thread(0) is None


@linux
def test_realtime_priority_is_granted_or_refused_with_the_fix() -> None:
    def attempt() -> tuple[str | None, int]:
        return realtime_current_thread(5), os.sched_getscheduler(0)

    problem, policy = _in_thread(attempt)
    if problem is None:  # root, or CAP_SYS_NICE, or an RLIMIT_RTPRIO allowance
        assert policy == os.SCHED_FIFO
    else:
        assert "LimitRTPRIO=5" in problem and policy != os.SCHED_FIFO
    assert realtime_permitted(5) == problem  # the probe answers as the thread itself would
    assert os.sched_getscheduler(0) != os.SCHED_FIFO  # the probe changed nothing here


@linux
def test_zmq_io_threads_get_the_priority_only_when_permitted() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        problem = configure_zmq_threads(ctx, [min(available_cpus())], 5)
        policy = ctx.get(zmq.THREAD_SCHED_POLICY)
        assert policy == (os.SCHED_FIFO if problem is None else -1)  # -1: ZeroMQ's "leave it as it is"
        with ctx.socket(zmq.PUB) as sock:  # the I/O thread starts with the first socket, and must not abort
            sock.bind("tcp://127.0.0.1:*")
    finally:
        ctx.destroy(linger=0)
