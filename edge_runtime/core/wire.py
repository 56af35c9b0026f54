"""The wire protocol's lowest layer: the version, the 12-byte prefix every header starts with, the struct layouts,
the enums the headers carry, the limits a reader enforces, and the shared checks (prefix, metadata JSON). The
messages themselves (frames, results, heartbeats, previews) are in `protocol.py`, which re-exports all of this.
Byte layouts, with worked hex examples, are in docs/PROTOCOL.md."""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from calibration.preprocessing import ImageLimits
from edge_runtime.core.errors import EdgertError, OptionError

MAGIC = b"EDGR"
VERSION_MAJOR = 1
VERSION_MINOR = 3  # 1.1: detection boxes, classification scores and saliency in the result body; 1.2: PREVIEW;
# 1.3: the result header carries the frame's size, and a mask may come at the model's resolution

Buffer = bytes | bytearray | memoryview

PREFIX_LAYOUT = struct.Struct("<4sBBHBBH")  # magic, major, minor, header_len, msg_type, flags, reserved
FRAME_LAYOUT = struct.Struct("<IQQQIIHBBIff")  # after the prefix
RESULT_LAYOUT = struct.Struct("<IQQQQQQBBHII32s")
RESULT_1_3_LAYOUT = struct.Struct("<II")  # appended in 1.3: frame_width, frame_height (0: unknown)
HEARTBEAT_LAYOUT = struct.Struct("<BBHQQQQQ32s")
PREVIEW_LAYOUT = struct.Struct("<IQQIIIIBBH")

PREFIX_SIZE = PREFIX_LAYOUT.size
FRAME_HEADER_SIZE = PREFIX_SIZE + FRAME_LAYOUT.size
RESULT_HEADER_SIZE = PREFIX_SIZE + RESULT_LAYOUT.size + RESULT_1_3_LAYOUT.size
HEARTBEAT_HEADER_SIZE = PREFIX_SIZE + HEARTBEAT_LAYOUT.size
PREVIEW_HEADER_SIZE = PREFIX_SIZE + PREVIEW_LAYOUT.size
PUBLISH_TS_OFFSET = PREFIX_SIZE + 44  # result header: publish_ts_ns, stamped by the daemon just before sending

MAX_META_BYTES = 64 * 1024
ZERO_SHA = bytes(32)


class MessageType(enum.IntEnum):
    FRAME = 1
    RESULT = 2
    HEARTBEAT = 3
    PREVIEW = 4  # 1.2: the processed frame as a compressed image, on the daemon's preview socket only


class DType(enum.IntEnum):
    UINT8 = 1
    UINT16 = 2
    FLOAT32 = 3

    @property
    def numpy(self) -> np.dtype:
        return np.dtype({DType.UINT8: "<u1", DType.UINT16: "<u2", DType.FLOAT32: "<f4"}[self])


class PixelFormat(enum.IntEnum):
    GRAY8 = 1
    GRAY16 = 2
    RGB8 = 3
    BGR8 = 4
    GRAY32F = 5

    @property
    def channels(self) -> int:
        return 3 if self in (PixelFormat.RGB8, PixelFormat.BGR8) else 1

    @property
    def dtype(self) -> DType:
        return {PixelFormat.GRAY16: DType.UINT16, PixelFormat.GRAY32F: DType.FLOAT32}.get(self, DType.UINT8)


class Task(enum.IntEnum):
    SEGMENTATION = 1
    CLASSIFICATION = 2
    DETECTION = 3

    @property
    def label(self) -> str:
        """The task's name as cards, reports and the command line spell it."""
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> Task:
        try:
            return cls[name.upper()]
        except KeyError:
            raise OptionError(f"unknown task '{name}'; expected one of {[t.label for t in cls]}") from None


class PreviewCodec(enum.IntEnum):
    JPEG = 1


class ResultStatus(enum.IntEnum):
    OK = 0
    ERROR = 1  # inference failed for this frame: no payload, `error` says why


class DaemonState(enum.IntEnum):
    STARTING = 1
    READY = 2
    DEGRADED = 3
    STOPPING = 4


class RejectReason(str, enum.Enum):
    """Why an incoming message was refused; the values are the labels used in stats and logs."""

    BAD_PART_COUNT = "bad_part_count"
    SHORT_HEADER = "short_header"
    BAD_MAGIC = "bad_magic"
    UNSUPPORTED_VERSION = "unsupported_version"
    BAD_HEADER_LENGTH = "bad_header_length"
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    UNEXPECTED_MESSAGE_TYPE = "unexpected_message_type"
    UNKNOWN_DTYPE = "unknown_dtype"
    UNKNOWN_PIXEL_FORMAT = "unknown_pixel_format"
    FORMAT_MISMATCH = "format_mismatch"
    BAD_DIMENSIONS = "bad_dimensions"
    BAD_STRIDE = "bad_stride"
    SIZE_MISMATCH = "size_mismatch"
    BAD_SPACING = "bad_spacing"
    BAD_METADATA = "bad_metadata"
    BAD_PAYLOAD = "bad_payload"
    BAD_PIXELS = "bad_pixels"  # float pixels that are NaN, infinite or outside [0, 1]
    DECODER_ERROR = "decoder_error"  # anything else the decoder raised: a bug, counted instead of crashing
    UNAUTHORIZED = "unauthorized"  # a CURVE client whose key is not in the allow-list
    STREAM_LIMIT = "stream_limit"  # a frame on a new stream while the daemon's maximum of live streams is reached
    PENDING_BYTES = "pending_bytes"  # waiting frames would exceed the daemon's byte budget
    BAD_CONTROL_REQUEST = "bad_control_request"  # a control message that is not one request part (answered)
    CONTROL_TOO_LARGE = "control_too_large"  # a control request over its size limit (answered, not executed)
    MESSAGE_TOO_LARGE = "message_too_large"  # all parts of an ingest message together over the size limit
    STREAM_OWNER = "stream_owner"  # with CURVE, a frame on a stream that another client key owns
    BAD_KEY = "bad_key"  # handshake: wrong server key or a client key pair that does not match
    WRONG_MECHANISM = "wrong_mechanism"  # handshake: no CURVE, or PLAIN, against a CURVE socket
    HANDSHAKE_FAILED = "handshake_failed"  # handshake: any other protocol error libzmq reports
    INCOMPLETE_HANDSHAKE = "incomplete_handshake"  # closed before the handshake ended: wrong socket type, not ZMTP
    UNKNOWN_STREAM_NAME = "unknown_stream_name"  # imagezmq ingest: a name not in ingest.streams (or too many names)
    UNDECLARED_STREAM = "undeclared_stream"  # a frame on a stream id that `[streams] ids` does not declare
    DECODE_BUDGET = "decode_budget"  # a compressed frame over its stream's decoded bytes per second (`[decode]`)
    DECODE_QUEUE_FULL = "decode_queue_full"  # compressed frames waiting for a decode thread over `[decode]`'s bytes


class MaskResolution(str, enum.Enum):
    """The resolution a segmentation mask is published at. MODEL (the default since protocol 1.3): the model's
    own, covering the frame, scaled up by the display (a 480x640 frame's mask shrinks from 307 KB to 49 KB with the
    demo model, a full-HD one's from 2 MB); the frame's when that is no larger. FRAME: always the frame's, as
    protocol 1.2 readers expect."""

    MODEL = "model"
    FRAME = "frame"


class ProtocolError(EdgertError, ValueError):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """Bounds a reader enforces before it touches pixel data (the daemon's `[limits]`): frames on the wire, images
    and cines read from files (`image`), and model packages (an archive is unpacked within `max_package_bytes` and
    `max_package_members`; a card's input is at most max_width x max_height)."""

    max_width: int = ImageLimits.max_width
    max_height: int = ImageLimits.max_height
    max_meta_bytes: int = MAX_META_BYTES
    max_frames: int = ImageLimits.max_frames  # of one file read by replay or convert
    max_package_bytes: int = 1 << 30  # unpacked, all members together
    max_package_members: int = 64

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        bad = [name for name, v in values.items() if not isinstance(v, int) or v <= 0]
        if bad:
            raise OptionError(f"limits: {', '.join(bad)} must be positive integers")

    @property
    def image(self) -> ImageLimits:
        return ImageLimits(self.max_width, self.max_height, self.max_frames)


@dataclass(frozen=True)
class ModelId:
    name: str
    version: str
    sha256: str  # hex digest of model.onnx

    def __str__(self) -> str:
        return f"{self.name}:{self.version}@{self.sha256[:12]}"


def pack_prefix(msg_type: MessageType, header_len: int) -> bytes:
    return PREFIX_LAYOUT.pack(MAGIC, VERSION_MAJOR, VERSION_MINOR, header_len, msg_type, 0, 0)


def sha_bytes(model: ModelId | None) -> bytes:
    return bytes.fromhex(model.sha256) if model else ZERO_SHA


def json_part(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def check_prefix(header: Buffer, expected: MessageType, body_size: int) -> None:
    if len(header) < PREFIX_SIZE:
        raise ProtocolError(RejectReason.SHORT_HEADER, f"header has {len(header)} bytes, at least {PREFIX_SIZE} needed")
    magic, major, _minor, header_len, msg_type, _flags, _ = PREFIX_LAYOUT.unpack_from(header)
    if magic != MAGIC:
        raise ProtocolError(RejectReason.BAD_MAGIC, f"magic {bytes(magic)!r}, expected {MAGIC!r}")
    if major != VERSION_MAJOR:
        raise ProtocolError(
            RejectReason.UNSUPPORTED_VERSION, f"major version {major}, this reader speaks {VERSION_MAJOR}"
        )
    if msg_type not in MessageType._value2member_map_:
        raise ProtocolError(RejectReason.UNKNOWN_MESSAGE_TYPE, f"message type {msg_type}")
    if msg_type != expected:
        raise ProtocolError(
            RejectReason.UNEXPECTED_MESSAGE_TYPE, f"got {MessageType(msg_type).name}, expected {expected.name}"
        )
    if header_len < PREFIX_SIZE + body_size or header_len != len(header):
        raise ProtocolError(
            RejectReason.BAD_HEADER_LENGTH,
            f"header_len {header_len} with a {len(header)}-byte header part; {expected.name} needs at least "
            f"{PREFIX_SIZE + body_size} and both must agree",
        )


def message_type(parts: Sequence[Buffer]) -> MessageType | None:
    """The type of a well-prefixed message, or None if the first part is not a valid v1 prefix."""
    if not parts or len(parts[0]) < PREFIX_SIZE:
        return None
    magic, major, _, _, msg_type, _, _ = PREFIX_LAYOUT.unpack_from(parts[0])
    if magic != MAGIC or major != VERSION_MAJOR or msg_type not in MessageType._value2member_map_:
        return None
    return MessageType(msg_type)


def no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_meta(part: Buffer, limit: int) -> Mapping[str, Any]:
    if len(part) > limit:
        raise ProtocolError(RejectReason.BAD_METADATA, f"metadata has {len(part)} bytes, limit {limit}")
    try:
        meta = json.loads(bytes(part).decode("utf-8"), parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, NaN/Infinity, too deep, a 5000-digit int
        raise ProtocolError(
            RejectReason.BAD_METADATA, f"metadata is not UTF-8 JSON ({exc.__class__.__name__}: {str(exc)[:80]})"
        ) from None
    if not isinstance(meta, dict):
        raise ProtocolError(RejectReason.BAD_METADATA, f"metadata must be a JSON object, got {type(meta).__name__}")
    return meta
