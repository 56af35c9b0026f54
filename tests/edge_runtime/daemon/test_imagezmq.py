"""imagezmq drop-in ingest: the decoder's checks, the name-to-stream table, and a live daemon fed by the unmodified
`imagezmq` package in both of its patterns (REQ/REP, PUB/SUB), including a daemon restart under a REQ sender."""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import imagezmq  # the unmodified package, the counterpart of these tests
import numpy as np
import pytest
import zmq
from PIL import Image

from edge_runtime.core.protocol import Limits, PixelFormat, ProtocolError, RejectReason, encode_frame
from edge_runtime.daemon.config import ConfigError, IngestConfig, IngestFormat, IngestPattern, SocketMode, build_config
from edge_runtime.daemon.imagezmq import MAX_NAMES, ImagezmqDecoder, StreamNames
from edge_runtime.daemon.server import Daemon
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import LOOPBACK, free_ports, serve_process, wait_until

IMAGEZMQ_REP = ("--ingest-format", "imagezmq", "--ingest-pattern", "rep")


def _parts(meta: dict, payload: bytes) -> list[bytes]:
    return [json.dumps(meta).encode(), payload]


def _decoder(**names: int) -> ImagezmqDecoder:
    return ImagezmqDecoder(StreamNames(names), Limits(max_width=1024, max_height=1024))


def _refused(decoder: ImagezmqDecoder, parts: list[bytes]) -> RejectReason:
    with pytest.raises(ProtocolError) as info:
        decoder.decode(parts, 1)
    return info.value.reason


# -- decoder ------------------------------------------------------------------------------------------------------
def test_an_opencv_image_is_a_bgr_frame_with_its_name_stream_and_a_seq() -> None:
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    decoder = _decoder(left=7)
    frames = [decoder.decode(_parts({"msg": "left", "dtype": "uint8", "shape": [48, 64, 3]}, image.tobytes()), t)
              for t in (100, 200)]  # fmt: skip
    assert [(f.stream_id, f.seq, f.capture_ts_ns) for f in frames] == [(7, 1, 100), (7, 2, 200)]
    assert frames[0].pixel_format is PixelFormat.BGR8
    np.testing.assert_array_equal(frames[0].pixels, image)


@pytest.mark.parametrize(
    ("dtype", "shape", "fmt"),
    [("uint8", [20, 30], PixelFormat.GRAY8), ("uint16", [20, 30], PixelFormat.GRAY16),
     ("uint8", [20, 30, 1], PixelFormat.GRAY8), ("float32", [20, 30], PixelFormat.GRAY32F)],
)  # fmt: skip
def test_gray_arrays(dtype: str, shape: list[int], fmt: PixelFormat) -> None:
    array = np.full(shape, 0.5 if dtype == "float32" else 9, dtype=dtype)
    frame = _decoder().decode(_parts({"msg": "cam", "dtype": dtype, "shape": shape}, array.tobytes()), 1)
    assert frame.pixel_format is fmt and frame.pixels.shape == (20, 30)


def test_a_jpeg_from_send_jpg_is_decoded() -> None:
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, 24:] = (250, 10, 10)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=95)
    frame = _decoder().decode(_parts({"msg": "cam"}, buffer.getvalue()), 1)
    assert frame.pixel_format is PixelFormat.RGB8 and frame.pixels.shape == (32, 48, 3)
    assert abs(int(frame.pixels[16, 40, 0]) - 250) < 8 and int(frame.pixels[16, 8, 0]) < 8


def test_refusals_name_what_was_wrong_before_touching_pixels() -> None:
    d = _decoder()
    ok = {"msg": "cam", "dtype": "uint8", "shape": [4, 4]}
    assert _refused(d, [b"only one part"]) is RejectReason.BAD_PART_COUNT
    assert _refused(d, [b"\x00not json", b""]) is RejectReason.BAD_METADATA
    assert _refused(d, _parts({**ok, "extra": 1}, bytes(16))) is RejectReason.BAD_METADATA
    assert _refused(d, _parts({**ok, "msg": ""}, bytes(16))) is RejectReason.BAD_METADATA
    assert _refused(d, _parts({**ok, "msg": 5}, bytes(16))) is RejectReason.BAD_METADATA
    assert _refused(d, _parts({**ok, "dtype": "object"}, bytes(16))) is RejectReason.UNKNOWN_DTYPE
    assert _refused(d, _parts({**ok, "shape": [4]}, bytes(16))) is RejectReason.BAD_DIMENSIONS
    assert _refused(d, _parts({**ok, "shape": [4, True]}, bytes(16))) is RejectReason.BAD_DIMENSIONS
    # a shape over the limits is refused from the metadata alone: the payload is far too short to matter
    assert _refused(d, _parts({**ok, "shape": [100000, 100000, 3]}, bytes(16))) is RejectReason.BAD_DIMENSIONS
    assert _refused(d, _parts({**ok, "shape": [4, 4, 4]}, bytes(64))) is RejectReason.FORMAT_MISMATCH
    assert _refused(d, _parts(ok, bytes(15))) is RejectReason.SIZE_MISMATCH
    nan = np.full((4, 4), np.nan, np.float32).tobytes()
    assert _refused(d, _parts({**ok, "dtype": "float32"}, nan)) is RejectReason.BAD_PIXELS
    assert _refused(d, _parts({"msg": "cam"}, b"not a jpeg")) is RejectReason.BAD_PAYLOAD
    assert _refused(d, _parts({"msg": "cam"}, b"\xff\xd8\xff\xe0broken")) is RejectReason.BAD_PAYLOAD
    # one of our own frames sent to an imagezmq ingest: its binary header is not imagezmq's JSON
    ours = encode_frame(np.zeros((4, 4), np.uint8), stream_id=0, seq=1, capture_ts_ns=1, send_ts_ns=1)
    assert _refused(d, [bytes(p) for p in ours]) is RejectReason.BAD_METADATA


def test_a_jpeg_declaring_a_size_over_the_limits_is_refused_before_decoding() -> None:
    buffer = io.BytesIO()
    Image.new("L", (2000, 8)).save(buffer, "JPEG")
    assert _refused(_decoder(), _parts({"msg": "cam"}, buffer.getvalue())) is RejectReason.BAD_DIMENSIONS


def _take(names: StreamNames, name: str, now_ns: int | None = None) -> int:
    """Claim a name for a frame that is then admitted, as the daemon does."""
    stream_id = names.claim(name, now_ns)
    names.admitted(name, now_ns)
    return stream_id


def test_names_configured_first_then_the_lowest_free_id() -> None:
    names = StreamNames({"probe": 0, "scope": 2})
    assert [_take(names, n) for n in ("scope", "rpi-1", "rpi-2", "probe", "rpi-1")] == [2, 1, 3, 0, 1]
    assert names.snapshot() == {"probe": 0, "scope": 2, "rpi-1": 1, "rpi-2": 3}


def test_unknown_names_are_refused_without_auto_and_the_table_is_bounded() -> None:
    with pytest.raises(ProtocolError) as info:
        StreamNames({"probe": 0}, auto=False).claim("other")
    assert info.value.reason is RejectReason.UNKNOWN_STREAM_NAME
    names = StreamNames({})
    for i in range(MAX_NAMES):
        _take(names, f"frame {i}")  # a sender that puts changing text in the name
    with pytest.raises(ProtocolError):
        names.claim("one more")
    assert _take(names, "frame 0") == 0  # names already known keep working
    with pytest.raises(ValueError, match="same stream id"):
        StreamNames({"a": 1, "b": 1})


def test_names_whose_frames_were_refused_hold_nothing_and_idle_names_are_forgotten() -> None:
    """The attack: 1,100 names sent once each filled the table for good. Now only admitted names stay, for idle_ms."""
    names = StreamNames({"probe": 5}, idle_ms=1000, max_names=4)
    for i in range(100):  # frames refused after their claim (stream table full, JPEG broken...)
        names.claim(f"refused {i}", now_ns=0)
        names.release(f"refused {i}")
    assert names.snapshot(now_ns=0) == {"probe": 5}
    taken = [_take(names, f"cam {i}", now_ns=0) for i in range(4)]
    assert taken == [0, 1, 2, 3]
    with pytest.raises(ProtocolError, match="4 other names"):
        names.claim("late", now_ns=500_000_000)  # all four admitted within idle_ms
    assert _take(names, "late", now_ns=1_200_000_000) == 0  # the idle ones are gone: the lowest id is free again
    assert names.snapshot(now_ns=1_200_000_000) == {"probe": 5, "late": 0}
    names.claim("held", now_ns=1_300_000_000)  # a frame in a decode thread keeps its name however long it takes
    assert _take(names, "other", now_ns=9_000_000_000) != names.claim("held", now_ns=9_000_000_000)
    assert _take(names, "probe", now_ns=10**12) == 5  # configured names stay for good


# -- config -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ingest", "message"),
    [({"format": "imagezmq"}, "imagezmq senders use REQ"),
     ({"format": "imagezmq", "pattern": "sub"}, "must 'connect'"),
     ({"format": "imagezmq", "pattern": "rep", "mode": "connect"}, "must 'bind'"),
     ({"pattern": "rep"}, "needs ingest.format = 'imagezmq'"),
     ({"streams": {"a": 1}}, "apply to ingest.format = 'imagezmq' only"),
     ({"format": "imagezmq", "pattern": "rep", "streams": {"a": -1}}, "ingest.streams.a"),
     ({"format": "imagezmq", "pattern": "rep", "streams": {"a": 1, "b": 1}}, "same stream id"),
     ({"format": "zmq"}, "ingest.format: 'zmq' is not one of"),
     ({"format": "imagezmq", "pattern": "rep", "streams": "a=1"}, "ingest.streams = 'a=1' should be dict")],
)  # fmt: skip
def test_config_errors_name_the_file_and_key(ingest: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="daemon.toml") as info:
        build_config({"model": {"package": "m"}, "ingest": ingest}, Path("."), where="daemon.toml")
    assert message in str(info.value)


def test_config_reads_the_imagezmq_ingest() -> None:
    cfg = build_config(
        {"model": {"package": "m"}, "ingest": {"format": "imagezmq", "pattern": "rep", "streams": {"probe": 3}}},
        Path("."),
    )
    assert cfg.ingest == IngestConfig(pattern=IngestPattern.REP, format=IngestFormat.IMAGEZMQ, streams={"probe": 3})


# -- a live daemon, the unmodified imagezmq package on the other side ---------------------------------------------
def _imagezmq_daemon(start_daemon: Callable[..., Daemon], **ingest: object) -> Daemon:
    return start_daemon(ingest=IngestConfig(**{"endpoint": LOOPBACK, "format": IngestFormat.IMAGEZMQ, **ingest}))


def _results(daemon: Daemon, ctx: zmq.Context) -> ResultSubscriber:
    return ResultSubscriber(daemon.endpoints["results"], max_age_ms=None, context=ctx)


def _ultrasound(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)


@pytest.mark.slow
def test_req_rep_senders_get_ok_at_once_and_results_per_name(
    start_daemon: Callable[..., Daemon], zmq_ctx: zmq.Context
) -> None:
    daemon = _imagezmq_daemon(start_daemon, pattern=IngestPattern.REP, streams={"probe": 4})
    sub = _results(daemon, zmq_ctx)
    time.sleep(0.2)  # the subscription reaches the daemon
    probe = imagezmq.ImageSender(connect_to=daemon.endpoints["ingest"])
    scope = imagezmq.ImageSender(connect_to=daemon.endpoints["ingest"])
    try:
        replies = []
        for i in range(20):
            replies.append(probe.send_image("probe", _ultrasound(i)))
            replies.append(scope.send_image("scope", _ultrasound(i)))
            time.sleep(0.01)
        assert replies == [b"OK"] * 40
        seen: dict[int, int] = {}

        def got_both() -> bool:
            result = sub.recv(100)
            if result is not None:
                seen[result.stream_id] = max(seen.get(result.stream_id, 0), result.seq)
            return {0, 4} <= set(seen)

        wait_until(got_both, timeout=10)  # "probe" as configured, "scope" given the lowest free id
        assert daemon.status()["imagezmq_streams"] == {"probe": 4, "scope": 0}
        assert max(seen.values()) <= 20  # seqs count each name's frames
        # a refused frame is answered too, with the reason: the sender is never left waiting
        assert probe.send_image("probe", np.zeros((4, 4, 4), np.uint8)) == b"REFUSED format_mismatch"
        assert probe.send_image("probe", _ultrasound()) == b"OK"  # and the daemon keeps serving
        assert daemon.stats.snapshot()["rejected_by_reason"]["format_mismatch"] == 1
    finally:
        probe.close()
        scope.close()
        sub.close()


@pytest.mark.slow
def test_req_rep_refusals_without_a_request_body_are_answered(
    start_daemon: Callable[..., Daemon], zmq_ctx: zmq.Context
) -> None:
    daemon = _imagezmq_daemon(start_daemon, pattern=IngestPattern.REP)
    req = zmq_ctx.socket(zmq.REQ)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(daemon.endpoints["ingest"])
    req.send_multipart([b"a", b"b", b"c", b"d"])  # more parts than any frame
    assert req.recv() == b"REFUSED bad_part_count"
    req.send_multipart([b"{}", b""])
    assert req.recv() == b"REFUSED bad_metadata"
    req.close(linger=0)


@pytest.mark.slow
def test_pub_sub_sender_binds_and_the_daemon_connects(
    start_daemon: Callable[..., Daemon], zmq_ctx: zmq.Context
) -> None:
    port = free_ports(1)[0]
    sender = imagezmq.ImageSender(connect_to=f"tcp://127.0.0.1:{port}", REQ_REP=False)  # binds, as imagezmq does
    daemon = _imagezmq_daemon(
        start_daemon, endpoint=f"tcp://127.0.0.1:{port}", mode=SocketMode.CONNECT, pattern=IngestPattern.SUB
    )
    sub = _results(daemon, zmq_ctx)
    try:
        jpeg = io.BytesIO()
        Image.fromarray(_ultrasound()).save(jpeg, "JPEG")

        def sent_and_served() -> bool:
            sender.send_image("cart-cam", _ultrasound())  # PUB/SUB: no reply, frames before the join are lost
            sender.send_jpg("cart-jpeg", jpeg.getvalue())
            result = sub.recv(50)
            return result is not None and daemon.status()["imagezmq_streams"].keys() == {"cart-cam", "cart-jpeg"}

        wait_until(sent_and_served, timeout=10)
        assert daemon.stats.snapshot()["rejected_by_reason"] == {}
    finally:
        sender.close()
        sub.close()


@pytest.mark.slow
def test_a_req_sender_keeps_going_through_a_daemon_restart(
    tiny_models: dict[str, Path], tmp_path: Path, zmq_ctx: zmq.Context
) -> None:
    """imagezmq's own hub leaves a REQ sender waiting forever when it restarts mid-request. The daemon answers
    every queued request before it stops; the sender's next request waits in its own socket for the new daemon."""
    ports = free_ports(3)
    ready = tmp_path / "ready.json"
    daemon = serve_process(tiny_models["seg_tiny"], ports, ready, *IMAGEZMQ_REP)
    stop = threading.Event()
    replies: list[bytes] = []
    longest = [0.0]

    def scanner() -> None:  # an unmodified imagezmq REQ sender at 30 fps
        sender = imagezmq.ImageSender(connect_to=f"tcp://127.0.0.1:{ports[0]}")
        frame = np.zeros((16, 16), np.uint8)
        while not stop.wait(1 / 30):
            t0 = time.monotonic()
            replies.append(sender.send_image("probe", frame))
            longest[0] = max(longest[0], time.monotonic() - t0)
        sender.close()

    thread = threading.Thread(target=scanner, daemon=True)
    try:
        wait_until(ready.exists, timeout=30)
        sub = ResultSubscriber(f"tcp://127.0.0.1:{ports[1]}", max_age_ms=None, context=zmq_ctx)
        thread.start()
        wait_until(lambda: sub.recv(50) is not None, timeout=10)
        for _ in range(2):  # twice, so it is not one lucky timing
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(10) == 0
            ready.unlink(missing_ok=True)
            daemon = serve_process(
                tiny_models["seg_tiny"], ports, ready, *IMAGEZMQ_REP
            )  # same endpoints, as systemd would
            wait_until(ready.exists, timeout=30)
            before = len(replies)
            wait_until(lambda: len(replies) > before + 10, timeout=10)  # the sender goes on by itself
            wait_until(lambda: sub.recv(50) is not None and sub.daemon_alive, timeout=10)
        assert thread.is_alive()
        assert set(replies) <= {b"OK", b"REFUSED stopping"}
        assert replies[-5:] == [b"OK"] * 5
    finally:
        stop.set()
        thread.join(10)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert not thread.is_alive(), "the imagezmq sender was left waiting for an answer"


def test_requests_queued_at_shutdown_are_answered(zmq_ctx: zmq.Context) -> None:
    """A request the daemon has queued but not read when it stops is answered, not dropped with the socket."""
    from edge_runtime.daemon.ingest import IngestSocket, MessageBounds

    def router() -> zmq.Socket:
        sock = zmq_ctx.socket(zmq.ROUTER)
        sock.bind(LOOPBACK)
        return sock

    ingest = IngestSocket(router, MessageBounds(3, 1 << 20))
    senders = [zmq_ctx.socket(zmq.REQ) for _ in range(3)]
    for req in senders:
        req.setsockopt(zmq.RCVTIMEO, 5000)
        req.connect(ingest.socket.getsockopt_string(zmq.LAST_ENDPOINT))
        req.send_multipart([b'{"msg": "cam"}', b"\xff\xd8\xff"])
    wait_until(lambda: ingest.socket.poll(10), timeout=5)
    time.sleep(0.1)  # all three requests queued in the ROUTER
    Daemon._answer_waiting(ingest)
    ingest.close(200)
    assert [req.recv() for req in senders] == [b"REFUSED stopping"] * 3
    for req in senders:
        req.close(linger=0)


def _jpeg(side: int, seed: int = 0) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)  # noise: slow to decode
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.slow
def test_jpegs_are_decoded_off_the_thread_that_answers_and_a_flood_does_not_starve_another_name(
    start_daemon: Callable[..., Daemon], zmq_ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 32, item 8: a flood of large JPEGs from one name used to be decoded on the receive thread, which also
    answers every REQ sender. Now every decode runs on a decode thread, and the other name's frames are served."""
    import os

    from edge_runtime.daemon.imagezmq import ImagezmqDecoder

    decoded_on: list[str] = []
    niceness: set[int] = set()
    finish = ImagezmqDecoder.finish

    def spy(self: ImagezmqDecoder, parsed: object) -> object:
        if getattr(parsed, "jpeg", None) is not None:
            decoded_on.append(threading.current_thread().name)
            niceness.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return finish(self, parsed)  # type: ignore[arg-type]

    monkeypatch.setattr(ImagezmqDecoder, "finish", spy)
    daemon = _imagezmq_daemon(start_daemon, pattern=IngestPattern.REP, streams={"probe": 0, "flood": 1})
    sub = _results(daemon, zmq_ctx)
    time.sleep(0.2)
    big, small = _jpeg(1536), _jpeg(96, seed=1)
    stop = threading.Event()
    flood_replies: list[bytes] = []

    def flood() -> None:
        sender = imagezmq.ImageSender(connect_to=daemon.endpoints["ingest"])
        while not stop.is_set() and len(flood_replies) < 400:
            flood_replies.append(sender.send_jpg("flood", big))
        sender.close()

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    probe = imagezmq.ImageSender(connect_to=daemon.endpoints["ingest"])
    seen: dict[int, int] = {}
    try:
        wait_until(lambda: len(flood_replies) >= 5, timeout=10)
        replies = []
        for _ in range(40):
            replies.append(probe.send_jpg("probe", small))
            while (result := sub.recv(20)) is not None:
                seen[result.stream_id] = seen.get(result.stream_id, 0) + 1
        end = time.monotonic() + 2
        while time.monotonic() < end and seen.get(0, 0) < 10:
            if (result := sub.recv(50)) is not None:
                seen[result.stream_id] = seen.get(result.stream_id, 0) + 1
    finally:
        stop.set()
        thread.join(10)
        probe.close()
        sub.close()
    assert replies == [b"OK"] * 40 and set(flood_replies) == {b"OK"}
    assert decoded_on and {n.rsplit("-", 1)[0] for n in decoded_on} == {"edgert-decode"}  # never edgert-receive
    assert min(niceness) > os.getpriority(os.PRIO_PROCESS, 0)  # and below the receive and inference threads
    assert seen.get(0, 0) >= 10  # the probe's frames kept being served through the flood
    assert seen.get(1, 0) >= 1  # and the flood's too: newest wins, not refused


def test_a_jpeg_the_stream_table_could_never_hold_is_refused_before_it_is_decoded(
    start_daemon: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.daemon.imagezmq import ImagezmqDecoder
    from edge_runtime.daemon.slots import StreamLimits

    calls: list[object] = []
    monkeypatch.setattr(ImagezmqDecoder, "finish", lambda self, parsed: calls.append(parsed))
    daemon = start_daemon(
        ingest=IngestConfig(endpoint=LOOPBACK, format=IngestFormat.IMAGEZMQ, pattern=IngestPattern.REP),
        streams=StreamLimits(max_pending_bytes=100_000),
    )
    sender = imagezmq.ImageSender(connect_to=daemon.endpoints["ingest"])
    try:
        assert sender.send_jpg("probe", _jpeg(256)) == b"REFUSED pending_bytes"  # 196,608 bytes decoded
    finally:
        sender.close()
    assert calls == []
    assert daemon.status()["imagezmq_streams"] == {}  # a refused name holds no place


def test_a_request_over_the_message_limit_is_answered_not_dropped(
    start_daemon: Callable[..., Daemon], zmq_ctx: zmq.Context
) -> None:
    """A part over ZeroMQ's MAXMSGSIZE used to drop the connection without a reply: a REQ sender waited forever."""
    daemon = start_daemon(
        ingest=IngestConfig(endpoint=LOOPBACK, format=IngestFormat.IMAGEZMQ, pattern=IngestPattern.REP),
        limits=Limits(max_width=256, max_height=256),  # parts up to 790,528 bytes
    )
    req = zmq_ctx.socket(zmq.REQ)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(daemon.endpoints["ingest"])
    try:
        meta = {"msg": "cam", "dtype": "uint8", "shape": [64, 64]}
        req.send_multipart([json.dumps(meta).encode(), bytes(4_000_000)])  # over max_message_bytes and max_meta
        assert req.recv() == b"REFUSED message_too_large"
        req.send_multipart([json.dumps(meta).encode(), bytes(64 * 64)])
        assert req.recv() == b"OK"  # the same connection goes on
    finally:
        req.close(linger=0)


def test_names_of_refused_frames_do_not_fill_the_table(start_daemon: Callable[..., Daemon]) -> None:
    from edge_runtime.daemon.slots import StreamLimits

    daemon = start_daemon(
        ingest=IngestConfig(endpoint=LOOPBACK, format=IngestFormat.IMAGEZMQ, pattern=IngestPattern.REP),
        streams=StreamLimits(max_streams=2, idle_ms=300),
    )
    sender = imagezmq.ImageSender(connect_to=daemon.endpoints["ingest"])
    image = np.zeros((16, 16), np.uint8)
    try:
        replies = [sender.send_image(f"name {i}", image) for i in range(60)]
        assert replies[:2] == [b"OK"] * 2 and set(replies[2:]) == {b"REFUSED stream_limit"}
        assert sorted(daemon.status()["imagezmq_streams"]) == ["name 0", "name 1"]
        time.sleep(0.4)  # both idle now
        assert sender.send_image("newcomer", image) == b"OK"
        assert daemon.status()["imagezmq_streams"] == {"newcomer": 0}
    finally:
        sender.close()
