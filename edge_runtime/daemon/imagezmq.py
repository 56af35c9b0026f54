"""imagezmq's message format, read by the daemon's ingest so that unmodified `imagezmq.ImageSender`s can feed it.

imagezmq sends two parts: JSON metadata and the payload.

- `send_image(name, array)`: `{"msg": name, "dtype": "uint8", "shape": [H, W, 3]}`, then the raw array (an
  OpenCV image, so three channels are BGR);
- `send_jpg(name, buffer)`: `{"msg": name}`, then a JPEG stream.

The format has no version, sequence number or timestamp, so the daemon supplies them: the name maps to a stream
id (configured, or assigned on first sight), the seq counts that name's frames from 1, and the capture time is
when the daemon received the message (the sender's own clock is unknown). Everything else is checked as strictly
as our own frames: the metadata's size and keys, the dtype, the shape within the limits and against the payload's
length before the pixels are touched, a JPEG's declared size before it is decoded. No pickle: the JSON is parsed
with `json.loads`, the payload is only ever viewed as the declared dtype.

With REQ/REP, the daemon's ROUTER answers every message at once (`OK`, or `REFUSED <reason>`) before it is
inferred, so a sender never waits for inference; the newest frame per stream wins as for every ingest.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from edge_runtime.protocol import Buffer, Frame, Limits, PixelFormat, ProtocolError, RejectReason

log = logging.getLogger("edgert.daemon")

REPLY_OK = b"OK"  # what imagezmq's own ImageHub answers, and what its users' code may compare against
MAX_NAME_CHARS = 256
MAX_NAMES = 1024  # names remembered with auto-assigned ids; beyond, unknown names are refused
_DTYPES: dict[str, np.dtype[Any]] = {
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "float32": np.dtype(np.float32),
}
_JPEG_SOI = b"\xff\xd8\xff"


def refusal_reply(reason: RejectReason) -> bytes:
    """The answer to a refused REQ/REP message: the sender's `send_image` returns it."""
    return b"REFUSED " + reason.value.encode()


def check_names(configured: Mapping[str, int]) -> None:
    """ValueError, naming the key of `[ingest] streams`, unless every id is a stream id and no two names share one."""
    for name, stream_id in configured.items():
        if not isinstance(stream_id, int) or isinstance(stream_id, bool) or not 0 <= stream_id < 2**32:
            raise ValueError(f"ingest.streams.{name}: {stream_id!r} is not a stream id (0..2**32-1)")
    if len(set(configured.values())) != len(configured):
        raise ValueError("ingest.streams: two names map to the same stream id")


class StreamNames:
    """imagezmq names to stream ids: the configured table first; with `auto`, an unknown name takes the lowest id
    neither configured nor taken. The table is bounded (MAX_NAMES) so a sender that puts changing text in the name
    cannot grow it without end. Thread-safe (the receiver assigns, `snapshot` is read by the control thread)."""

    def __init__(self, configured: Mapping[str, int], auto: bool = True) -> None:
        check_names(configured)
        self._ids = dict(configured)
        self._auto = auto
        self._next = 0
        self._lock = threading.Lock()

    def stream_id(self, name: str) -> int:
        with self._lock:
            found = self._ids.get(name)
            if found is not None:
                return found
            if not self._auto:
                raise ProtocolError(RejectReason.UNKNOWN_STREAM_NAME, "the name is not in ingest.streams")
            if len(self._ids) >= MAX_NAMES:
                raise ProtocolError(RejectReason.UNKNOWN_STREAM_NAME, f"already {MAX_NAMES} names seen")
            taken = set(self._ids.values())
            while self._next in taken:
                self._next += 1
            self._ids[name] = self._next
            log.info("imagezmq name %r is stream %d", name[:64], self._next)
            return self._next

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._ids)


class ImagezmqDecoder:
    """Decodes imagezmq messages into frames; keeps each stream's seq counter. Used by the receive thread only."""

    def __init__(self, names: StreamNames, limits: Limits = Limits()) -> None:
        self.names = names
        self.limits = limits
        self._seq: dict[int, int] = {}

    def decode(self, parts: Sequence[Buffer], recv_ts_ns: int) -> Frame:
        if len(parts) != 2:
            raise ProtocolError(RejectReason.BAD_PART_COUNT, f"imagezmq sends 2 parts, got {len(parts)}")
        meta = self._meta(parts[0])
        name = meta.get("msg")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise ProtocolError(RejectReason.BAD_METADATA, f"'msg' must be a name of 1..{MAX_NAME_CHARS} characters")
        if "dtype" in meta or "shape" in meta:
            pixels, fmt = self._array(meta, parts[1])
        else:
            pixels, fmt = self._jpeg(parts[1])
        stream_id = self.names.stream_id(name)
        seq = self._seq.get(stream_id, 0) + 1
        self._seq[stream_id] = seq
        return Frame(stream_id, seq, recv_ts_ns, recv_ts_ns, fmt, pixels)

    def _meta(self, part: Buffer) -> dict[str, Any]:
        raw = memoryview(part)
        if raw.nbytes > self.limits.max_meta_bytes:
            raise ProtocolError(RejectReason.BAD_METADATA, f"metadata of {raw.nbytes} bytes over the limit")
        try:
            meta = json.loads(bytes(raw))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError(
                RejectReason.BAD_METADATA, "the first part is not imagezmq's JSON metadata (an edgert frame?)"
            ) from None
        if not isinstance(meta, dict):
            raise ProtocolError(RejectReason.BAD_METADATA, "the metadata is not a JSON object")
        unknown = set(meta) - {"msg", "dtype", "shape"}
        if unknown:
            raise ProtocolError(RejectReason.BAD_METADATA, f"unknown metadata keys {sorted(unknown)[:4]}")
        return meta

    def _check_size(self, width: int, height: int) -> None:
        if not (0 < width <= self.limits.max_width and 0 < height <= self.limits.max_height):
            raise ProtocolError(
                RejectReason.BAD_DIMENSIONS,
                f"{width}x{height} outside 1..{self.limits.max_width} x 1..{self.limits.max_height}",
            )

    def _array(self, meta: Mapping[str, Any], payload: Buffer) -> tuple[np.ndarray, PixelFormat]:
        dtype = _DTYPES.get(str(meta.get("dtype")))
        if dtype is None:
            raise ProtocolError(RejectReason.UNKNOWN_DTYPE, f"dtype {str(meta.get('dtype'))[:32]!r}")
        shape = meta.get("shape")
        if (
            not isinstance(shape, list)
            or not 2 <= len(shape) <= 3
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
        ):
            raise ProtocolError(RejectReason.BAD_DIMENSIONS, "shape must be [H, W] or [H, W, C] integers")
        height, width = shape[0], shape[1]
        self._check_size(width, height)
        channels = shape[2] if len(shape) == 3 else 1
        if channels == 3 and dtype == np.uint8:
            fmt = PixelFormat.BGR8  # OpenCV's order, which imagezmq's users send
        elif channels == 1:
            fmt = {np.uint8: PixelFormat.GRAY8, np.uint16: PixelFormat.GRAY16, np.float32: PixelFormat.GRAY32F}[
                dtype.type
            ]
        else:
            raise ProtocolError(
                RejectReason.FORMAT_MISMATCH, f"{channels} channels of {dtype.name}: need 1 channel, or 3 of uint8"
            )
        view = memoryview(payload)
        expected = height * width * channels * dtype.itemsize
        if view.nbytes != expected:
            raise ProtocolError(
                RejectReason.SIZE_MISMATCH, f"payload of {view.nbytes} bytes for shape {shape} {dtype.name}"
            )
        pixels = np.frombuffer(view, dtype=dtype).reshape((height, width) if channels == 1 else (height, width, 3))
        if dtype == np.float32 and not (np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0):
            raise ProtocolError(RejectReason.BAD_PIXELS, "float32 pixels must be finite and within [0, 1]")
        return pixels, fmt

    def _jpeg(self, payload: Buffer) -> tuple[np.ndarray, PixelFormat]:
        data = bytes(memoryview(payload))
        if not data.startswith(_JPEG_SOI):
            raise ProtocolError(RejectReason.BAD_PAYLOAD, "a message without dtype and shape must carry a JPEG")
        try:
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
                self._check_size(*image.size)  # the declared size, before a single pixel is decoded
                if image.mode not in ("L", "RGB"):
                    raise ProtocolError(RejectReason.FORMAT_MISMATCH, f"JPEG mode {image.mode}: need L or RGB")
                pixels = np.asarray(image)
        except ProtocolError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ProtocolError(RejectReason.BAD_PAYLOAD, f"JPEG does not decode: {str(exc)[:80]}") from None
        if pixels.shape[:2] != (image.size[1], image.size[0]):
            raise ProtocolError(RejectReason.BAD_PAYLOAD, "JPEG decoded to a size other than it declared")
        return pixels, PixelFormat.GRAY8 if pixels.ndim == 2 else PixelFormat.RGB8
