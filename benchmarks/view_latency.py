"""Display latency of `edgert view`: capture to paint in a real headless Chromium.

    python benchmarks/view_latency.py [--size 480x640] [--fps 30] [--seconds 60] [--model PKG]
                                      [--json benchmarks/results/view_latency.json] [--screenshot PATH]

Everything runs on this machine, as on a cart: a daemon process (`edgert serve --preview`) serving the model, a
scanner thread sending synthetic ultrasound frames at a steady rate, `edgert view` as its own process, and the page
in the system's Chromium (headless, software rendering). The page acknowledges each frame after it has painted it
(the animation frame after the one that drew it); `edgert view` turns that into capture-to-paint latency with its
clock-offset estimate and serves the figures on /stats. Reported: capture to paint (the figure the surgeon sees),
capture to the view's pairing of result and preview (the daemon's share, JPEG preview included), frames painted per
second, and what was skipped where (newest wins on every hop).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration.sources import open_source  # noqa: E402
from converters.bench import machine_info  # noqa: E402
from edge_runtime.core.package import demo_package_path  # noqa: E402
from edge_runtime.daemon.process import DaemonProcess  # noqa: E402
from edge_runtime.integrations.view.headless import launch_chromium  # noqa: E402
from edge_runtime.sdk.sender import FrameSender  # noqa: E402


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def _scanner(endpoint: str, frames: list[Any], fps: float, stop: threading.Event, sent: list[int]) -> None:
    """Frames at a steady rate on a fixed schedule (no drift), as a scanner's clock would send them."""
    with FrameSender(endpoint) as sender:
        start = time.perf_counter()
        i = 0
        while not stop.is_set():
            delay = start + i / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sender.send(frames[i % len(frames)])
            i += 1
        sent.append(sender.stats.sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=demo_package_path())
    parser.add_argument("--size", default="480x640", help="frame HxW (default 480x640)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time after the page is live")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "view_latency.json")
    parser.add_argument("--seed", type=int, default=11, help="of the synthetic cine")
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot of the page at the end")
    args = parser.parse_args()

    frames = [f.pixels for f in open_source(f"synthetic:frames=60,size={args.size},seed={args.seed}")]
    view_port = _free_port()
    stop = threading.Event()
    sent: list[int] = []
    with tempfile.TemporaryDirectory(prefix="edgert-view-bench-") as tmp:
        daemon = DaemonProcess(args.model, Path(tmp), Path(tmp) / "daemon.log", ["--preview", "tcp://127.0.0.1:*"])
        view: subprocess.Popen[bytes] | None = None
        try:
            endpoints = daemon.wait_ready()
            view = subprocess.Popen(
                [sys.executable, "-m", "edge_runtime.cli", "view", "--results", endpoints["results"],
                 "--port", str(view_port)],
                cwd=ROOT, stdout=open(Path(tmp) / "view.log", "wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            url = f"http://127.0.0.1:{view_port}/"
            deadline = time.monotonic() + 30
            while True:
                try:
                    _get_json(url + "stats")
                    break
                except OSError:
                    if time.monotonic() > deadline or view.poll() is not None:
                        raise SystemExit("edgert view did not start: " + (Path(tmp) / "view.log").read_text()) from None
                    time.sleep(0.1)
            scanner = threading.Thread(target=_scanner, args=(endpoints["ingest"], frames, args.fps, stop, sent))
            scanner.start()
            from playwright.sync_api import sync_playwright

            with sync_playwright() as pw:
                browser = launch_chromium(pw)
                page = browser.new_page(viewport={"width": 1000, "height": 640}, bypass_csp=True)
                page.goto(url)
                page.wait_for_function("Number(document.body.dataset.painted) > 10", timeout=30_000)
                painted_at_start = int(page.evaluate("document.body.dataset.painted"))
                print(f"page live; measuring {args.seconds:g} s at {args.size}, {args.fps:g} fps ...")
                started = time.monotonic()
                time.sleep(args.seconds)
                elapsed = time.monotonic() - started
                painted = int(page.evaluate("document.body.dataset.painted")) - painted_at_start
                if args.screenshot:
                    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(args.screenshot))
                stats = _get_json(url + "stats")
                browser.close()
            stop.set()
            scanner.join(10)
            daemon_stats = daemon.control("stats")
        finally:
            stop.set()
            if view is not None:
                view.terminate()
                view.wait(10)
            daemon.stop()
    report = {
        "benchmark": "view_latency",
        "size": args.size,
        "fps": args.fps,
        "seconds": round(elapsed, 1),
        "model": str(args.model.name),
        "machine": machine_info(),
        "display_latency_ms": stats["display_latency_ms"],
        "to_view_latency_ms": stats["to_view_latency_ms"],
        "painted_fps": round(painted / elapsed, 2),
        "frames": {
            "sent": sent[0] if sent else None,
            "inferred": daemon_stats.get("frames_out"),
            "dropped_daemon": daemon_stats.get("frames_dropped"),
            "previews_published": daemon_stats.get("previews_published"),
            "previews_skipped": daemon_stats.get("previews_skipped"),
            "paired_at_view": stats["feed"]["paired"],
            "stale_at_view": stats["feed"]["stale"],
            "sent_to_browser": stats["view"]["sent"],
            "skipped_for_browser": stats["view"]["skipped"],
            "painted": stats["view"]["painted"],
            "superseded_in_page": stats["view"]["superseded"],
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    d, v = report["display_latency_ms"], report["to_view_latency_ms"]
    print(f"\n{args.size} at {args.fps:g} fps for {elapsed:.0f} s, painted {report['painted_fps']} fps")
    print(f"{'latency (ms)':<28} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
    for name, row in (("capture -> paired at view", v), ("capture -> painted (page)", d)):
        if row:
            print(f"{name:<28} {row['p50']:7.1f} {row['p95']:7.1f} {row['p99']:7.1f} {row['max']:7.1f}")
    print("frames: " + ", ".join(f"{k} {v}" for k, v in report["frames"].items()))
    print(f"wrote {args.json}" + (f" and {args.screenshot}" if args.screenshot else ""))


if __name__ == "__main__":
    main()
