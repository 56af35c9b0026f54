"""How long an unmodified imagezmq REQ sender blocks in `send_image`, side by side in one run:

- against the daemon's imagezmq ingest (`format = "imagezmq"`, `pattern = "rep"`), which answers on receipt;
- against imagezmq's own `ImageHub` running the same model before it replies, the loop imagezmq's examples use.

    python benchmarks/imagezmq_ingest.py [--frames 300] [--fps 30] [--size 480x640]
                                         [--json benchmarks/results/imagezmq_ingest.json]

Same model (the bundled segmentation demo), one ONNX Runtime thread, BGR frames at a steady rate. The first 20
sends of each side are a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path
from typing import Any

import imagezmq
import numpy as np

from edge_runtime.core.package import demo_package_path, load_package
from edge_runtime.core.protocol import Frame, PixelFormat
from edge_runtime.daemon.config import DaemonConfig, IngestConfig, IngestFormat, IngestPattern
from edge_runtime.daemon.server import Daemon
from edge_runtime.inference.pipeline import InferencePipeline

LOOPBACK = "tcp://127.0.0.1:*"
WARMUP = 20


def blocking_ms(sender: imagezmq.ImageSender, image: np.ndarray, frames: int, fps: float) -> dict[str, Any]:
    times, replies = [], set()
    next_at = time.perf_counter()
    for _ in range(frames + WARMUP):
        next_at += 1 / fps
        t0 = time.perf_counter()
        replies.add(sender.send_image("probe", image))
        times.append((time.perf_counter() - t0) * 1e3)
        time.sleep(max(0.0, next_at - time.perf_counter()))
    a = np.array(times[WARMUP:])
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "replies": sorted(r.decode() for r in replies)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", default="480x640", help="HxW")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/imagezmq_ingest.json"))
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)

    ingest = IngestConfig(endpoint=LOOPBACK, format=IngestFormat.IMAGEZMQ, pattern=IngestPattern.REP)
    daemon = Daemon(DaemonConfig(model=demo_package_path(), threads=1, warmup=2, ingest=ingest,
                                 results_endpoint=LOOPBACK, control_endpoint=LOOPBACK))  # fmt: skip
    daemon.start()
    try:
        sender = imagezmq.ImageSender(connect_to=daemon.endpoints["ingest"])
        edgert = blocking_ms(sender, image, args.frames, args.fps)
        sender.close()
        edgert["frames_inferred"] = daemon.stats.snapshot()["frames_out"]
    finally:
        daemon.stop()

    pipeline = InferencePipeline(load_package(demo_package_path()), threads=1)
    pipeline.runner.activate()
    pipeline.warm_up(2)
    hub = imagezmq.ImageHub(open_port="tcp://127.0.0.1:0")
    endpoint = hub.zmq_socket.getsockopt_string(imagezmq.zmq.LAST_ENDPOINT)
    done = threading.Event()

    def hub_loop() -> None:  # receive, infer, reply: imagezmq's usual hub
        seq = 0
        while not done.is_set():
            if not hub.zmq_socket.poll(100):
                continue
            _, array = hub.recv_image()
            seq += 1
            now = time.time_ns()
            pipeline.run(Frame(0, seq, now, now, PixelFormat.BGR8, array), now)
            hub.send_reply(b"OK")

    thread = threading.Thread(target=hub_loop, daemon=True)
    thread.start()
    sender = imagezmq.ImageSender(connect_to=endpoint)
    hub_side = blocking_ms(sender, image, args.frames, args.fps)
    done.set()
    thread.join(5)
    sender.close()
    pipeline.runner.deactivate()

    report = {
        "what": "ms an imagezmq REQ sender blocks in send_image",
        "size": [height, width], "fps": args.fps, "frames": args.frames,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "edgert_imagezmq_ingest": edgert, "imagezmq_hub_infer_then_reply": hub_side,
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
