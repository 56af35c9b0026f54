"""Soak: stream many frames through a daemon process and check that it neither grows nor errs.

    python benchmarks/soak.py [--frames 20000] [--warmup-frames 500] [--out benchmarks/results/soak.json]

Frames from the bundled ultrasound cine go to `edgert serve` in lock-step with their results (two in flight), so
every frame is inferred. Resident memory (VmRSS, /proc) is read after the warm-up frames and at the end; the run
passes if it grew by less than 5% and the daemon counted no inference error, rejection or deadline miss.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from calibration.sources import open_source
from converters.bench import machine_info
from edge_runtime.core.package import demo_package_path
from edge_runtime.daemon.process import DaemonProcess
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from edge_runtime.tools.demo import bundled_cine

IN_FLIGHT = 2  # frames sent ahead of their results


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS"))) / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--warmup-frames", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    args = parser.parse_args()
    frames = [f.pixels for f in open_source(bundled_cine())]
    with tempfile.TemporaryDirectory() as tmp:
        daemon = DaemonProcess(demo_package_path(), Path(tmp), Path(tmp) / "daemon.log")
        try:
            endpoints = daemon.wait_ready()
            received = 0
            with (
                ResultSubscriber(endpoints["results"], max_age_ms=None) as sub,
                FrameSender(endpoints["ingest"]) as sender,
            ):
                while not sub.daemon_alive:
                    sub.recv(100)
                start_rss = end_rss = 0.0
                started = time.perf_counter()
                for i in range(args.warmup_frames + args.frames):
                    if i == args.warmup_frames:
                        start_rss = rss_mb(daemon.proc.pid)
                        started = time.perf_counter()
                    while not sender.send(frames[i % len(frames)], seq=i):
                        time.sleep(0.0005)
                    deadline = time.monotonic() + 10
                    while received < i - IN_FLIGHT:  # every frame is inferred: the soak exercises the whole path
                        if sub.recv(100) is not None:
                            received += 1
                        elif time.monotonic() > deadline:
                            raise SystemExit(f"no result for 10 s at frame {i}: the daemon stalled")
                    if i % 2000 == 0:
                        print(f"{i:6d} frames, daemon RSS {rss_mb(daemon.proc.pid):.1f} MB", flush=True)
                while sub.recv(1000) is not None:
                    received += 1
                elapsed = time.perf_counter() - started
                end_rss = rss_mb(daemon.proc.pid)
            stats = daemon.control("stats")
        finally:
            code = daemon.stop()
    growth = (end_rss - start_rss) / start_rss
    unexpected = stats["inference_errors"] + stats["frames_rejected"] + stats["deadline_misses"]
    report = {
        "frames": args.frames,
        "seconds": round(elapsed, 1),
        "results_received": received,
        "rss_mb": {"after_warmup": round(start_rss, 1), "end": round(end_rss, 1), "growth": round(growth, 4)},
        "daemon": {
            k: stats[k]
            for k in (
                "frames_in",
                "frames_out",
                "frames_dropped",
                "frames_rejected",
                "inference_errors",
                "deadline_misses",
            )
        },
        "exit_status": code,
        "passed": bool(growth < 0.05 and unexpected == 0 and code == 0),
        "machine": machine_info(),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
