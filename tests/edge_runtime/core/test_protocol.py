from __future__ import annotations

import struct

import numpy as np
import pytest

from edge_runtime.core import protocol as p
from edge_runtime.core.protocol import PixelFormat, ProtocolError, RejectReason


def _frame_parts(pixels: np.ndarray, **kw: object) -> list[bytes]:
    args = {"stream_id": 3, "seq": 7, "capture_ts_ns": 1_000, "send_ts_ns": 2_000, **kw}
    return [bytes(part) for part in p.encode_frame(pixels, **args)]  # type: ignore[arg-type]


def _patch(header: bytes, offset: int, fmt: str, value: object) -> bytes:
    buf = bytearray(header)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


@pytest.mark.parametrize(
    "pixels, fmt",
    [
        (np.arange(12, dtype=np.uint8).reshape(3, 4), PixelFormat.GRAY8),
        (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000, PixelFormat.GRAY16),
        (np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), PixelFormat.GRAY32F),
        (np.arange(36, dtype=np.uint8).reshape(3, 4, 3), PixelFormat.RGB8),
    ],
)
def test_frame_round_trip(pixels: np.ndarray, fmt: PixelFormat) -> None:
    parts = _frame_parts(pixels, spacing_mm=(0.25, 0.5), meta={"probe": "C5-2"})
    frame = p.decode_frame(parts)
    assert frame.pixel_format is fmt
    np.testing.assert_array_equal(frame.pixels, pixels)
    assert (frame.stream_id, frame.seq, frame.capture_ts_ns, frame.send_ts_ns) == (3, 7, 1_000, 2_000)
    assert frame.spacing_mm == (0.25, 0.5)
    assert frame.meta == {"probe": "C5-2"}
    assert not frame.pixels.flags.writeable


def test_bgr_is_kept_distinct_from_rgb() -> None:
    pixels = np.zeros((2, 2, 3), np.uint8)
    assert p.decode_frame(_frame_parts(pixels, pixel_format=PixelFormat.BGR8)).pixel_format is PixelFormat.BGR8


def test_decoded_pixels_are_a_view_of_the_received_buffer() -> None:
    parts = _frame_parts(np.zeros((4, 4), np.uint8))
    buf = bytearray(parts[1])
    frame = p.decode_frame([parts[0], buf])
    buf[5] = 99  # a change to the buffer shows through: no copy was made
    assert frame.pixels[1, 1] == 99


def test_padded_row_stride_is_honoured() -> None:
    pixels = np.arange(6, dtype=np.uint8).reshape(2, 3)
    padded = np.zeros((2, 8), np.uint8)
    padded[:, :3] = pixels
    header = _patch(_frame_parts(pixels)[0], 52, "<I", 8)
    frame = p.decode_frame([header, padded.tobytes()])
    np.testing.assert_array_equal(frame.pixels, pixels)


def test_unknown_spacing_and_no_metadata() -> None:
    frame = p.decode_frame(_frame_parts(np.zeros((2, 2), np.uint8)))
    assert frame.spacing_mm is None and frame.meta is None


def test_newer_minor_version_with_longer_header_is_accepted() -> None:
    parts = _frame_parts(np.ones((2, 2), np.uint8))
    longer = _patch(parts[0], 5, "<B", 7)  # minor 7
    longer = _patch(longer + b"\xee" * 8, 6, "<H", p.FRAME_HEADER_SIZE + 8)  # 8 unknown trailing bytes
    frame = p.decode_frame([longer, parts[1]])
    assert frame.pixels.sum() == 4


def test_encode_refuses_arrays_it_cannot_describe() -> None:
    with pytest.raises(ValueError, match="cannot send"):
        p.encode_frame(np.zeros((2, 2, 4), np.uint8), stream_id=0, seq=0, capture_ts_ns=0, send_ts_ns=0)
    with pytest.raises(ValueError, match="not RGB8"):
        p.encode_frame(np.zeros((2, 2), np.uint8), stream_id=0, seq=0, capture_ts_ns=0, send_ts_ns=0,
                       pixel_format=PixelFormat.RGB8)  # fmt: skip


GOOD = _frame_parts(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(
    "parts, reason",
    [
        ([GOOD[0]], RejectReason.BAD_PART_COUNT),
        ([GOOD[0], GOOD[1], b"{}", b"x"], RejectReason.BAD_PART_COUNT),
        ([GOOD[0][:10], GOOD[1]], RejectReason.SHORT_HEADER),
        ([b"JUNK" + GOOD[0][4:], GOOD[1]], RejectReason.BAD_MAGIC),
        ([_patch(GOOD[0], 4, "<B", 2), GOOD[1]], RejectReason.UNSUPPORTED_VERSION),
        ([_patch(GOOD[0], 8, "<B", 9), GOOD[1]], RejectReason.UNKNOWN_MESSAGE_TYPE),
        ([_patch(GOOD[0], 8, "<B", 2), GOOD[1]], RejectReason.UNEXPECTED_MESSAGE_TYPE),
        ([_patch(GOOD[0], 6, "<H", 40), GOOD[1]], RejectReason.BAD_HEADER_LENGTH),
        ([GOOD[0][:40], GOOD[1]], RejectReason.BAD_HEADER_LENGTH),
        ([_patch(GOOD[0], 50, "<B", 9), GOOD[1]], RejectReason.UNKNOWN_DTYPE),
        ([_patch(GOOD[0], 51, "<B", 0), GOOD[1]], RejectReason.UNKNOWN_PIXEL_FORMAT),
        ([_patch(GOOD[0], 51, "<B", int(PixelFormat.RGB8)), GOOD[1]], RejectReason.FORMAT_MISMATCH),
        ([_patch(GOOD[0], 50, "<B", 2), GOOD[1]], RejectReason.FORMAT_MISMATCH),
        ([_patch(GOOD[0], 40, "<I", 0), GOOD[1]], RejectReason.BAD_DIMENSIONS),
        ([_patch(GOOD[0], 44, "<I", 100_000), GOOD[1]], RejectReason.BAD_DIMENSIONS),
        ([_patch(GOOD[0], 52, "<I", 3), GOOD[1]], RejectReason.BAD_STRIDE),
        ([GOOD[0], GOOD[1][:-1]], RejectReason.SIZE_MISMATCH),
        ([GOOD[0], GOOD[1] + b"\0"], RejectReason.SIZE_MISMATCH),
        ([_patch(GOOD[0], 56, "<f", float("nan")), GOOD[1]], RejectReason.BAD_SPACING),
        ([_patch(GOOD[0], 60, "<f", -1.0), GOOD[1]], RejectReason.BAD_SPACING),
        ([GOOD[0], GOOD[1], b"\xff\xfe"], RejectReason.BAD_METADATA),
        ([GOOD[0], GOOD[1], b"[1, 2]"], RejectReason.BAD_METADATA),
        ([GOOD[0], GOOD[1], b'{"a": "' + b"x" * 70_000 + b'"}'], RejectReason.BAD_METADATA),
        ([GOOD[0], GOOD[1], b'{"a": NaN}'], RejectReason.BAD_METADATA),
        ([GOOD[0], GOOD[1], b'{"a": -Infinity}'], RejectReason.BAD_METADATA),
        ([GOOD[0], GOOD[1], b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"], RejectReason.BAD_METADATA),
        ([GOOD[0], GOOD[1], b'{"a": ' + b"9" * 5000 + b"}"], RejectReason.BAD_METADATA),
        *[
            (_frame_parts(np.full((4, 4), v, np.float32)), RejectReason.BAD_PIXELS)
            for v in (np.nan, np.inf, -np.inf, 1e38, -0.5, 1.0001)
        ],
    ],
)
def test_every_rejection_reason(parts: list[bytes], reason: RejectReason) -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_frame(parts)
    assert info.value.reason is reason
    assert reason.value in str(info.value)


def test_configured_limits_apply() -> None:
    parts = _frame_parts(np.zeros((10, 20), np.uint8))
    with pytest.raises(ProtocolError) as info:
        p.decode_frame(parts, p.Limits(max_width=16))
    assert info.value.reason is RejectReason.BAD_DIMENSIONS


def _result(**kw: object) -> p.Result:
    base = dict(
        stream_id=2, seq=9, capture_ts_ns=10, recv_ts_ns=20, infer_start_ns=30, infer_end_ns=40, publish_ts_ns=0,
        task=p.Task.SEGMENTATION, status=p.ResultStatus.OK, model=p.ModelId("m", "1", "0f" * 32),
        labels=("background", "cyst"), colors=((0, 0, 0), (1, 2, 3)), mask=np.array([[0, 1], [1, 1]], np.uint8),
        areas_px={"cyst": 3}, areas_mm2={"cyst": 0.75}, contours={"cyst": [[(0, 1), (1, 0), (1, 1)]]},
    )  # fmt: skip
    base.update(kw)
    return p.Result(**base)  # type: ignore[arg-type]


def test_result_round_trip_and_publish_stamp() -> None:
    parts = p.encode_result(_result())
    header = bytearray(parts[0])
    p.stamp_publish_time(header, 50)
    r = p.decode_result([header, bytes(parts[1]), bytes(parts[2])])
    assert r == _result(publish_ts_ns=50, mask=r.mask, frame_shape=(2, 2))  # no frame size sent: the mask's
    np.testing.assert_array_equal(r.mask, [[0, 1], [1, 1]])


def test_a_model_resolution_mask_travels_with_the_frame_size() -> None:
    parts = p.encode_result(_result(frame_shape=(5, 3)))
    r = p.decode_result([bytes(x) for x in parts])
    assert r.frame_shape == (5, 3) and r.mask is not None and r.mask.shape == (2, 2)
    frame_mask = r.frame_mask()
    assert frame_mask is not None
    np.testing.assert_array_equal(frame_mask, [[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]])


@pytest.mark.parametrize("size", [(0, 4), (4, 0), (9000, 4)])
def test_a_bad_frame_size_is_refused(size: tuple[int, int]) -> None:
    parts = [bytearray(x) for x in p.encode_result(_result(frame_shape=(3, 3)))]
    struct.pack_into("<II", parts[0], 108, *size)
    with pytest.raises(p.ProtocolError) as err:
        p.decode_result(parts)
    assert err.value.reason is p.RejectReason.SIZE_MISMATCH


def test_error_result_has_no_mask() -> None:
    parts = p.encode_result(_result(status=p.ResultStatus.ERROR, mask=None, areas_px={}, areas_mm2=None,
                                    contours={}, error="bad shape"))  # fmt: skip
    r = p.decode_result([bytes(x) for x in parts])
    assert r.status is p.ResultStatus.ERROR and r.mask is None and r.error == "bad shape"


def test_result_with_inconsistent_mask_is_rejected() -> None:
    parts = [bytes(x) for x in p.encode_result(_result())]
    with pytest.raises(ProtocolError) as info:
        p.decode_result([parts[0], parts[1], parts[2][:-1]])
    assert info.value.reason is RejectReason.SIZE_MISMATCH
    with pytest.raises(ProtocolError) as info:
        p.decode_result([parts[0], b'{"model": 1}', parts[2]])
    assert info.value.reason is RejectReason.BAD_PAYLOAD


def test_heartbeat_round_trip() -> None:
    hb = p.Heartbeat(p.DaemonState.READY, 5, 10, 9, 1, 2, p.ModelId("m", "2", "aa" * 32), {"interval_ms": 500})
    decoded = p.decode_heartbeat([bytes(x) for x in p.encode_heartbeat(hb)])
    assert decoded.state is p.DaemonState.READY
    assert (decoded.frames_in, decoded.frames_out, decoded.frames_dropped, decoded.frames_rejected) == (10, 9, 1, 2)
    assert decoded.model == hb.model
    assert decoded.info["interval_ms"] == 500


def test_message_type_sniffing() -> None:
    assert p.message_type(GOOD) is p.MessageType.FRAME
    assert p.message_type([b"garbage-garbage"]) is None
    assert p.message_type([]) is None


def _detection_result(**kw: object) -> p.Result:
    args: dict[str, object] = dict(
        stream_id=1, seq=2, capture_ts_ns=3, recv_ts_ns=4, infer_start_ns=5, infer_end_ns=6, publish_ts_ns=7,
        task=p.Task.DETECTION, status=p.ResultStatus.OK, model=p.ModelId("d", "1", "cd" * 32), labels=("polyp",),
        colors=((1, 2, 3),), boxes=(p.Box(1.0, 2.0, 3.0, 4.0, 0, 0.5, 7),),
    )  # fmt: skip
    return p.Result(**{**args, **kw})  # type: ignore[arg-type]


def test_task_payloads_round_trip() -> None:
    det = _detection_result()
    assert p.decode_result([bytes(x) for x in p.encode_result(det)]).boxes == det.boxes
    heat = p.Heatmap(1, np.arange(6, dtype=np.uint8).reshape(2, 3))
    cls = _detection_result(task=p.Task.CLASSIFICATION, labels=("a", "b"), colors=((0, 0, 0),) * 2, boxes=(),
                            classes=(p.ClassScore(1, 0.75), p.ClassScore(0, 0.25)), saliency=heat)  # fmt: skip
    back = p.decode_result([bytes(x) for x in p.encode_result(cls)])
    assert back.classes == cls.classes and back.saliency is not None
    np.testing.assert_array_equal(back.saliency.values, heat.values)


@pytest.mark.parametrize(
    "key, value",
    [
        ("boxes", [[1, 2, 3, 4, 1, 0.5, 0]]),  # class 1 of one label: it would be drawn with no name
        ("boxes", [[3, 2, 1, 4, 0, 0.5, 0]]),  # x2 < x1
        ("boxes", [[1, 2, 3, 4, 0, 1.5, 0]]),  # score over 1
        ("boxes", [[1, 2, 3, 4, 0, 0.5]]),  # a field short
        ("classes", [[0, -0.1]]),
        ("saliency", {"class": 0, "width": 2, "height": 2, "data": "AAA="}),  # 2 bytes for 2x2
        ("saliency", {"class": 0, "width": 300, "height": 1, "data": ""}),
    ],
)
def test_bad_task_payloads_are_refused_as_bad_payload(key: str, value: object) -> None:
    import json

    parts = [bytes(x) for x in p.encode_result(_detection_result())]
    body = json.loads(parts[1])
    body[key] = value
    with pytest.raises(ProtocolError) as err:
        p.decode_result([parts[0], json.dumps(body).encode(), parts[2]])
    assert err.value.reason is RejectReason.BAD_PAYLOAD


JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 20 + b"\xff\xd9"


def _preview(**changes: object) -> p.Preview:
    fields: dict[str, object] = dict(
        stream_id=3, seq=7, capture_ts_ns=123, frame_width=640, frame_height=480, image_width=320,
        image_height=240, codec=p.PreviewCodec.JPEG, data=JPEG,
    )  # fmt: skip
    fields.update(changes)
    return p.Preview(**fields)  # type: ignore[arg-type]


def test_preview_round_trip() -> None:
    parts = p.encode_preview(_preview())
    assert p.message_type(parts) is p.MessageType.PREVIEW
    pv = p.decode_preview(parts)
    assert (pv.stream_id, pv.seq, pv.capture_ts_ns, pv.frame_width, pv.image_height) == (3, 7, 123, 640, 240)
    assert bytes(pv.data) == JPEG


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"image_width": 641}, RejectReason.BAD_DIMENSIONS),  # an image larger than its frame
        ({"frame_width": 0}, RejectReason.BAD_DIMENSIONS),
        ({"frame_height": 9000, "image_height": 10}, RejectReason.BAD_DIMENSIONS),  # over the reader's limits
        ({"data": b"\x89PNG\r\n\x1a\n"}, RejectReason.BAD_PAYLOAD),  # not a JPEG stream
        ({"data": b""}, RejectReason.SIZE_MISMATCH),
    ],
)
def test_preview_refusals(changes: dict[str, object], reason: RejectReason) -> None:
    with pytest.raises(ProtocolError) as err:
        p.decode_preview(p.encode_preview(_preview(**changes)))
    assert err.value.reason is reason


def test_preview_refuses_an_unknown_codec_and_other_messages() -> None:
    header = bytearray(p.encode_preview(_preview())[0])
    header[p.PREFIX_SIZE + 36] = 9
    with pytest.raises(ProtocolError, match="codec 9"):
        p.decode_preview([bytes(header), JPEG])
    with pytest.raises(ProtocolError) as err:
        p.decode_preview(p.encode_heartbeat(p.Heartbeat(p.DaemonState.READY, 1, 0, 0, 0, 0, None)))
    assert err.value.reason is RejectReason.UNEXPECTED_MESSAGE_TYPE
    with pytest.raises(ProtocolError) as err:
        p.decode_preview([p.encode_preview(_preview())[0]])
    assert err.value.reason is RejectReason.BAD_PART_COUNT
