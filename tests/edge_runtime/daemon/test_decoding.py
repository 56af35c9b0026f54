"""The decode queue between the receive thread and the decode threads: newest wins per stream, streams take turns,
one frame of a stream in decode at a time, a decoded-bytes budget per stream, a bound on what waits."""

from __future__ import annotations

import threading

import pytest

from edge_runtime.core.protocol import RejectReason
from edge_runtime.daemon.decoding import DecodeLimits, DecodeQueue

MB = 1_000_000


def _queue(**limits: int) -> tuple[DecodeQueue[str], list[str]]:
    dropped: list[str] = []
    queue: DecodeQueue[str] = DecodeQueue(DecodeLimits(**limits), largest_frame_bytes=10 * MB, max_streams=8,
                                          on_drop=dropped.append)  # fmt: skip
    return queue, dropped


def test_newest_wins_per_stream_and_streams_take_turns() -> None:
    queue, dropped = _queue()
    for job in ("a1", "a2", "a3"):
        assert queue.offer(1, job, 1000, MB, now=0.0) is None
    assert queue.offer(2, "b1", 1000, MB, now=0.0) is None
    assert dropped == ["a1", "a2"] and queue.replaced == 2  # never decoded, and their owner is told
    assert queue.waiting_bytes == 2000
    first = queue.take(0)
    assert first == (1, "a3")
    queue.done(1)
    assert queue.take(0) == (2, "b1")


def test_a_stream_being_decoded_waits_and_the_others_go_first() -> None:
    """A stream that floods holds one decode thread at most: its next frame waits until its current one is done."""
    queue, _ = _queue()
    queue.offer(1, "flood-1", 1000, MB, now=0.0)
    assert queue.take(0) == (1, "flood-1")  # thread A decodes it
    queue.offer(1, "flood-2", 1000, MB, now=0.0)
    queue.offer(2, "probe-1", 1000, MB, now=0.0)
    assert queue.take(0) == (2, "probe-1")  # thread B: not the flood's second frame
    queue.done(2)
    assert queue.take(0) is None  # the flood's frame waits for its stream's decode to end
    queue.done(1)
    assert queue.take(0) == (1, "flood-2")


def test_the_decoded_bytes_budget_is_per_stream_and_refills() -> None:
    queue, _ = _queue(stream_bytes_per_s=20 * MB)
    assert queue.offer(1, "x", 100, 12 * MB, now=0.0) is None
    queue.take(0)
    queue.done(1)
    assert queue.offer(1, "y", 100, 12 * MB, now=0.1) is RejectReason.DECODE_BUDGET  # 8 + 2 MB left
    assert queue.offer(2, "z", 100, 12 * MB, now=0.1) is None  # another stream has its own budget
    assert queue.offer(1, "y", 100, 12 * MB, now=0.3) is None  # refilled at 20 MB/s
    assert queue.offer(1, "y2", 100, 12 * MB, now=0.3) is None  # replacing a waiting frame returns its charge


def test_a_frame_larger_than_one_second_of_budget_still_fits_an_empty_bucket() -> None:
    queue, _ = _queue(stream_bytes_per_s=1 * MB)
    assert queue.offer(1, "big", 100, 10 * MB, now=0.0) is None  # the largest frame the limits allow
    assert queue.offer(3, "too big", 100, 11 * MB, now=0.0) is RejectReason.DECODE_BUDGET


def test_what_waits_is_bounded_in_compressed_bytes() -> None:
    queue, _ = _queue(max_waiting_bytes=3000)
    assert queue.offer(1, "a", 2000, MB, now=0.0) is None
    assert queue.offer(2, "b", 2000, MB, now=0.0) is RejectReason.DECODE_QUEUE_FULL
    assert queue.offer(1, "a2", 2500, MB, now=0.0) is None  # a replacement frees its predecessor's bytes first


def test_close_wakes_the_decode_threads_and_drops_what_waits() -> None:
    queue, dropped = _queue()
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(queue.take(10)))
    thread.start()
    queue.offer(1, "taken", 10, MB, now=0.0)
    thread.join(5)
    assert got == [(1, "taken")]
    queue.offer(2, "left", 10, MB, now=0.0)
    assert queue.close() == 1 and dropped == ["left"]
    assert queue.take(1) is None and queue.offer(3, "late", 10, MB) is RejectReason.DECODE_QUEUE_FULL


@pytest.mark.parametrize("bad", [{"threads": 0}, {"threads": 17}, {"stream_bytes_per_s": 0}, {"max_waiting_bytes": -1}])
def test_limits_are_checked(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="decode"):
        DecodeLimits(**bad)
