"""Newest-frame-wins hand-off between the receiver thread and the inference thread.

Each stream has one slot. A frame arriving while its stream's slot is still full replaces the older frame, which
is counted as dropped: inference always takes the newest frame, so latency stays bounded however fast frames come.
Streams are served in the order their pending frames started waiting, so one busy stream cannot starve another.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from edge_runtime.protocol import Frame


@dataclass(frozen=True)
class Pending:
    frame: Frame
    recv_ts_ns: int


class LatestFrameSlots:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._slots: OrderedDict[int, Pending] = OrderedDict()
        self._closed = False

    def put(self, frame: Frame, recv_ts_ns: int) -> bool:
        """Store the frame; True if it replaced one that was never inferred (that one is dropped)."""
        with self._cond:
            replaced = frame.stream_id in self._slots
            self._slots[frame.stream_id] = Pending(frame, recv_ts_ns)  # a replaced stream keeps its turn
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> Pending | None:
        """The newest frame of the stream that has waited longest, or None on timeout or close."""
        with self._cond:
            if not self._slots and not self._closed:
                self._cond.wait(timeout)
            if self._closed or not self._slots:
                return None
            return self._slots.popitem(last=False)[1]

    def close(self) -> int:
        """Wake the consumer and discard pending frames; returns how many were discarded."""
        with self._cond:
            self._closed = True
            discarded = len(self._slots)
            self._slots.clear()
            self._cond.notify_all()
            return discarded
