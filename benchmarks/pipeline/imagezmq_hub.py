"""The peer in the pipeline benchmark: a naive imagezmq inference hub, written the way camera projects write one.

It receives every frame (REQ/REP: one at a time and replying after inference; PUB/SUB: from a SUB socket that
queues whatever arrives), runs the same inference pipeline as the edgert daemon, and publishes a small result
per frame for the collector. Everything binds or connects on 127.0.0.1.

    python benchmarks/pipeline/imagezmq_hub.py --mode reqrep|pubsub --ready-file F [--frames-endpoint E]
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

import imagezmq
import zmq

from edge_runtime.core.package import demo_package_path, load_package
from edge_runtime.core.protocol import Frame, PixelFormat
from edge_runtime.inference.pipeline import InferencePipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["reqrep", "pubsub"], required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--frames-endpoint", help="pubsub: the sender's PUB endpoint to connect to")
    args = parser.parse_args()
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    if args.mode == "reqrep":
        hub = imagezmq.ImageHub(open_port="tcp://127.0.0.1:*", REQ_REP=True)
    else:
        hub = imagezmq.ImageHub(open_port=args.frames_endpoint, REQ_REP=False)
    ctx = zmq.Context.instance()
    results = ctx.socket(zmq.PUB)
    results.setsockopt(zmq.LINGER, 0)
    results.bind("tcp://127.0.0.1:*")
    with InferencePipeline(load_package(demo_package_path())) as pipeline:
        pipeline.warm_up()
        endpoints = {"results": results.getsockopt_string(zmq.LAST_ENDPOINT)}
        if args.mode == "reqrep":
            endpoints["frames"] = hub.zmq_socket.getsockopt_string(zmq.LAST_ENDPOINT)
        args.ready_file.write_text(json.dumps(endpoints))
        poller = zmq.Poller()
        poller.register(hub.zmq_socket, zmq.POLLIN)
        while running:
            if not poller.poll(100):
                continue
            msg, image = hub.recv_image()
            recv = time.time_ns()
            meta = json.loads(msg)
            r = pipeline.run(Frame(0, meta["seq"], meta["capture_ts"], recv, PixelFormat.RGB8, image), recv)
            if args.mode == "reqrep":
                hub.send_reply(b"OK")
            results.send_string(json.dumps({"seq": r.seq, "capture_ts": r.capture_ts_ns, "recv_ts": recv,
                                            "infer_start": r.infer_start_ns, "infer_end": r.infer_end_ns}))  # fmt: skip
    hub.close()
    results.close()


if __name__ == "__main__":
    main()
