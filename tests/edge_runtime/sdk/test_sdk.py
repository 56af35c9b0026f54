"""FrameSender and ResultSubscriber against raw sockets, without a daemon."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import zmq

from edge_runtime.core.protocol import (
    DaemonState,
    Heartbeat,
    ModelId,
    Result,
    ResultStatus,
    Task,
    encode_heartbeat,
    encode_result,
)
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from tests.conftest import wait_until

MODEL = ModelId("m", "1", "cd" * 32)


def _result(seq: int, capture_ts_ns: int) -> list:
    r = Result(
        stream_id=0, seq=seq, capture_ts_ns=capture_ts_ns, recv_ts_ns=capture_ts_ns, infer_start_ns=capture_ts_ns,
        infer_end_ns=capture_ts_ns, publish_ts_ns=capture_ts_ns, task=Task.SEGMENTATION, status=ResultStatus.OK,
        model=MODEL, labels=("background", "x"), colors=((0, 0, 0), (9, 9, 9)), mask=np.zeros((2, 2), np.uint8),
    )  # fmt: skip
    return [bytes(p) for p in encode_result(r)]


def _heartbeat(state: DaemonState = DaemonState.READY) -> list:
    return [bytes(p) for p in encode_heartbeat(Heartbeat(state, time.time_ns(), 0, 0, 0, 0, MODEL))]


@pytest.fixture
def publisher(zmq_ctx: zmq.Context):
    pub = zmq_ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    yield pub
    pub.close()


def _joined(pub: zmq.Socket, sub: ResultSubscriber) -> None:
    """PUB/SUB joins asynchronously: publish heartbeats until one gets through."""
    wait_until(lambda: pub.send_multipart(_heartbeat()) or sub.recv(20) is None and sub.stats.heartbeats > 0)


def test_sender_never_blocks_without_a_daemon(zmq_ctx: zmq.Context) -> None:
    frame = np.zeros((480, 640), np.uint8)
    with socket.socket() as reserved:  # a bound port that never listens: connections are refused
        reserved.bind(("127.0.0.1", 0))
        sender = FrameSender(f"tcp://127.0.0.1:{reserved.getsockname()[1]}", context=zmq_ctx)
        worker = threading.Thread(target=lambda: [sender.send(frame) for _ in range(200)])
        worker.start()
        worker.join(10.0)
    assert not worker.is_alive(), "send() blocked"
    assert (sender.stats.sent, sender.stats.dropped) == (0, 200)
    sender.close()


def test_sender_counts_frames_and_sequences(zmq_ctx: zmq.Context) -> None:
    with zmq_ctx.socket(zmq.PULL) as pull:
        pull.bind("tcp://127.0.0.1:*")
        with FrameSender(pull.getsockopt_string(zmq.LAST_ENDPOINT), stream_id=2, context=zmq_ctx) as sender:
            wait_until(lambda: sender.send(np.zeros((2, 2), np.uint8)))
            sender.send(np.zeros((2, 2), np.uint8))
            assert pull.poll(2000)
            from edge_runtime.core.protocol import decode_frame

            seqs = [decode_frame(pull.recv_multipart()).seq]
            assert pull.poll(2000)
            seqs.append(decode_frame(pull.recv_multipart()).seq)
    assert seqs[1] == seqs[0] + 1


def test_stale_results_are_discarded_and_counted(publisher: zmq.Socket, zmq_ctx: zmq.Context) -> None:
    endpoint = publisher.getsockopt_string(zmq.LAST_ENDPOINT)
    with ResultSubscriber(endpoint, max_age_ms=100, context=zmq_ctx) as sub:
        _joined(publisher, sub)
        publisher.send_multipart(_result(1, time.time_ns() - 5_000_000_000))  # captured 5 s ago
        publisher.send_multipart(_result(2, time.time_ns()))
        r = sub.recv(2000)
        assert r is not None and r.seq == 2
        assert sub.stats.stale == 1 and sub.stats.results == 1


def test_recv_latest_skips_to_the_newest(publisher: zmq.Socket, zmq_ctx: zmq.Context) -> None:
    endpoint = publisher.getsockopt_string(zmq.LAST_ENDPOINT)
    with ResultSubscriber(endpoint, max_age_ms=None, context=zmq_ctx) as sub:
        _joined(publisher, sub)
        for seq in range(5):
            publisher.send_multipart(_result(seq, time.time_ns()))
        wait_until(lambda: sub._sock.poll(0))  # the first result is queued
        latest = None
        while latest is None or latest.seq < 4:
            latest = sub.recv_latest(1000)
            assert latest is not None
        assert sub.stats.skipped >= 1


def test_liveness_follows_heartbeats(publisher: zmq.Socket, zmq_ctx: zmq.Context) -> None:
    endpoint = publisher.getsockopt_string(zmq.LAST_ENDPOINT)
    with ResultSubscriber(endpoint, misses=2, context=zmq_ctx) as sub:  # no interval announced: 2 x 500 ms
        assert not sub.daemon_alive  # nothing heard yet
        _joined(publisher, sub)
        assert sub.daemon_alive
        wait_until(lambda: not sub.daemon_alive, timeout=3)  # silence: the AI is offline
        publisher.send_multipart(_heartbeat())
        wait_until(lambda: sub.recv(20) is None and sub.daemon_alive)
        publisher.send_multipart(_heartbeat(DaemonState.STOPPING))
        wait_until(lambda: sub.recv(20) is None and not sub.daemon_alive)
        assert sub.status_text == "AI offline (stopped)"


def test_garbage_on_the_result_socket_is_ignored(publisher: zmq.Socket, zmq_ctx: zmq.Context) -> None:
    endpoint = publisher.getsockopt_string(zmq.LAST_ENDPOINT)
    with ResultSubscriber(endpoint, max_age_ms=None, context=zmq_ctx) as sub:
        _joined(publisher, sub)
        publisher.send_multipart([b"not", b"ours"])
        publisher.send_multipart(_result(3, time.time_ns()))
        r = sub.recv(2000)
        assert r is not None and r.seq == 3 and sub.stats.rejected == 1


def test_bad_endpoints_are_reported() -> None:
    with pytest.raises(ValueError, match="cannot connect frame sender"):
        FrameSender("nonsense://x")
    with pytest.raises(ValueError, match="cannot connect result subscriber"):
        ResultSubscriber("nonsense://x")


def test_iterating_yields_fresh_results(publisher: zmq.Socket, zmq_ctx: zmq.Context) -> None:
    endpoint = publisher.getsockopt_string(zmq.LAST_ENDPOINT)
    with ResultSubscriber(endpoint, max_age_ms=1000, context=zmq_ctx) as sub:
        _joined(publisher, sub)
        for seq in (5, 6):
            publisher.send_multipart(_result(seq, time.time_ns()))
        seen = []
        for result in sub:
            seen.append(result.seq)
            if len(seen) == 2:
                break
        assert seen == [5, 6]


def test_close_with_flush_delivers_the_last_frames(zmq_ctx: zmq.Context) -> None:
    with zmq_ctx.socket(zmq.PULL) as pull:
        pull.bind("tcp://127.0.0.1:*")
        sender = FrameSender(pull.getsockopt_string(zmq.LAST_ENDPOINT), high_water_mark=10, context=zmq_ctx)
        frame = np.zeros((480, 640), np.uint8)
        wait_until(lambda: sender.send(frame, seq=0))
        for seq in range(1, 5):
            assert sender.send(frame, seq=seq)
        sender.close(flush_ms=2000)  # closed at once: the queued frames still leave
        got = []
        while pull.poll(1000):
            got.append(pull.recv_multipart())
        assert len(got) == 5
