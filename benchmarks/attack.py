"""Attack benchmark: a daemon process under hostile input, with a well-behaved 30 fps stream alongside.

    python benchmarks/attack.py [--seconds 10] [--checkout PATH] [--out benchmarks/results/attack.json]

Each scenario starts a fresh `edgert serve` (the bundled model, loopback ports) and sends a 30 fps ultrasound stream
on stream 0 for `--seconds`, while attacker processes do one of:

- alone:   nothing (the reference);
- spray:   4 processes x 2,000 valid 8x8 frames/s, each on a new stream id (issue 10, item 1);
- spray_elsewhere: the same 4 processes sending to another process, not the daemon: what the attackers cost a
           machine they share with the daemon (on a 2-core machine, most of the spray's effect);
- parts:   one message of 1,000,000 empty parts, 2 s in (item 2); parts_elsewhere sends it to another process;
- fuzz:    100,000 messages over the run from 2 processes: 40% valid 64x64 frames on random stream ids, 60%
           malformed (random bytes, cut and bit-flipped headers, wrong part counts) (issue 32, item 5);
- fuzz_declared: the same, against a daemon that declares its one stream (`[streams] ids = [0]`); fuzz_elsewhere
           sends it to another process;
- control: raw TCP garbage, oversize and multi-part requests on the control port, while `ctl health` is asked
           every 250 ms the way the CLI asks it (item 3).

The imagezmq scenarios (issue 32, item 8) run the daemon with `--ingest-format imagezmq --ingest-pattern rep`; the
stream is an unmodified `imagezmq.ImageSender` (`send_image("probe", ...)` at 30 fps), and its reply time (how
long `send_image` blocked) is reported beside its results:

- imz_alone: nothing (the reference);
- imz_jpeg_flood: 2 processes sending 8192x8192 RGB JPEGs (200 MB decoded each) as fast as they are answered;
- imz_jpeg_flood_gray: the same with gray 8192x8192 JPEGs (67 MB decoded: within the stream table's budget, so
           they are decoded);
- imz_names: 1,100 senders' names once each, then, once the names are idle, a newcomer (is it let in?);
- imz_oversize: one 900 MB request (over the message limit): is it answered, within 20 s?

Reported per scenario: the share of the stream's frames that got a result, its end-to-end latency (capture to result
received) p50/p99/max, the daemon's peak RSS (VmRSS from /proc, sampled every 20 ms) and the growth over its RSS
before the attack, failed health checks, and the bytes the daemon logged. `--checkout` runs the daemon from another
source tree (for instance the release before the hardening) with the same clients, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calibration.sources import open_source  # noqa: E402
from converters.bench import machine_info  # noqa: E402
from edge_runtime.core.errors import EdgertError  # noqa: E402
from edge_runtime.core.package import demo_package_path  # noqa: E402
from edge_runtime.core.protocol import encode_frame  # noqa: E402
from edge_runtime.daemon.process import DaemonProcess  # noqa: E402
from edge_runtime.sdk.control import ControlClient  # noqa: E402
from edge_runtime.sdk.sender import FrameSender  # noqa: E402
from edge_runtime.sdk.subscriber import ResultSubscriber  # noqa: E402
from edge_runtime.tools.demo import bundled_cine  # noqa: E402

FPS = 30
SCENARIOS = (
    "alone",
    "spray",
    "spray_elsewhere",
    "parts",
    "parts_elsewhere",
    "control",
    "fuzz",
    "fuzz_declared",
    "fuzz_elsewhere",
    "imz_alone",
    "imz_jpeg_flood",
    "imz_jpeg_flood_gray",
    "imz_names",
    "imz_oversize",
)
IMAGEZMQ_ARGS = ["--ingest-format", "imagezmq", "--ingest-pattern", "rep"]
FUZZ_MESSAGES = 100_000  # the campaign of issue 32: malformed messages and valid frames on many stream ids


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("VmRSS"))) / 1024.0
    except (OSError, StopIteration):
        return 0.0


# -- attackers (each in its own process) -------------------------------------------------------------------------
def spray(endpoint: str, rate: int, seconds: float, first_id: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    tiny = np.zeros((8, 8), np.uint8)
    end, sid, batch = time.monotonic() + seconds, first_id, max(1, rate // 200)
    while time.monotonic() < end:
        tick = time.monotonic()
        for _ in range(batch):
            parts = encode_frame(tiny, stream_id=sid, seq=0, capture_ts_ns=time.time_ns(), send_ts_ns=0)
            try:
                sock.send_multipart(parts, zmq.NOBLOCK)
            except zmq.Again:
                pass
            sid += 1
        time.sleep(max(0.0, 0.005 - (time.monotonic() - tick)))
    ctx.destroy(linger=0)


def fuzz(endpoint: str, messages: int, seconds: float, seed: int) -> None:
    """`messages` messages spread over `seconds`: about 40% valid 64x64 frames, each on a random stream id other than
    the real stream's 0, and 60% malformed ones (random bytes, cut or bit-flipped headers, wrong part counts)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    rng = random.Random(seed)
    image = np.random.default_rng(seed).integers(0, 255, (64, 64), np.uint8)
    start, batch = time.monotonic(), 50
    for sent in range(0, messages, batch):
        for _ in range(batch):
            header, pixels = encode_frame(image, stream_id=rng.randint(1, 2**32 - 1), seq=rng.randint(0, 2**40),
                                          capture_ts_ns=time.time_ns(), send_ts_ns=0)[:2]  # fmt: skip
            header = bytes(header)
            roll = rng.random()
            if roll < 0.4:
                parts = [header, bytes(pixels)]
            elif roll < 0.55:
                parts = [rng.randbytes(rng.randint(0, 200))]
            elif roll < 0.7:
                parts = [header[: rng.randint(0, len(header) - 1)], bytes(pixels)]
            elif roll < 0.85:
                flipped = bytearray(header)
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
                parts = [bytes(flipped), bytes(pixels)]
            else:
                parts = [header] + [b"x" * rng.randint(0, 64) for _ in range(rng.choice((0, 3, 4, 9)))]
            try:
                sock.send_multipart(parts, zmq.NOBLOCK)
            except zmq.Again:
                pass
        ahead = start + seconds * (sent + batch) / messages - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    ctx.destroy(linger=0)


def sink(endpoint: str, seconds: float) -> None:
    """Drains frames sent to it: where `spray_elsewhere` sends, to measure what the attackers cost the machine."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(endpoint)
    end = time.monotonic() + seconds + 1
    while time.monotonic() < end:
        if sock.poll(100):
            sock.recv_multipart()
    ctx.destroy(linger=0)


def many_parts(endpoint: str, parts: int, delay: float) -> None:
    time.sleep(delay)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(endpoint)
    sock.send_multipart([b""] * parts)
    time.sleep(30)  # keep the connection; the parent terminates us


def control_garbage(endpoint: str, seconds: float, kind: str) -> None:
    ctx = zmq.Context()
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    end = time.monotonic() + seconds
    rng = random.Random(kind)
    while time.monotonic() < end:
        if kind == "raw":
            try:
                with socket.create_connection((host, int(port)), timeout=1) as raw:
                    raw.sendall(bytes(range(256)) * 4 if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 300)))
            except OSError:
                pass
        else:
            sock = ctx.socket(zmq.REQ if kind in ("oversize", "newline") else zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            if kind == "oversize":
                sock.send(b"x" * 100_000)  # over the control socket's message limit
            elif kind == "newline":
                sock.send(b'{"cmd": "reload", "package": "/x\\nFAKE LOG LINE"}' + b" " * 5000)
            else:  # a DEALER sending parts a REP/ROUTER does not expect, for a while on one connection
                for _ in range(200):
                    sock.send_multipart([b"\xff" * 10, b"stats", b"more"])
                    time.sleep(0.001)
            time.sleep(0.002)
            sock.close()
        time.sleep(0.001)
    ctx.destroy(linger=0)


# -- imagezmq attackers ----------------------------------------------------------------------------------------
def jpeg_flood(endpoint: str, seconds: float, name: str, mode: str) -> None:
    """Send one 8192x8192 JPEG (a gradient with noise: a few MB compressed) again and again, as fast as answered."""
    import io

    import imagezmq
    from PIL import Image

    ramp = np.add.outer(np.arange(8192) // 32, np.arange(8192) // 32).astype(np.uint8)
    ramp ^= np.random.default_rng(0).integers(0, 16, ramp.shape, dtype=np.uint8)
    image = Image.fromarray(ramp) if mode == "L" else Image.fromarray(np.dstack([ramp, ramp[::-1], ramp.T]))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    data = buffer.getvalue()
    sender = imagezmq.ImageSender(connect_to=endpoint)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sender.send_jpg(name, data)


def many_names(endpoint: str, names: int) -> None:
    import imagezmq

    sender = imagezmq.ImageSender(connect_to=endpoint)
    image = np.zeros((16, 16), np.uint8)
    for i in range(names):
        sender.send_image(f"sender {i} at {time.time_ns()}", image)


def oversize(endpoint: str, nbytes: int, report: Any) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.RCVTIMEO, 20_000)
    req.connect(endpoint)
    meta = json.dumps({"msg": "big", "dtype": "uint8", "shape": [8192, 8192, 3]}).encode()
    payload = bytes(nbytes)
    t0 = time.monotonic()
    req.send_multipart([meta, payload])
    del payload
    try:
        report.put({"reply": req.recv().decode(), "after_s": round(time.monotonic() - t0, 2)})
    except zmq.Again:
        report.put({"reply": None, "after_s": 20.0})
    req.close(linger=0)
    ctx.destroy(linger=0)


# -- one scenario -------------------------------------------------------------------------------------------------
def run_scenario(name: str, seconds: float, checkout: Path, workdir: Path, threads: int) -> dict[str, Any]:
    log_path = workdir / f"{name}.log"
    extra = ["--threads", str(threads)]
    if name == "fuzz_declared":  # the integrator declares its one stream: every other id is refused at once
        config = workdir / "declared.toml"
        config.write_text(f'[model]\npackage = "{demo_package_path()}"\n[streams]\nids = [0]\n')
        extra += ["--config", str(config)]
    if name.startswith("imz_"):
        extra += IMAGEZMQ_ARGS
    daemon = DaemonProcess(demo_package_path(), workdir, log_path, extra, source_root=checkout)
    try:
        endpoints = daemon.wait_ready()
        if name.startswith("imz_"):
            return _measure_imagezmq(name, seconds, endpoints, daemon.pid, log_path)
        return _measure(name, seconds, endpoints, daemon.pid, log_path)
    finally:
        daemon.stop()


class _Watch:
    """The daemon's RSS (peak, sampled every 20 ms), CPU seconds and log bytes from now until `stop`."""

    def __init__(self, pid: int, log_path: Path) -> None:
        self.pid, self.log_path = pid, log_path
        self.rss_before, self.log_before, self.cpu_before = rss_mb(pid), log_path.stat().st_size, cpu_s(pid)
        self.rss_peak = [self.rss_before]
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.rss_peak.append(rss_mb(self.pid))

    def stop(self) -> float:
        """Stop sampling; the daemon's CPU seconds since the start."""
        self._stop.set()
        return cpu_s(self.pid) - self.cpu_before

    def rss_report(self) -> dict[str, float]:
        peak = max(self.rss_peak)
        return {"before": round(self.rss_before, 1), "peak": round(peak, 1), "growth": round(peak - self.rss_before, 1)}

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size - self.log_before


def _spread(values: list[float]) -> dict[str, float]:
    """p50, p99 and max, rounded to 0.1 (NaN when there are none)."""
    a = np.array(values) if values else np.array([np.nan])
    return {"p50": round(float(np.percentile(a, 50)), 1), "p99": round(float(np.percentile(a, 99)), 1),
            "max": round(float(a.max()), 1)}  # fmt: skip


def _measure(name: str, seconds: float, endpoints: dict[str, str], pid: int, log_path: Path) -> dict[str, Any]:
    images = [f.pixels for f in open_source(bundled_cine())]
    ctx = zmq.Context()
    sub = ResultSubscriber(endpoints["results"], max_age_ms=None, context=ctx)
    sender = FrameSender(endpoints["ingest"], stream_id=0, context=ctx)
    while not sender.send(images[0], seq=0) or sub.recv(200) is None:  # connected and serving
        pass
    while sub.recv(300) is not None:
        pass
    mp = multiprocessing.get_context("spawn")
    attackers: list[Any] = []
    if name == "spray":
        attackers = [mp.Process(target=spray, args=(endpoints["ingest"], 2000, seconds, 1000 + k * 10_000_000))
                     for k in range(4)]  # fmt: skip
    elif name.endswith("_elsewhere"):  # the same load on the same machine, sent to another process
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            elsewhere = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
        attackers = [mp.Process(target=sink, args=(elsewhere, seconds))]
        if name == "spray_elsewhere":
            attackers += [mp.Process(target=spray, args=(elsewhere, 2000, seconds, 1000 + k * 10_000_000))
                          for k in range(4)]  # fmt: skip
        elif name == "fuzz_elsewhere":
            attackers += [mp.Process(target=fuzz, args=(elsewhere, FUZZ_MESSAGES // 2, seconds, k))
                          for k in range(2)]  # fmt: skip
        else:
            attackers += [mp.Process(target=many_parts, args=(elsewhere, 1_000_000, 2.0))]
    elif name.startswith("fuzz"):  # two processes share the campaign
        attackers = [mp.Process(target=fuzz, args=(endpoints["ingest"], FUZZ_MESSAGES // 2, seconds, k))
                     for k in range(2)]  # fmt: skip
    elif name == "parts":
        attackers = [mp.Process(target=many_parts, args=(endpoints["ingest"], 1_000_000, 2.0))]
    elif name == "control":
        attackers = [mp.Process(target=control_garbage, args=(endpoints["control"], seconds, kind))
                     for kind in ("raw", "oversize", "newline", "dealer")]  # fmt: skip
    watch = _Watch(pid, log_path)
    for a in attackers:
        a.start()
    health = {"asked": 0, "failed": 0}
    health_thread = threading.Thread(target=_ask_health, args=(endpoints["control"], seconds, health), daemon=True)
    health_thread.start()

    latencies: dict[int, float] = {}
    sent = 0
    start = time.monotonic()
    next_frame = start
    while time.monotonic() < start + seconds:
        now = time.monotonic()
        if now >= next_frame:
            sent += 1
            sender.send(images[sent % len(images)], seq=sent)
            next_frame += 1 / FPS
        r = sub.recv(max(1, int((next_frame - time.monotonic()) * 1000)))
        if r is not None and r.stream_id == 0 and r.seq > 0:
            latencies[r.seq] = (time.time_ns() - r.capture_ts_ns) / 1e6
    end = time.monotonic() + 2
    while time.monotonic() < end:
        r = sub.recv(100)
        if r is not None and r.stream_id == 0 and r.seq > 0:
            latencies[r.seq] = (time.time_ns() - r.capture_ts_ns) / 1e6
    health_thread.join()
    daemon_cpu = watch.stop()
    attackers_cpu = sum(cpu_s(a.pid) for a in attackers if a.pid is not None)
    for a in attackers:
        a.terminate()
        a.join()
    sender.close()
    sub.close()
    ctx.destroy(linger=0)
    return {
        "frames_sent": sent,
        "results": len(latencies),
        "results_share": round(len(latencies) / max(sent, 1), 3),
        "latency_ms": _spread(list(latencies.values())),
        "rss_mb": watch.rss_report(),
        "health": health,
        "cpu_s": {"daemon": round(daemon_cpu, 2), "attackers": round(attackers_cpu, 2), "cores": os.cpu_count()},
        "log_bytes": watch.log_bytes(),
    }


def _measure_imagezmq(name: str, seconds: float, endpoints: dict[str, str], pid: int, log_path: Path) -> dict[str, Any]:
    import imagezmq

    images = [f.pixels for f in open_source(bundled_cine())]
    ctx = zmq.Context()
    sub = ResultSubscriber(endpoints["results"], max_age_ms=None, context=ctx)
    sender = imagezmq.ImageSender(connect_to=endpoints["ingest"])
    while sender.send_image("probe", images[0]) != b"OK" or sub.recv(200) is None:  # "probe" is stream 0
        pass
    while sub.recv(300) is not None:
        pass
    mp = multiprocessing.get_context("spawn")
    report = mp.Queue()
    attackers: list[Any] = []
    if name.startswith("imz_jpeg_flood"):
        mode = "L" if name.endswith("gray") else "RGB"
        attackers = [mp.Process(target=jpeg_flood, args=(endpoints["ingest"], seconds, f"flood {k}", mode))
                     for k in range(2)]  # fmt: skip
    elif name == "imz_names":
        attackers = [mp.Process(target=many_names, args=(endpoints["ingest"], 1100))]
    elif name == "imz_oversize":
        attackers = [mp.Process(target=oversize, args=(endpoints["ingest"], 900_000_000, report))]
    watch = _Watch(pid, log_path)
    for a in attackers:
        a.start()
    replies_ms: list[float] = []
    results = 0
    sent = 0
    start = time.monotonic()
    next_frame = start
    while time.monotonic() < start + seconds:
        if time.monotonic() >= next_frame:
            sent += 1
            t0 = time.perf_counter()
            sender.send_image("probe", images[sent % len(images)])
            replies_ms.append((time.perf_counter() - t0) * 1e3)
            next_frame += 1 / FPS
        while (r := sub.recv(0)) is not None:
            results += r.stream_id == 0
        time.sleep(max(0.0, min(0.005, next_frame - time.monotonic())))
    end = time.monotonic() + 1
    while time.monotonic() < end:
        r = sub.recv(100)
        results += r is not None and r.stream_id == 0
    extra: dict[str, Any] = {}
    if name == "imz_names":  # once the attackers' names are idle (idle_ms, 5 s), is a new sender let in?
        for a in attackers:
            a.join(60)
        time.sleep(6.0)
        newcomer = imagezmq.ImageSender(connect_to=endpoints["ingest"])
        extra["newcomer_reply"] = newcomer.send_image("newcomer", images[0]).decode()
        newcomer.close()
    if name == "imz_oversize":
        try:
            extra["oversize"] = report.get(timeout=30)
        except Exception:
            extra["oversize"] = {"reply": None, "after_s": None}
    daemon_cpu = watch.stop()
    for a in attackers:
        a.terminate()
        a.join()
    sender.close()
    sub.close()
    ctx.destroy(linger=0)
    return {
        "frames_sent": sent,
        "results": results,
        "results_share": round(results / max(sent, 1), 3),
        "reply_ms": _spread(replies_ms),
        "rss_mb": watch.rss_report(),
        "cpu_s": {"daemon": round(daemon_cpu, 2), "cores": os.cpu_count()},
        "log_bytes": watch.log_bytes(),
        **extra,
    }


def _ask_health(endpoint: str, seconds: float, tally: dict[str, int]) -> None:
    """What `edgert ctl health` does, every 250 ms: a fresh REQ, 'status', 2 s to answer, state must be ready."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    client = ControlClient(endpoint, timeout_s=2.0, context=ctx)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            ok, _ = client.healthy()
        except EdgertError:  # a reply that is not JSON counts as a failed check
            ok = False
        tally["asked"] += 1
        tally["failed"] += int(not ok)
        time.sleep(0.25)
    ctx.destroy(linger=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="source tree the daemon runs from")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attack.json"))
    parser.add_argument("--threads", type=int, default=1,
                        help="the daemon's inference threads; 1 leaves the attackers and this script a core of their "
                             "own on a small machine, as attackers on other hosts would be")  # fmt: skip
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine_info(), "checkout": str(args.checkout.resolve()),
                              "seconds": args.seconds, "daemon_threads": args.threads, "scenarios": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenarios:
            result = run_scenario(name, args.seconds, args.checkout.resolve(), Path(tmp), args.threads)
            report["scenarios"][name] = result
            if name.startswith("imz_"):
                rep, rss = result["reply_ms"], result["rss_mb"]
                told = {k: result[k] for k in ("newcomer_reply", "oversize") if k in result}
                print(f"{name:8s} results {result['results']}/{result['frames_sent']} ({result['results_share']:.0%})  "
                      f"reply p50 {rep['p50']} p99 {rep['p99']} max {rep['max']} ms  "
                      f"RSS {rss['before']} -> peak {rss['peak']} MB  log {result['log_bytes']} B  {told or ''}",
                      flush=True)  # fmt: skip
                continue
            lat, rss = result["latency_ms"], result["rss_mb"]
            print(f"{name:8s} results {result['results']}/{result['frames_sent']} ({result['results_share']:.0%})  "
                  f"latency p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms  "
                  f"RSS {rss['before']} -> peak {rss['peak']} MB  "
                  f"health failed {result['health']['failed']}/{result['health']['asked']}  "
                  f"log {result['log_bytes']} B  CPU s daemon {result['cpu_s']['daemon']} "
                  f"attackers {result['cpu_s']['attackers']}", flush=True)  # fmt: skip
    alone = report["scenarios"].get("alone")
    if alone:
        for key, result in report["scenarios"].items():
            if not key.startswith("imz_"):
                result["p99_vs_alone"] = round(result["latency_ms"]["p99"] / alone["latency_ms"]["p99"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
