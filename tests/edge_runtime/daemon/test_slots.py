from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_runtime.core.protocol import Frame, PixelFormat
from edge_runtime.daemon.slots import Admission, StreamLimits, StreamTable


def _frame(stream: int, seq: int) -> Frame:
    return Frame(stream, seq, 0, 0, PixelFormat.GRAY8, np.zeros((1, 1), np.uint8))


def test_newest_frame_wins_and_replacements_are_reported() -> None:
    slots = StreamTable()
    assert slots.put(_frame(0, 1), 10) is Admission.ACCEPTED
    assert slots.put(_frame(0, 2), 11) is Admission.REPLACED
    assert slots.put(_frame(0, 3), 12) is Admission.REPLACED
    pending = slots.take(0.0)
    assert pending is not None and pending.frame.seq == 3 and pending.recv_ts_ns == 12
    assert slots.take(0.0) is None


def test_streams_are_served_in_waiting_order() -> None:
    slots = StreamTable()
    slots.put(_frame(1, 1), 0)
    slots.put(_frame(2, 1), 0)
    slots.put(_frame(1, 2), 0)  # stream 1 was waiting first and keeps its turn
    taken = [slots.take(0.0), slots.take(0.0)]
    assert [(p.frame.stream_id, p.frame.seq) for p in taken if p] == [(1, 2), (2, 1)]


def test_take_waits_for_a_frame_and_close_wakes_it() -> None:
    slots = StreamTable()
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(slots.take(5.0)))
    t.start()
    slots.put(_frame(0, 9), 0)
    t.join(5.0)
    assert got and got[0].frame.seq == 9  # type: ignore[attr-defined]
    slots.put(_frame(0, 10), 0)
    assert slots.close() == 1
    assert slots.take(5.0) is None  # closed: returns at once


def _sized(stream: int, seq: int, nbytes: int) -> Frame:
    return Frame(stream, seq, 0, 0, PixelFormat.GRAY8, np.zeros((1, nbytes), np.uint8))


def test_new_streams_beyond_the_limit_are_refused_until_one_expires() -> None:
    slots = StreamTable(StreamLimits(max_streams=2, idle_ms=100))
    ms = 1_000_000
    assert slots.put(_frame(1, 1), 0, now_ns=0).accepted and slots.put(_frame(2, 1), 0, now_ns=0).accepted
    assert slots.put(_frame(3, 1), 0, now_ns=1 * ms) is Admission.STREAM_LIMIT
    assert slots.last_pressure_ns == 0  # a refused stranger is counted, not pressure: anyone could cause it
    assert slots.put(_frame(1, 2), 0, now_ns=2 * ms) is Admission.REPLACED  # a live stream is never refused
    slots.take(0.0), slots.take(0.0)  # both served; they stay live until idle
    assert slots.put(_frame(3, 1), 0, now_ns=50 * ms) is Admission.STREAM_LIMIT
    assert slots.put(_frame(3, 1), 0, now_ns=150 * ms) is Admission.ACCEPTED  # 1 and 2 idle for > 100 ms
    assert slots.live_streams == 1


def test_a_stream_with_a_waiting_frame_does_not_expire() -> None:
    slots = StreamTable(StreamLimits(max_streams=1, idle_ms=10))
    assert slots.put(_frame(1, 1), 0, now_ns=0).accepted
    assert slots.put(_frame(2, 1), 0, now_ns=10**9) is Admission.STREAM_LIMIT  # 1 still has a frame waiting


def test_waiting_bytes_are_bounded_and_a_replacement_frees_its_predecessor() -> None:
    slots = StreamTable(StreamLimits(max_pending_bytes=1000))
    assert slots.put(_sized(1, 1, 600), 0).accepted
    assert slots.put(_sized(2, 1, 600), 0) is Admission.PENDING_BYTES
    assert slots.last_pressure_ns == 0  # stream 2 was never served: nothing being served lost a frame
    assert slots.put(_sized(1, 2, 900), 0) is Admission.REPLACED  # 900 replaces 600: within budget
    assert slots.pending_bytes == 900
    assert slots.take(0.0) is not None and slots.pending_bytes == 0
    assert slots.put(_sized(2, 1, 600), 0).accepted


def test_frames_older_than_the_age_limit_are_dropped_not_served() -> None:
    stale: list[int] = []
    slots = StreamTable(StreamLimits(max_age_ms=50), on_stale=lambda: stale.append(1))
    import time

    slots.put(_frame(1, 1), 0, now_ns=time.monotonic_ns() - 100_000_000)  # waited 100 ms already
    slots.put(_frame(2, 1), 0)
    pending = slots.take(0.0)
    assert pending is not None and pending.frame.stream_id == 2
    assert slots.stale == 1 and stale == [1] and slots.last_pressure_ns > 0


def test_streams_are_served_round_robin_under_a_flood() -> None:
    """A stream that sends 10x faster gets no more turns than the others: each take serves the next stream."""
    slots = StreamTable()
    served = []
    for round_ in range(30):
        for stream in (1, 2, 3):
            for burst in range(10 if stream == 1 else 1):
                slots.put(_frame(stream, round_ * 10 + burst), 0)
        pending = slots.take(0.0)
        assert pending is not None
        served.append(pending.frame.stream_id)
    assert {s: served.count(s) for s in (1, 2, 3)} == {1: 10, 2: 10, 3: 10}


def test_a_live_stream_belongs_to_the_key_that_opened_it_until_it_expires() -> None:
    slots = StreamTable(StreamLimits(idle_ms=100))
    ms = 1_000_000
    assert slots.put(_frame(5, 1), 0, now_ns=0, owner="scanner").accepted
    assert slots.put(_frame(5, 2), 0, now_ns=1 * ms, owner="intruder") is Admission.STREAM_OWNER
    assert slots.put(_frame(5, 3), 0, now_ns=2 * ms, owner="scanner") is Admission.REPLACED
    assert slots.put(_frame(6, 1), 0, now_ns=3 * ms, owner="intruder").accepted  # its own stream
    assert slots.last_pressure_ns == 0  # an ownership refusal is not load: the owner's stream is served as usual
    slots.take(0.0), slots.take(0.0)
    assert slots.put(_frame(5, 4), 0, now_ns=500 * ms, owner="intruder").accepted  # the stream idled out: free again


def test_a_live_stream_refused_for_bytes_is_pressure() -> None:
    slots = StreamTable(StreamLimits(max_pending_bytes=1000))
    assert slots.put(_sized(1, 1, 600), 0, now_ns=5).accepted
    assert slots.put(_sized(2, 1, 300), 0, now_ns=6).accepted
    assert slots.put(_sized(2, 2, 500), 0, now_ns=7) is Admission.PENDING_BYTES  # live stream 2 loses a frame
    assert slots.last_pressure_ns == 7


def test_declared_stream_ids_refuse_every_other_id_before_the_table() -> None:
    slots = StreamTable(StreamLimits(max_streams=2, ids=(0, 7)))
    for sid in (1, 2, 3, 2**32 - 1):
        assert slots.put(_frame(sid, 1), 0, now_ns=1) is Admission.UNDECLARED_STREAM
    assert slots.live_streams == 0 and slots.pending_bytes == 0 and slots.last_pressure_ns == 0
    assert slots.put(_frame(7, 1), 0, now_ns=2) is Admission.ACCEPTED
    assert slots.put(_frame(0, 1), 0, now_ns=3) is Admission.ACCEPTED
    assert slots.live_streams == 2


@pytest.mark.parametrize(
    ("ids", "message"),
    [((-1,), "not a stream id"), ((2**32,), "not a stream id"), ((True,), "not a stream id"), ((3, 3), "twice")],
)
def test_declared_stream_ids_are_checked(ids: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StreamLimits(ids=ids)
    with pytest.raises(ValueError, match="max_streams is 2"):
        StreamLimits(max_streams=2, ids=(1, 2, 3))
