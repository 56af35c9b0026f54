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
inferred, so a sender never waits for inference; the newest frame per stream wins as for every ingest. The
receive thread that answers never decodes: a JPEG's header is checked there (`parse`), and its pixels are decoded
by the decode threads (`finish`, see decoding.py), as is the pixel check of float32 arrays. So `OK` says a frame
passed every check short of decoding; a JPEG whose header is sound but whose data is not is counted
(`bad_payload`) after its answer.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from edge_runtime.core.errors import OptionError, escaped
from edge_runtime.core.protocol import Buffer, Frame, Limits, PixelFormat, ProtocolError, RejectReason

log = logging.getLogger("edgert.daemon")

REPLY_OK = b"OK"  # what imagezmq's own ImageHub answers, and what its users' code may compare against
MAX_NAME_CHARS = 256
MAX_NAMES = (
    1024  # auto-assigned names in use at once (admitted within idle_ms, or in hand); beyond, new ones are refused
)
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
            raise OptionError(f"ingest.streams.{name}: {stream_id!r} is not a stream id (0..2**32-1)")
    if len(set(configured.values())) != len(configured):
        raise OptionError("ingest.streams: two names map to the same stream id")


class StreamNames:
    """imagezmq names to stream ids: the configured table first; with `auto`, an unknown name takes the lowest id
    neither configured nor taken. Only names whose frames are admitted stay: a name is claimed for the frame in
    hand, kept once a frame of it is admitted, released if none ever was, and forgotten once idle for `idle_ms`
    (configured names stay for good). So names whose frames were refused hold nothing, and a sender that puts
    changing text in the name fills at most `max_names` places, for `idle_ms`. Thread-safe (the receive and decode
    threads claim and admit, `snapshot` is read by the control thread)."""

    def __init__(
        self, configured: Mapping[str, int], auto: bool = True, idle_ms: int = 5000, max_names: int = MAX_NAMES
    ) -> None:
        check_names(configured)
        self._configured = dict(configured)
        self._auto = auto
        self._idle_ns = idle_ms * 1_000_000
        self._max_names = max_names
        self._names: dict[str, _Name] = {n: _Name(i, admitted=True) for n, i in configured.items()}
        self._lock = threading.Lock()

    def claim(self, name: str, now_ns: int | None = None) -> int:
        """The stream id for a frame of `name`; pair with `admitted` or `release`. ProtocolError when unknown."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            entry = self._names.get(name)
            if entry is None:
                if not self._auto:
                    raise ProtocolError(RejectReason.UNKNOWN_STREAM_NAME, "the name is not in ingest.streams")
                self._expire(now)
                if len(self._names) - len(self._configured) >= self._max_names:
                    raise ProtocolError(RejectReason.UNKNOWN_STREAM_NAME, f"{self._max_names} other names are in use")
                taken = {e.stream_id for e in self._names.values()}
                stream_id = next(i for i in range(len(taken) + 1) if i not in taken)
                entry = self._names[name] = _Name(stream_id, admitted=False, last_ns=now)
            entry.claims += 1
            return entry.stream_id

    def next_seq(self, name: str) -> int:
        """The seq of a claimed frame of `name` that is about to be offered to the stream table (1, 2, ... per name;
        a gap is a frame refused after its seq)."""
        with self._lock:
            entry = self._names[name]
            entry.seq += 1
            return entry.seq

    def admitted(self, name: str, now_ns: int | None = None) -> None:
        """A claimed frame of `name` was admitted: the name stays."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            entry = self._names[name]
            if not entry.admitted:
                log.info("imagezmq name %s is stream %d", escaped(name[:64]), entry.stream_id)
            entry.claims -= 1
            entry.admitted, entry.last_ns = True, now

    def release(self, name: str) -> None:
        """A claimed frame of `name` was refused: a name that never had a frame admitted is forgotten."""
        with self._lock:
            entry = self._names.get(name)
            if entry is None:
                return
            entry.claims -= 1
            if not entry.admitted and entry.claims <= 0:
                del self._names[name]

    def _expire(self, now: int) -> None:
        horizon = now - self._idle_ns
        idle = [n for n, e in self._names.items()
                if n not in self._configured and e.claims <= 0 and e.last_ns < horizon]  # fmt: skip
        for name in idle:
            del self._names[name]

    def snapshot(self, now_ns: int | None = None) -> dict[str, int]:
        """The names with admitted frames (and the configured ones), as `status` shows them."""
        with self._lock:
            self._expire(time.monotonic_ns() if now_ns is None else now_ns)
            return {n: e.stream_id for n, e in self._names.items() if e.admitted}


@dataclass
class _Name:
    stream_id: int
    admitted: bool  # a frame of it was admitted (configured names count as admitted)
    last_ns: int = 0  # monotonic ns of its last admitted frame (or of its claim)
    claims: int = 0  # frames claimed and not yet admitted or refused
    seq: int = 0


def _check_unit_floats(pixels: np.ndarray) -> None:
    if not (np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0):
        raise ProtocolError(RejectReason.BAD_PIXELS, "float32 pixels must be finite and within [0, 1]")


@dataclass(frozen=True)
class Parsed:
    """One imagezmq message after the receive thread's checks: either pixels, or a JPEG whose header was checked."""

    name: str
    recv_ts_ns: int
    pixels: np.ndarray | None = None  # an array message: a view of the received part
    pixel_format: PixelFormat | None = None
    jpeg: Buffer | None = None  # a JPEG message: the compressed bytes, decoded by `ImagezmqDecoder.finish`
    decoded_bytes: int = 0  # what the frame's pixels take once decoded
    checked: bool = True  # False: float32 pixels still to be checked by `finish` (a pass over every pixel)

    @property
    def ready(self) -> bool:
        """Nothing left for a decode thread: the frame can be admitted on the receive thread."""
        return self.jpeg is None and self.checked

    def frame(self, stream_id: int, seq: int) -> Frame:
        assert self.pixels is not None and self.pixel_format is not None
        return Frame(stream_id, seq, self.recv_ts_ns, self.recv_ts_ns, self.pixel_format, self.pixels)


class ImagezmqDecoder:
    """Checks imagezmq messages (`parse`, cheap: metadata, shapes, a JPEG's header) and decodes JPEGs (`finish`, on
    a decode thread). `decode` does both on the calling thread, for tools and tests."""

    def __init__(self, names: StreamNames, limits: Limits = Limits()) -> None:
        self.names = names
        self.limits = limits

    def decode(self, parts: Sequence[Buffer], recv_ts_ns: int) -> Frame:
        parsed = self.parse(parts, recv_ts_ns)
        stream_id = self.names.claim(parsed.name)
        try:
            frame = self.finish(parsed).frame(stream_id, self.names.next_seq(parsed.name))
        except BaseException:
            self.names.release(parsed.name)
            raise
        self.names.admitted(parsed.name)
        return frame

    def parse(self, parts: Sequence[Buffer], recv_ts_ns: int) -> Parsed:
        """Every check that needs no decoding; a JPEG's header is read, its pixels are not."""
        if len(parts) != 2:
            raise ProtocolError(RejectReason.BAD_PART_COUNT, f"imagezmq sends 2 parts, got {len(parts)}")
        meta = self._meta(parts[0])
        name = meta.get("msg")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise ProtocolError(RejectReason.BAD_METADATA, f"'msg' must be a name of 1..{MAX_NAME_CHARS} characters")
        if "dtype" in meta or "shape" in meta:
            pixels, fmt = self._array(meta, parts[1])
            return Parsed(
                name, recv_ts_ns, pixels, fmt, decoded_bytes=pixels.nbytes, checked=pixels.dtype != np.float32
            )
        return Parsed(name, recv_ts_ns, jpeg=parts[1], decoded_bytes=self._jpeg_header(parts[1]))

    def finish(self, parsed: Parsed) -> Parsed:
        """`parsed` with pixels: a JPEG decoded (ProtocolError if it does not decode as its header said)."""
        if parsed.jpeg is not None:
            pixels, fmt = self._jpeg(parsed.jpeg)
            return Parsed(parsed.name, parsed.recv_ts_ns, pixels, fmt, decoded_bytes=pixels.nbytes)
        if not parsed.checked:
            assert parsed.pixels is not None
            _check_unit_floats(parsed.pixels)
            return Parsed(
                parsed.name, parsed.recv_ts_ns, parsed.pixels, parsed.pixel_format, decoded_bytes=parsed.decoded_bytes
            )
        return parsed

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
        return pixels, fmt

    def _jpeg_header(self, payload: Buffer) -> int:
        """The decoded size a JPEG declares, checked against the limits and modes; no pixel is decoded."""
        try:
            with self._open_jpeg(payload) as image:  # reads the header only
                return self._declared_bytes(image)
        except ProtocolError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ProtocolError(RejectReason.BAD_PAYLOAD, f"JPEG header does not parse: {str(exc)[:80]}") from None

    @staticmethod
    def _open_jpeg(payload: Buffer) -> Image.Image:
        data = memoryview(payload)
        if bytes(data[:3]) != _JPEG_SOI:
            raise ProtocolError(RejectReason.BAD_PAYLOAD, "a message without dtype and shape must carry a JPEG")
        return Image.open(io.BytesIO(data), formats=["JPEG"])

    def _declared_bytes(self, image: Image.Image) -> int:
        """The header's size and mode against the limits, before a pixel is decoded; the bytes it decodes to."""
        width, height = image.size
        self._check_size(width, height)
        if image.mode not in ("L", "RGB"):
            raise ProtocolError(RejectReason.FORMAT_MISMATCH, f"JPEG mode {image.mode}: need L or RGB")
        return int(width) * int(height) * (1 if image.mode == "L" else 3)

    def _jpeg(self, payload: Buffer) -> tuple[np.ndarray, PixelFormat]:
        try:
            with self._open_jpeg(payload) as image:  # opened once: the header checked again, then the pixels
                self._declared_bytes(image)  # `finish` may be given any Parsed
                size = image.size
                pixels = np.asarray(image)
        except ProtocolError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ProtocolError(RejectReason.BAD_PAYLOAD, f"JPEG does not decode: {str(exc)[:80]}") from None
        if pixels.shape[:2] != (size[1], size[0]) or pixels.ndim not in (2, 3):
            raise ProtocolError(RejectReason.BAD_PAYLOAD, "JPEG decoded to a size other than it declared")
        return pixels, PixelFormat.GRAY8 if pixels.ndim == 2 else PixelFormat.RGB8
