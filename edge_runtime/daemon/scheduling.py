"""CPU placement and real-time priority for the daemon's threads (Linux; elsewhere they are reported unavailable).

On a cart the daemon shares a few cores with the display and the acquisition software. Two levers keep its
latency steady there, both off by default and set in `[cpu]`:
- affinity: the inference thread (and ONNX Runtime's workers, through the session's own option) on some cores,
  the receive and I/O threads on another, so that a frame is read and a result published without waiting for a
  core that inference holds;
- SCHED_FIFO for the receive and I/O threads (and ZeroMQ's own I/O threads): they run for microseconds per frame
  and then sleep, so a real-time priority lets them preempt everything else on the cart without starving it.
  Inference is never made real-time: it runs for tens of milliseconds at a time and would starve the display.
Setting a real-time priority needs CAP_SYS_NICE or an RLIMIT_RTPRIO allowance (systemd: `LimitRTPRIO=`, see
docs/LATENCY.md). A lever that cannot be applied is reported, and the daemon serves without it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import zmq

log = logging.getLogger("edgert.daemon")


def pin_current_thread(cpus: Sequence[int]) -> str | None:
    """Restrict the calling thread to `cpus`; returns why it could not, or None."""
    if not cpus:
        return None
    if not hasattr(os, "sched_setaffinity"):
        return "CPU affinity is not available on this platform"
    try:
        os.sched_setaffinity(0, set(cpus))  # 0: the calling thread (Linux schedules threads, not processes)
    except OSError as exc:
        return f"cannot pin to CPUs {sorted(cpus)}: {exc.strerror or exc}"
    return None


def realtime_current_thread(priority: int) -> str | None:
    """Give the calling thread SCHED_FIFO at `priority` (1..99); returns why it could not, or None."""
    if priority <= 0:
        return None
    if not hasattr(os, "sched_setscheduler"):
        return "real-time scheduling is not available on this platform"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        return (
            f"real-time priority {priority} not permitted (needs CAP_SYS_NICE or LimitRTPRIO={priority} in the "
            "systemd unit); serving at normal priority"
        )
    except OSError as exc:
        return f"cannot set real-time priority {priority}: {exc.strerror or exc}"
    return None


def place_current_thread(cpus: Sequence[int], priority: int) -> None:
    """[cpu] for the calling thread: pinned to `cpus`, SCHED_FIFO at `priority` (0: normal). A lever the system
    refuses is logged once for the thread, never fatal."""
    for problem in filter(None, (pin_current_thread(cpus), realtime_current_thread(priority))):
        log.warning("%s: %s", threading.current_thread().name, problem)


def realtime_permitted(priority: int) -> str | None:
    """Whether SCHED_FIFO at `priority` would be granted, tried on a throwaway thread; why not, or None. ZeroMQ
    aborts the process when it cannot apply the priority it was given to its I/O threads, so ask first."""
    outcome: list[str | None] = []
    thread = threading.Thread(target=lambda: outcome.append(realtime_current_thread(priority)), name="edgert-rt-probe")
    thread.start()
    thread.join()
    return outcome[0] if outcome else "the probe thread failed"


def configure_zmq_threads(ctx: zmq.Context[Any], cpus: Sequence[int], priority: int) -> str | None:
    """Give ZeroMQ's own I/O threads (they move every byte in and out) the I/O CPUs and the real-time priority;
    must run before the context's first socket. Returns why the priority was not applied, or None."""
    for cpu in cpus:
        ctx.set(zmq.THREAD_AFFINITY_CPU_ADD, cpu)
    if priority <= 0:
        return None
    problem = realtime_permitted(priority)
    if problem is None:
        ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_FIFO)
        ctx.set(zmq.THREAD_PRIORITY, priority)
    return problem


def release_freed_memory() -> None:
    """Give the heap a model's runner left behind back to the system. A deactivated ONNX Runtime session frees its
    memory to glibc's allocator, which keeps most of it mapped: without this, every reload (successful or not)
    left the daemon 20-30 MB larger. Called after a reload, off the inference thread; a no-op off glibc."""
    import ctypes
    import gc

    gc.collect()  # the old pipeline's cycles, so its buffers are free before the trim
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to trim
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
