"""Wire protocol v1: frames in, results and heartbeats out, as ZeroMQ multipart messages.

Byte layouts, with worked hex examples, are in docs/PROTOCOL.md; keep the two in step. Every header starts with
the same 12-byte prefix (magic, version, header length, message type), all integers little-endian. Readers
accept any minor version of major 1 and skip header bytes past the fields they know; they reject other majors.

Decoding never trusts a field: each failure raises `ProtocolError` with a `RejectReason`, which the daemon counts
and logs without stopping. Pixel buffers are wrapped, not copied. The prefix, layouts, enums and limits are in
`wire.py` (re-exported here); this module holds the messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calibration.preprocessing import scale_labels
from edge_runtime.core.errors import FrameError
from edge_runtime.core.wire import (
    FRAME_HEADER_SIZE,
    FRAME_LAYOUT,
    HEARTBEAT_HEADER_SIZE,
    HEARTBEAT_LAYOUT,
    MAGIC,
    MAX_META_BYTES,
    PREFIX_SIZE,
    PREVIEW_HEADER_SIZE,
    PREVIEW_LAYOUT,
    PUBLISH_TS_OFFSET,
    RESULT_1_3_LAYOUT,
    RESULT_HEADER_SIZE,
    RESULT_LAYOUT,
    VERSION_MAJOR,
    VERSION_MINOR,
    ZERO_SHA,
    Buffer,
    DaemonState,
    DType,
    Limits,
    MaskResolution,
    MessageType,
    ModelId,
    PixelFormat,
    PreviewCodec,
    ProtocolError,
    RejectReason,
    ResultStatus,
    Task,
    check_prefix,
    decode_meta,
    json_part,
    message_type,
    pack_prefix,
    sha_bytes,
)


@dataclass(frozen=True)
class Frame:
    stream_id: int
    seq: int
    capture_ts_ns: int
    send_ts_ns: int
    pixel_format: PixelFormat
    pixels: np.ndarray  # (H, W) or (H, W, 3); a read-only view of the received buffer
    spacing_mm: tuple[float, float] | None = None  # (x, y), None when unknown
    meta: Mapping[str, Any] | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


Polygon = list[tuple[int, int]]  # (x, y) vertices in frame pixels


@dataclass(frozen=True)
class Box:
    """A detection in frame pixel coordinates: edges, not pixel centres (a box round pixel 0 alone is 0..1)."""

    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int  # index into the result's labels
    score: float  # 0..1
    track_id: int = 0  # 0: not tracked; else stable across frames while the tracker follows the object


@dataclass(frozen=True)
class ClassScore:
    class_id: int  # index into the result's labels
    score: float  # a probability: softmax over classes (single label) or a sigmoid per class (multi-label)


@dataclass(frozen=True)
class Heatmap:
    """Where a classifier looked: a low-resolution map covering the whole frame (row 0 at the top, column 0 at the
    left), 0 = no contribution, 255 = the strongest, for the class `class_id`."""

    class_id: int
    values: np.ndarray  # (h, w) uint8

    @property
    def height(self) -> int:
        return int(self.values.shape[0])

    @property
    def width(self) -> int:
        return int(self.values.shape[1])


@dataclass(frozen=True)
class Result:
    stream_id: int
    seq: int
    capture_ts_ns: int
    recv_ts_ns: int
    infer_start_ns: int
    infer_end_ns: int
    publish_ts_ns: int
    task: Task
    status: ResultStatus
    model: ModelId
    labels: tuple[str, ...] = ()
    colors: tuple[tuple[int, int, int], ...] = ()
    mask: np.ndarray | None = None  # uint8 class ids covering the frame, at the model's or the frame's resolution
    areas_px: Mapping[str, int] = field(default_factory=dict)
    areas_mm2: Mapping[str, float] | None = None
    contours: Mapping[str, list[Polygon]] = field(default_factory=dict)
    error: str | None = None
    boxes: tuple[Box, ...] = ()  # detection, best score first
    classes: tuple[ClassScore, ...] = ()  # classification: the top-k, best first
    saliency: Heatmap | None = None  # classification with a CAM-capable head
    frame_shape: tuple[int, int] | None = None  # (height, width) of the frame the result describes; None: unknown

    @property
    def mask_covers(self) -> tuple[int, int] | None:
        """(height, width) of the frame the mask covers: the frame size when known, else the mask's own (a mask
        without a frame size is at the frame's resolution); None without a mask."""
        if self.mask is None:
            return None
        return self.frame_shape or (int(self.mask.shape[0]), int(self.mask.shape[1]))

    def frame_mask(self) -> np.ndarray | None:
        """The mask at the frame's resolution: as it came when it already is, else scaled up by nearest neighbour
        with the rule of docs/PROTOCOL.md (`calibration.preprocessing.scale_labels`)."""
        if self.mask is None or self.frame_shape is None:
            return self.mask
        return scale_labels(self.mask, *self.frame_shape)

    def label(self, class_id: int) -> str:
        """The name of a class id, refusing one outside the labels the result carries."""
        if not 0 <= class_id < len(self.labels):
            raise ValueError(f"class id {class_id} is outside the result's {len(self.labels)} labels")
        return self.labels[class_id]


MAX_SALIENCY_SIDE = 256  # a heatmap is low resolution by design; larger ones are refused


@dataclass(frozen=True)
class Heartbeat:
    state: DaemonState
    ts_ns: int
    frames_in: int
    frames_out: int
    frames_dropped: int
    frames_rejected: int
    model: ModelId | None
    info: Mapping[str, Any] = field(default_factory=dict)


def pixel_format_for(array: np.ndarray, bgr: bool = False) -> PixelFormat:
    """The pixel format a (H, W) or (H, W, C) array is sent as."""
    channels = 1 if array.ndim == 2 else array.shape[2] if array.ndim == 3 else -1
    key = (channels, array.dtype.str.lstrip("<|="))
    formats = {(1, "u1"): PixelFormat.GRAY8, (1, "u2"): PixelFormat.GRAY16, (1, "f4"): PixelFormat.GRAY32F}
    if key == (3, "u1"):
        return PixelFormat.BGR8 if bgr else PixelFormat.RGB8
    if key not in formats:
        raise FrameError(
            f"cannot send an array of shape {array.shape} and dtype {array.dtype}: expected (H, W) uint8/uint16/"
            "float32 or (H, W, 3) uint8"
        )
    return formats[key]


def encode_frame(
    pixels: np.ndarray,
    *,
    stream_id: int,
    seq: int,
    capture_ts_ns: int,
    send_ts_ns: int,
    pixel_format: PixelFormat | None = None,
    spacing_mm: tuple[float, float] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[Buffer]:
    """Frame message parts; the pixel part is a view of `pixels` (made contiguous only if it is not)."""
    fmt = pixel_format or pixel_format_for(pixels)
    if pixel_format is not None and pixel_format_for(pixels, bgr=fmt is PixelFormat.BGR8) is not fmt:
        raise FrameError(f"array of shape {pixels.shape}, dtype {pixels.dtype} is not {fmt.name}")
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    sx, sy = spacing_mm or (0.0, 0.0)
    header = pack_prefix(MessageType.FRAME, FRAME_HEADER_SIZE) + FRAME_LAYOUT.pack(
        stream_id, seq, capture_ts_ns, send_ts_ns, width, height, fmt.channels, fmt.dtype, fmt,
        width * fmt.channels * fmt.dtype.numpy.itemsize, sx, sy,
    )  # fmt: skip
    parts: list[Buffer] = [header, pixels.data.cast("B")]
    if meta:
        parts.append(json_part(meta))
    return parts


def decode_frame(parts: Sequence[Buffer], limits: Limits = Limits()) -> Frame:
    """Validate and wrap a frame message; raises ProtocolError naming the first thing wrong."""
    if len(parts) not in (2, 3):
        raise ProtocolError(RejectReason.BAD_PART_COUNT, f"{len(parts)} parts, a frame has 2 or 3")
    header = parts[0]
    check_prefix(header, MessageType.FRAME, FRAME_LAYOUT.size)
    (stream_id, seq, capture_ts, send_ts, width, height, channels, dtype, pix_fmt, stride, sx, sy) = (
        FRAME_LAYOUT.unpack_from(header, PREFIX_SIZE)
    )
    if dtype not in DType._value2member_map_:
        raise ProtocolError(RejectReason.UNKNOWN_DTYPE, f"dtype code {dtype}")
    if pix_fmt not in PixelFormat._value2member_map_:
        raise ProtocolError(RejectReason.UNKNOWN_PIXEL_FORMAT, f"pixel format code {pix_fmt}")
    fmt, dt = PixelFormat(pix_fmt), DType(dtype)
    if fmt.channels != channels or fmt.dtype is not dt:
        raise ProtocolError(
            RejectReason.FORMAT_MISMATCH,
            f"{fmt.name} has {fmt.channels} channel(s) of {fmt.dtype.name}, header says {channels} of {dt.name}",
        )
    if not (0 < width <= limits.max_width and 0 < height <= limits.max_height):
        raise ProtocolError(
            RejectReason.BAD_DIMENSIONS, f"{width}x{height} outside 1..{limits.max_width} x 1..{limits.max_height}"
        )
    itemsize = dt.numpy.itemsize
    if stride < width * channels * itemsize or stride % itemsize:
        raise ProtocolError(
            RejectReason.BAD_STRIDE, f"row stride {stride} for {width} px x {channels} ch x {itemsize} B"
        )
    pixels_part = parts[1]
    if len(pixels_part) != stride * height:
        raise ProtocolError(
            RejectReason.SIZE_MISMATCH, f"pixel part has {len(pixels_part)} bytes, header implies {stride * height}"
        )
    if not (math.isfinite(sx) and math.isfinite(sy) and sx >= 0 and sy >= 0):
        raise ProtocolError(RejectReason.BAD_SPACING, f"pixel spacing ({sx}, {sy}) mm")
    meta = decode_meta(parts[2], limits.max_meta_bytes) if len(parts) == 3 else None
    shape: tuple[int, ...] = (height, width) if channels == 1 else (height, width, channels)
    strides: tuple[int, ...] = (
        (stride, channels * itemsize) if channels == 1 else (stride, channels * itemsize, itemsize)
    )
    pixels = np.ndarray(shape, dtype=dt.numpy, buffer=memoryview(pixels_part), strides=strides)
    pixels.flags.writeable = False
    if fmt is PixelFormat.GRAY32F:
        lo, hi = float(pixels.min()), float(pixels.max())
        if not (lo >= 0.0 and hi <= 1.0):  # NaN survives min and max, and fails both comparisons
            raise ProtocolError(
                RejectReason.BAD_PIXELS, f"GRAY32F values must be finite and within [0, 1], got {lo:g} .. {hi:g}"
            )
    return Frame(
        stream_id=stream_id,
        seq=seq,
        capture_ts_ns=capture_ts,
        send_ts_ns=send_ts,
        pixel_format=fmt,
        pixels=pixels,
        spacing_mm=(sx, sy) if sx > 0 and sy > 0 else None,
        meta=meta,
    )


def encode_result(result: Result) -> list[Buffer]:
    """Result parts: [header, JSON body, mask bytes (empty when there is no mask)]."""
    mask = result.mask
    if mask is not None and (mask.dtype != np.uint8 or mask.ndim != 2):
        raise ValueError(f"mask must be 2-D uint8, got {mask.dtype} {mask.shape}")
    mh, mw = mask.shape if mask is not None else (0, 0)
    fh, fw = result.frame_shape or (0, 0)
    header = bytearray(pack_prefix(MessageType.RESULT, RESULT_HEADER_SIZE)) + RESULT_LAYOUT.pack(
        result.stream_id, result.seq, result.capture_ts_ns, result.recv_ts_ns, result.infer_start_ns,
        result.infer_end_ns, result.publish_ts_ns, result.task, result.status, 0, mw, mh, sha_bytes(result.model),
    ) + RESULT_1_3_LAYOUT.pack(fw, fh)  # fmt: skip
    body: dict[str, Any] = {
        "model": {"name": result.model.name, "version": result.model.version},
        "labels": list(result.labels),
        "colors": [list(c) for c in result.colors],
        "areas_px": dict(result.areas_px),
        "areas_mm2": dict(result.areas_mm2) if result.areas_mm2 is not None else None,
        "contours": {k: [[list(p) for p in poly] for poly in polys] for k, polys in result.contours.items()},
        "error": result.error,
    }
    if result.task is Task.DETECTION:  # 1.1: keys a 1.0 reader ignores
        body["boxes"] = [
            [round(b.x1, 2), round(b.y1, 2), round(b.x2, 2), round(b.y2, 2), b.class_id, round(b.score, 4), b.track_id]
            for b in result.boxes
        ]
    if result.task is Task.CLASSIFICATION:
        body["classes"] = [[c.class_id, round(c.score, 5)] for c in result.classes]
        body["saliency"] = None
        if result.saliency is not None:
            values = np.ascontiguousarray(result.saliency.values, np.uint8)
            body["saliency"] = {
                "class": result.saliency.class_id,
                "width": result.saliency.width,
                "height": result.saliency.height,
                "data": base64.b64encode(values.tobytes()).decode("ascii"),
            }
    return [header, json_part(body), np.ascontiguousarray(mask).data.cast("B") if mask is not None else b""]


def stamp_publish_time(header: bytearray, ts_ns: int) -> None:
    """Write publish_ts_ns into an encoded result header in place."""
    struct.pack_into("<Q", header, PUBLISH_TS_OFFSET, ts_ns)


def decode_result(parts: Sequence[Buffer], limits: Limits = Limits()) -> Result:
    if len(parts) != 3:
        raise ProtocolError(RejectReason.BAD_PART_COUNT, f"{len(parts)} parts, a result has 3")
    check_prefix(parts[0], MessageType.RESULT, RESULT_LAYOUT.size)
    (stream_id, seq, capture, recv, start, end, publish, task, status, _, mw, mh, sha) = RESULT_LAYOUT.unpack_from(
        parts[0], PREFIX_SIZE
    )
    if task not in Task._value2member_map_ or status not in ResultStatus._value2member_map_:
        raise ProtocolError(RejectReason.BAD_PAYLOAD, f"task {task} / status {status} unknown")
    if mw > limits.max_width or mh > limits.max_height or len(parts[2]) != mw * mh:
        raise ProtocolError(RejectReason.SIZE_MISMATCH, f"mask part has {len(parts[2])} bytes for {mw}x{mh}")
    fw, fh = 0, 0
    if len(parts[0]) >= PREFIX_SIZE + RESULT_LAYOUT.size + RESULT_1_3_LAYOUT.size:  # 1.3 and later
        fw, fh = RESULT_1_3_LAYOUT.unpack_from(parts[0], PREFIX_SIZE + RESULT_LAYOUT.size)
        if fw > limits.max_width or fh > limits.max_height or (fw == 0) != (fh == 0):
            raise ProtocolError(RejectReason.SIZE_MISMATCH, f"frame size {fw}x{fh}")
    if not fw and mw * mh:  # before 1.3, a mask came at the frame's resolution
        fw, fh = mw, mh
    try:
        body = json.loads(bytes(parts[1]).decode("utf-8"))
        model = ModelId(str(body["model"]["name"]), str(body["model"]["version"]), sha.hex())
        labels = tuple(str(x) for x in body["labels"])
        colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in body["colors"])
        contours = {str(k): [[(int(p[0]), int(p[1])) for p in poly] for poly in v] for k, v in body["contours"].items()}
        areas_px = {str(k): int(v) for k, v in body["areas_px"].items()}
        areas_mm2 = None if body["areas_mm2"] is None else {str(k): float(v) for k, v in body["areas_mm2"].items()}
        error = body["error"]
        boxes = tuple(_box(b, len(labels)) for b in body.get("boxes") or ())
        classes = tuple(_class_score(c, len(labels)) for c in body.get("classes") or ())
        saliency = _heatmap(body["saliency"], len(labels)) if body.get("saliency") is not None else None
        if len(boxes) > MAX_BOXES:
            raise ValueError(f"{len(boxes)} boxes, at most {MAX_BOXES}")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError, binascii.Error) as exc:
        raise ProtocolError(RejectReason.BAD_PAYLOAD, f"result body: {exc.__class__.__name__}: {exc}") from None
    mask = np.frombuffer(parts[2], np.uint8).reshape(mh, mw) if mw * mh else None
    return Result(
        stream_id=stream_id, seq=seq, capture_ts_ns=capture, recv_ts_ns=recv, infer_start_ns=start,
        infer_end_ns=end, publish_ts_ns=publish, task=Task(task), status=ResultStatus(status), model=model,
        labels=labels, colors=colors, mask=mask, areas_px=areas_px, areas_mm2=areas_mm2, contours=contours,
        error=None if error is None else str(error), boxes=boxes, classes=classes, saliency=saliency,
        frame_shape=(fh, fw) if fw else None,
    )  # fmt: skip


MAX_BOXES = 1000


def _class_id(value: Any, n_labels: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n_labels:
        raise ValueError(f"class id {value!r} outside the {n_labels} labels")
    return value


def _box(row: Any, n_labels: int) -> Box:
    x1, y1, x2, y2, cls, score, track = row
    coords = [float(v) for v in (x1, y1, x2, y2, score)]
    if not all(math.isfinite(v) for v in coords) or coords[2] < coords[0] or coords[3] < coords[1]:
        raise ValueError(f"box {row!r} is not finite with x1 <= x2 and y1 <= y2")
    if not 0.0 <= coords[4] <= 1.0 or not isinstance(track, int) or track < 0:
        raise ValueError(f"box {row!r}: score must be in [0, 1] and the track id a non-negative int")
    return Box(coords[0], coords[1], coords[2], coords[3], _class_id(cls, n_labels), coords[4], track)


def _class_score(row: Any, n_labels: int) -> ClassScore:
    cls, score = row
    if not 0.0 <= float(score) <= 1.0:
        raise ValueError(f"class score {score!r} outside [0, 1]")
    return ClassScore(_class_id(cls, n_labels), float(score))


def _heatmap(obj: Any, n_labels: int) -> Heatmap:
    width, height = int(obj["width"]), int(obj["height"])
    if not (0 < width <= MAX_SALIENCY_SIDE and 0 < height <= MAX_SALIENCY_SIDE):
        raise ValueError(f"saliency {width}x{height} outside 1..{MAX_SALIENCY_SIDE}")
    data = base64.b64decode(str(obj["data"]), validate=True)
    if len(data) != width * height:
        raise ValueError(f"saliency has {len(data)} bytes for {width}x{height}")
    values = np.frombuffer(data, np.uint8).reshape(height, width)
    return Heatmap(_class_id(obj["class"], n_labels), values)


def encode_heartbeat(hb: Heartbeat) -> list[Buffer]:
    header = pack_prefix(MessageType.HEARTBEAT, HEARTBEAT_HEADER_SIZE) + HEARTBEAT_LAYOUT.pack(
        hb.state, 0, 0, hb.ts_ns, hb.frames_in, hb.frames_out, hb.frames_dropped, hb.frames_rejected,
        sha_bytes(hb.model),
    )  # fmt: skip
    info = dict(hb.info)
    if hb.model:
        info["model"] = {"name": hb.model.name, "version": hb.model.version}
    return [header, json_part(info)]


def decode_heartbeat(parts: Sequence[Buffer]) -> Heartbeat:
    if len(parts) != 2:
        raise ProtocolError(RejectReason.BAD_PART_COUNT, f"{len(parts)} parts, a heartbeat has 2")
    check_prefix(parts[0], MessageType.HEARTBEAT, HEARTBEAT_LAYOUT.size)
    state, _, _, ts, fin, fout, fdrop, frej, sha = HEARTBEAT_LAYOUT.unpack_from(parts[0], PREFIX_SIZE)
    if state not in DaemonState._value2member_map_:
        raise ProtocolError(RejectReason.BAD_PAYLOAD, f"daemon state {state}")
    info = decode_meta(parts[1], MAX_META_BYTES)
    model = None
    if sha != ZERO_SHA:
        m = info.get("model") or {}
        model = ModelId(str(m.get("name", "")), str(m.get("version", "")), sha.hex())
    return Heartbeat(DaemonState(state), ts, fin, fout, fdrop, frej, model, info)


MAX_PREVIEW_BYTES = 16 * 1024 * 1024  # a display-size JPEG is tens of KB; anything near this is not a preview
_JPEG_SOI = b"\xff\xd8\xff"


@dataclass(frozen=True)
class Preview:
    """The frame a result belongs to, as a display-size compressed image: same stream and seq as the result, and
    the frame's own size, so that a display can check the pair before drawing one on the other."""

    stream_id: int
    seq: int
    capture_ts_ns: int
    frame_width: int  # the frame the result's coordinates refer to
    frame_height: int
    image_width: int  # the encoded image: at most the frame's size (scaled down for display, same aspect)
    image_height: int
    codec: PreviewCodec
    data: Buffer  # the encoded image


def encode_preview(preview: Preview) -> list[Buffer]:
    """Preview parts: [header, image]."""
    header = pack_prefix(MessageType.PREVIEW, PREVIEW_HEADER_SIZE) + PREVIEW_LAYOUT.pack(
        preview.stream_id, preview.seq, preview.capture_ts_ns, preview.frame_width, preview.frame_height,
        preview.image_width, preview.image_height, preview.codec, 0, 0,
    )  # fmt: skip
    return [header, preview.data]


def decode_preview(parts: Sequence[Buffer], limits: Limits = Limits()) -> Preview:
    """Validate a preview message: sizes within the limits, the image no larger than its frame, and the bytes a
    JPEG stream (the display decodes it; a broken one fails there without an overlay being drawn)."""
    if len(parts) != 2:
        raise ProtocolError(RejectReason.BAD_PART_COUNT, f"{len(parts)} parts, a preview has 2")
    check_prefix(parts[0], MessageType.PREVIEW, PREVIEW_LAYOUT.size)
    stream_id, seq, capture, fw, fh, iw, ih, codec, _, _ = PREVIEW_LAYOUT.unpack_from(parts[0], PREFIX_SIZE)
    if codec not in PreviewCodec._value2member_map_:
        raise ProtocolError(RejectReason.BAD_PAYLOAD, f"preview codec {codec}")
    if not (0 < fw <= limits.max_width and 0 < fh <= limits.max_height):
        raise ProtocolError(
            RejectReason.BAD_DIMENSIONS, f"frame {fw}x{fh} outside 1..{limits.max_width} x 1..{limits.max_height}"
        )
    if not (0 < iw <= fw and 0 < ih <= fh):
        raise ProtocolError(RejectReason.BAD_DIMENSIONS, f"preview image {iw}x{ih} for a {fw}x{fh} frame")
    data = parts[1]
    if not 0 < len(data) <= MAX_PREVIEW_BYTES:
        raise ProtocolError(RejectReason.SIZE_MISMATCH, f"preview image of {len(data)} bytes, 1..{MAX_PREVIEW_BYTES}")
    if bytes(data[:3]) != _JPEG_SOI:
        raise ProtocolError(RejectReason.BAD_PAYLOAD, "preview image does not start like a JPEG stream")
    return Preview(stream_id, seq, capture, fw, fh, iw, ih, PreviewCodec(codec), data)


__all__ = [  # the messages defined here, and the wire layer's names re-exported (core/wire.py)
    "Box",
    "Buffer",
    "ClassScore",
    "DType",
    "DaemonState",
    "FRAME_HEADER_SIZE",
    "Frame",
    "HEARTBEAT_HEADER_SIZE",
    "Heartbeat",
    "Heatmap",
    "Limits",
    "MAGIC",
    "MAX_BOXES",
    "MAX_META_BYTES",
    "MAX_PREVIEW_BYTES",
    "MAX_SALIENCY_SIDE",
    "MaskResolution",
    "MessageType",
    "ModelId",
    "PREFIX_SIZE",
    "PREVIEW_HEADER_SIZE",
    "PUBLISH_TS_OFFSET",
    "PixelFormat",
    "Polygon",
    "Preview",
    "PreviewCodec",
    "ProtocolError",
    "RESULT_HEADER_SIZE",
    "RejectReason",
    "Result",
    "ResultStatus",
    "Task",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "decode_frame",
    "decode_heartbeat",
    "decode_preview",
    "decode_result",
    "encode_frame",
    "encode_heartbeat",
    "encode_preview",
    "encode_result",
    "message_type",
    "pixel_format_for",
    "stamp_publish_time",
]
