from __future__ import annotations

import threading

import numpy as np

from edge_runtime.daemon.slots import LatestFrameSlots
from edge_runtime.protocol import Frame, PixelFormat


def _frame(stream: int, seq: int) -> Frame:
    return Frame(stream, seq, 0, 0, PixelFormat.GRAY8, np.zeros((1, 1), np.uint8))


def test_newest_frame_wins_and_replacements_are_reported() -> None:
    slots = LatestFrameSlots()
    assert slots.put(_frame(0, 1), 10) is False
    assert slots.put(_frame(0, 2), 11) is True
    assert slots.put(_frame(0, 3), 12) is True
    pending = slots.take(0.0)
    assert pending is not None and pending.frame.seq == 3 and pending.recv_ts_ns == 12
    assert slots.take(0.0) is None


def test_streams_are_served_in_waiting_order() -> None:
    slots = LatestFrameSlots()
    slots.put(_frame(1, 1), 0)
    slots.put(_frame(2, 1), 0)
    slots.put(_frame(1, 2), 0)  # stream 1 was waiting first and keeps its turn
    taken = [slots.take(0.0), slots.take(0.0)]
    assert [(p.frame.stream_id, p.frame.seq) for p in taken if p] == [(1, 2), (2, 1)]


def test_take_waits_for_a_frame_and_close_wakes_it() -> None:
    slots = LatestFrameSlots()
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(slots.take(5.0)))
    t.start()
    slots.put(_frame(0, 9), 0)
    t.join(5.0)
    assert got and got[0].frame.seq == 9  # type: ignore[attr-defined]
    slots.put(_frame(0, 10), 0)
    assert slots.close() == 1
    assert slots.take(5.0) is None  # closed: returns at once
