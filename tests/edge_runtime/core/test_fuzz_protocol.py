"""Fuzzing the frame decoder: whatever arrives, it returns a consistent Frame or raises ProtocolError.

CI runs a bounded number of cases; a long run is one command away:
    FUZZ_EXAMPLES=200000 python3 -m pytest tests/edge_runtime/core/test_fuzz_protocol.py
"""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.core.protocol import FRAME_HEADER_SIZE, Limits, ProtocolError, decode_frame, encode_frame

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
CORPUS = Path(__file__).parent / "corpus" / "malformed_frames.txt"
LIMITS = Limits(max_width=4096, max_height=4096)
VALID = [bytes(p) for p in encode_frame(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), stream_id=1, seq=2,
                                        capture_ts_ns=3, send_ts_ns=4, meta={"k": 1})]  # fmt: skip


def _check(parts: list[bytes]) -> None:
    try:
        frame = decode_frame(parts, LIMITS)
    except ProtocolError:
        return
    # Accepted: everything must agree with the bytes actually received.
    assert frame.pixels.nbytes <= len(parts[1])
    assert 0 < frame.width <= LIMITS.max_width and 0 < frame.height <= LIMITS.max_height
    assert not frame.pixels.flags.writeable
    frame.pixels.sum()  # touching every pixel must stay inside the buffer


def _corpus() -> list[tuple[list[bytes], str]]:
    cases = []
    for line in CORPUS.read_text().splitlines():
        if line and not line.startswith("#"):
            data, why = line.split(" # ", 1)
            cases.append(([bytes.fromhex(p) for p in data.split("|")], why))
    return cases


@pytest.mark.parametrize("parts, why", _corpus(), ids=[why for _, why in _corpus()])
def test_corpus_is_rejected_with_a_reason(parts: list[bytes], why: str) -> None:
    with pytest.raises(ProtocolError):
        decode_frame(parts, LIMITS)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=5))
def test_random_messages(parts: list[bytes]) -> None:
    _check(parts)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    offset=st.integers(0, FRAME_HEADER_SIZE - 1),
    value=st.binary(min_size=1, max_size=8),
    cut=st.integers(0, len(VALID[1]) + 4),
    meta=st.binary(max_size=64),
)
def test_mutated_valid_frames(offset: int, value: bytes, cut: int, meta: bytes) -> None:
    header = bytearray(VALID[0])
    header[offset : offset + len(value)] = value[: FRAME_HEADER_SIZE - offset]
    pixels = (VALID[1] * 2)[:cut]
    _check([bytes(header[:FRAME_HEADER_SIZE]), pixels])
    _check([bytes(header[:FRAME_HEADER_SIZE]), VALID[1], meta])


@settings(max_examples=EXAMPLES, deadline=None)
@given(width=st.integers(0, 2**32 - 1), height=st.integers(0, 2**32 - 1), stride=st.integers(0, 2**32 - 1))
def test_extreme_geometry(width: int, height: int, stride: int) -> None:
    header = bytearray(VALID[0])
    struct.pack_into("<II", header, 40, width, height)
    struct.pack_into("<I", header, 52, stride)
    _check([bytes(header), VALID[1]])


def test_rejecting_does_not_leak_memory() -> None:
    bad = [b"EDGR" + b"\x01\x00" + b"\x00" * 58, b"x" * 1000]
    for _ in range(200):  # warm caches, interned strings and the like
        _check(bad)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(5000):
        _check(bad)
        _check([b"short"])
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 64 * 1024, f"{growth} bytes retained after 10,000 rejected messages"
