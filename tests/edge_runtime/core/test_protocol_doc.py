"""The hex examples in docs/PROTOCOL.md are exactly what the protocol produces and accepts."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.core import protocol as p

DOC = Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md"


def _examples() -> dict[str, list[bytes]]:
    text = DOC.read_text()
    found = {}
    for name, block in re.findall(r"<!-- example: (\w+) -->.*?```text\n(.*?)```", text, re.S):
        parts: list[bytearray] = []
        for line in block.splitlines():
            if line.startswith("part "):
                parts.append(bytearray())
            elif line.strip():
                parts[-1] += bytes.fromhex(line.split(":", 1)[1])
        found[name] = [bytes(x) for x in parts]
    return found


EXAMPLES = _examples()


def test_doc_has_every_example() -> None:
    assert set(EXAMPLES) == {"frame", "result", "heartbeat", "detection", "classification", "preview"}


def test_frame_example() -> None:
    frame = p.decode_frame(EXAMPLES["frame"])
    assert (frame.stream_id, frame.seq) == (1, 42)
    assert frame.capture_ts_ns == 1_700_000_000_000_000_000
    assert frame.send_ts_ns - frame.capture_ts_ns == 250_000
    assert frame.pixel_format is p.PixelFormat.GRAY8
    np.testing.assert_array_equal(frame.pixels, np.arange(8).reshape(2, 4))
    assert frame.spacing_mm == (0.5, 0.5)
    assert frame.meta == {"probe": "L12"}


def test_result_example() -> None:
    r = p.decode_result(EXAMPLES["result"])
    assert (r.stream_id, r.seq, r.status, r.task) == (1, 42, p.ResultStatus.OK, p.Task.SEGMENTATION)
    assert r.capture_ts_ns < r.recv_ts_ns < r.infer_start_ns < r.infer_end_ns < r.publish_ts_ns
    assert (r.infer_end_ns - r.infer_start_ns) == 4_000_000
    assert r.model == p.ModelId("demo", "1.0.0", "ab" * 32)
    assert r.labels == ("background", "cyst")
    np.testing.assert_array_equal(r.mask, [[0, 0, 1, 1], [0, 1, 1, 1]])
    assert r.frame_shape == (4, 8)
    frame_mask = r.frame_mask()
    assert frame_mask is not None and frame_mask.shape == (4, 8)
    np.testing.assert_array_equal(frame_mask[:, ::2][::2], r.mask)  # each mask pixel covers 2x2 frame pixels
    assert r.areas_px == {"cyst": int((frame_mask == 1).sum())} == {"cyst": 20} and r.areas_mm2 == {"cyst": 5.0}
    assert r.contours == {"cyst": [[(4, 0), (7, 0), (7, 3), (2, 3)]]}


def test_a_1_2_reader_reads_a_1_3_result() -> None:
    """A 1.2 reader knows the 108-byte header: every field it knows is at its offset, the header is longer (which it
    skips), and the mask part is mask_width x mask_height bytes, as it checks."""
    header, _, mask = EXAMPLES["result"]
    assert header[5] == 3 and len(header) == 116 >= 108
    _, _, _, _, _, _, _, task, status, _, mw, mh, sha = struct.unpack_from("<IQQQQQQBBHII32s", header, 12)
    assert (task, status, mw, mh, sha) == (1, 0, 4, 2, b"\xab" * 32) and len(mask) == mw * mh


def test_a_result_from_a_1_2_writer_has_its_mask_at_the_frame_resolution() -> None:
    header, body, mask = EXAMPLES["result"]
    old = bytearray(header[:108])
    old[5], old[6:8] = 2, (108).to_bytes(2, "little")
    r = p.decode_result([bytes(old), body, mask])
    assert r.frame_shape == (2, 4) and r.frame_mask() is r.mask


@pytest.mark.parametrize("name", ["frame", "result", "heartbeat", "detection", "classification", "preview"])
def test_examples_are_byte_exact_encoder_output(name: str) -> None:
    parts = EXAMPLES[name]
    if name == "frame":
        f = p.decode_frame(parts)
        again = p.encode_frame(np.array(f.pixels), stream_id=f.stream_id, seq=f.seq, capture_ts_ns=f.capture_ts_ns,
                               send_ts_ns=f.send_ts_ns, spacing_mm=f.spacing_mm, meta=f.meta)  # fmt: skip
    elif name in ("result", "detection", "classification"):
        again = p.encode_result(p.decode_result(parts))
    elif name == "preview":
        again = p.encode_preview(p.decode_preview(parts))
    else:
        again = p.encode_heartbeat(p.decode_heartbeat(parts))
    assert [bytes(x) for x in again] == parts


def test_preview_example() -> None:
    pv = p.decode_preview(EXAMPLES["preview"])
    assert (pv.stream_id, pv.seq, pv.capture_ts_ns) == (1, 42, 1_700_000_000_000_000_000)
    assert (pv.frame_width, pv.frame_height, pv.image_width, pv.image_height) == (4, 2, 4, 2)
    assert pv.codec is p.PreviewCodec.JPEG and bytes(pv.data[:2]) == b"\xff\xd8"


def test_heartbeat_example() -> None:
    hb = p.decode_heartbeat(EXAMPLES["heartbeat"])
    assert hb.state is p.DaemonState.READY
    assert (hb.frames_in, hb.frames_out, hb.frames_dropped, hb.frames_rejected) == (120, 118, 2, 1)
    assert json.loads(EXAMPLES["heartbeat"][1])["backend"] == "onnxruntime"


def test_detection_example() -> None:
    r = p.decode_result(EXAMPLES["detection"])
    assert r.task is p.Task.DETECTION and r.labels == ("polyp",) and r.mask is None
    assert r.boxes == (p.Box(12.5, 40.0, 96.25, 120.0, 0, 0.9134, 3),)
    assert r.label(r.boxes[0].class_id) == "polyp"


def test_classification_example() -> None:
    r = p.decode_result(EXAMPLES["classification"])
    assert r.task is p.Task.CLASSIFICATION
    assert r.classes == (p.ClassScore(0, 0.875), p.ClassScore(1, 0.125))
    assert r.saliency is not None and r.saliency.class_id == 0
    np.testing.assert_array_equal(r.saliency.values, [[0, 64], [128, 255]])


def test_a_1_0_reader_sees_a_detection_result_as_a_result_without_a_mask() -> None:
    """What a 1.0 reader reads: the same header fields at the same offsets and the 1.0 body keys, all present."""
    parts = EXAMPLES["detection"]
    body = json.loads(parts[1])
    assert {"model", "labels", "colors", "areas_px", "areas_mm2", "contours", "error"} <= set(body)
    assert parts[0][5] == p.VERSION_MINOR >= 1 and len(parts) == 3 and parts[2] == b""
