"""End-to-end pipeline benchmark on loopback: the floor, the edgert daemon, and a naive imagezmq pipeline.

    pip install -e '.[bench]'
    python benchmarks/pipeline/run.py [--frames 300] [--sizes 480x640,1080x1920] [--rates 30,60,max]
                                      [--overload-frames 400] [--out benchmarks/results]
                                      [--daemon-config daemon.toml] [--baseline-root DIR]

Pipelines, all running the same demo model through the same inference pipeline:
- floor: a bare loop calling the pipeline on frames already in memory, paced like the others;
- edgert: FrameSender -> daemon (`edgert serve`, its own process) -> ResultSubscriber;
- edgert-baseline (with --baseline-root): the same with the daemon of another checkout, for before/after;
- edgert-triton (with --triton-python): the same daemon with `backend = "triton"`, the model on a real Triton
  Inference Server on this host (PyTriton's tritonserver, deploy/triton/serve_package.py, the same ONNX run by
  ONNX Runtime on the CPU inside Triton's Python backend): what offloading costs on loopback, not what a GPU
  Triton gains (no GPU here);
- imagezmq-reqrep: frames acquired at the rate into a queue; the sender blocks on each reply (the usual pattern);
- imagezmq-pubsub: the sender publishes every frame; the hub processes whatever its SUB socket has queued.
Frames are RGB, made from pydicom's bundled ultrasound cine. End-to-end latency is capture -> result received.
The first and last 5% of each run are left out of the statistics (start-up and drain). For edgert, the time per stage comes
from the daemon's `stats` (receive .. publish) and the subscriber (publish -> received). CPU use and peak RSS are
those of the process that runs the model (daemon or hub), read from /proc (Linux). The overload case sends at
twice the rate the model sustains (measured by the floor) and records latency over time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from PIL import Image

from calibration.sources import open_source
from converters.bench import machine_info
from edge_runtime.core.package import demo_package_path, load_package
from edge_runtime.core.protocol import Frame, PixelFormat
from edge_runtime.daemon.process import DaemonProcess, wait_for_ready_file
from edge_runtime.daemon.stats import percentiles_ms
from edge_runtime.inference.pipeline import InferencePipeline
from edge_runtime.sdk.control import ControlClient
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from edge_runtime.tools.demo import bundled_cine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PIPELINES = ("floor", "edgert", "imagezmq-reqrep", "imagezmq-pubsub")
DRAIN_S = 2.0


@dataclass
class Run:
    pipeline: str
    size: str
    rate: str
    sent: int = 0
    received: int = 0
    latency_ms: dict[str, float] | None = None
    cpu_percent: float | None = None  # of one core, for the model process
    peak_rss_mb: float | None = None
    series: list[tuple[int, float]] = field(default_factory=list)  # (seq, e2e ms), kept for the overload chart
    # where the time goes, per stage (edgert: the daemon's `stats` plus the subscriber's receive; floor: the
    # pipeline's own stages): {stage: {"p50": ms, "p99": ms}}
    stages_ms: dict[str, dict[str, float]] | None = None
    skipped: str | None = None

    @property
    def dropped(self) -> int:
        return self.sent - self.received


def make_frames(height: int, width: int, count: int = 30) -> list[np.ndarray]:
    frames = []
    for frame in open_source(bundled_cine()):
        frames.append(np.asarray(Image.fromarray(frame.pixels).resize((width, height), Image.Resampling.BILINEAR)))
        if len(frames) == count:
            break
    return frames


def schedule(rate: float | None, n: int) -> Iterator[int]:
    """Frame indices on time (fixed rate, no catch-up bursts). For rate None: as fast as the consumer takes them,
    for as long as `n` frames take at 30 fps, so that every pipeline runs for the same wall time."""
    if rate is None:
        end = time.perf_counter() + n / 30.0
        i = 0
        while time.perf_counter() < end:
            yield i
            i += 1
        return
    next_at = time.perf_counter()
    for i in range(n):
        if rate:
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at + 1.0 / rate, time.perf_counter() - 1.0 / rate)
        yield i


class ProcStat:
    """CPU time and peak RSS of a process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_cpu, self.start_wall = self._cpu(), time.perf_counter()

    def _cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def finish(self) -> tuple[float, float]:
        cpu = (self._cpu() - self.start_cpu) / (time.perf_counter() - self.start_wall) * 100.0
        with open(f"/proc/{self.pid}/status") as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        return round(cpu, 1), round(rss_kb / 1024.0, 1)


def _stats(run: Run, e2e: dict[int, float]) -> Run:
    run.received = len(e2e)
    run.series = sorted(e2e.items())
    trim = max(1, run.sent // 20)
    kept = [ms for seq, ms in run.series if trim <= seq < run.sent - trim]
    run.latency_ms = percentiles_ms(np.asarray(kept) * 1e6) if kept else None
    return run


def _pool(rounds: list[Run]) -> Run:
    """One result from several rounds of the same setting: counts summed, latencies pooled."""
    first = rounds[0]
    if first.skipped:
        return first
    pooled = Run(
        first.pipeline,
        first.size,
        first.rate,
        sent=sum(r.sent for r in rounds),
        received=sum(r.received for r in rounds),
    )
    kept = [ms for r in rounds for seq, ms in r.series if max(1, r.sent // 20) <= seq < r.sent - max(1, r.sent // 20)]
    pooled.latency_ms = percentiles_ms(np.asarray(kept) * 1e6) if kept else None
    cpus = [r.cpu_percent for r in rounds if r.cpu_percent is not None]
    rss = [r.peak_rss_mb for r in rounds if r.peak_rss_mb is not None]
    pooled.cpu_percent = round(float(np.mean(cpus)), 1) if cpus else None
    pooled.peak_rss_mb = max(rss) if rss else None
    pooled.series = first.series
    stages = [r.stages_ms for r in rounds if r.stages_ms]
    if stages:  # the mean over rounds of each round's percentiles
        pooled.stages_ms = {
            name: {q: round(float(np.mean([s[name][q] for s in stages if name in s])), 3) for q in ("p50", "p99")}
            for name in stages[0]
        }
    return pooled


def _stage_summary(values_ns: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, values in values_ns.items():
        if values:
            p = percentiles_ms(values) or {}
            out[name] = {"p50": p["p50"], "p99": p["p99"]}
    return out


def run_floor(frames: list[np.ndarray], rate: float | None, n: int, size: str) -> Run:
    run = Run("floor", size, f"{rate:g}" if rate else "max")
    e2e: dict[int, float] = {}
    stat = ProcStat(os.getpid())
    stages: dict[str, list[int]] = {"preprocess": [], "model": [], "postprocess": []}
    with InferencePipeline(load_package(demo_package_path())) as pipe:
        pipe.warm_up()
        for i in schedule(rate, n):
            capture = time.time_ns()
            pipe.run(Frame(0, i, capture, capture, PixelFormat.RGB8, frames[i % len(frames)]), capture)
            e2e[i] = (time.time_ns() - capture) / 1e6
            run.sent += 1
            if pipe.last_times is not None:
                stages["preprocess"].append(pipe.last_times.preprocess_ns)
                stages["model"].append(pipe.last_times.model_ns)
                stages["postprocess"].append(pipe.last_times.postprocess_ns)
    run.cpu_percent = stat.finish()[0]  # the harness process: RSS would include the harness, so none is given
    run.stages_ms = _stage_summary(stages)
    return _stats(run, e2e)


def _collect(
    stop_sending: threading.Event, recv: Any, done_sending: threading.Event, sent: list[int], timeout_s: float
) -> dict[int, float]:
    """Receive (seq, e2e ms) until sending is done and nothing arrives for DRAIN_S, or the run's time is up."""
    e2e: dict[int, float] = {}
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while time.monotonic() < deadline:
        got = recv()
        now = time.monotonic()
        if got is not None:
            e2e[got[0]] = got[1]
            last = now
        elif done_sending.is_set() and (now - last > DRAIN_S or len(e2e) >= sent[0]):
            break
    stop_sending.set()
    return e2e


@dataclass(frozen=True)
class DaemonSetup:
    """How the edgert daemons of a run are started: a config file for ours, another checkout for the baseline."""

    config: Path | None = None
    baseline_root: Path | None = None
    triton_url: str | None = None  # edgert-triton: the server the daemon's backend talks to


def run_edgert(
    frames: list[np.ndarray],
    rate: float | None,
    n: int,
    size: str,
    tmp: Path,
    setup: DaemonSetup,
    baseline: bool,
    triton: bool = False,
) -> Run:
    name = "edgert-baseline" if baseline else ("edgert-triton" if triton else "edgert")
    run = Run(name, size, f"{rate:g}" if rate else "max")
    extra = ["--config", str(setup.config)] if setup.config and not baseline else []  # the baseline runs as shipped
    if triton:
        assert setup.triton_url is not None
        extra += ["--backend", "triton", "--triton-url", setup.triton_url]
    root = setup.baseline_root if baseline else None
    daemon = DaemonProcess(demo_package_path(), tmp, tmp / "daemon.log", extra, source_root=root)
    try:
        endpoints = daemon.wait_ready()
        stat = ProcStat(daemon.proc.pid)
        done, stop, sent = threading.Event(), threading.Event(), [0]
        with (
            ResultSubscriber(endpoints["results"], max_age_ms=None) as sub,
            FrameSender(endpoints["ingest"]) as sender,
        ):
            deadline = time.monotonic() + 10
            while not sub.daemon_alive and time.monotonic() < deadline:
                sub.recv(100)

            def send() -> None:
                for i in schedule(rate, n):
                    if stop.is_set():
                        break
                    if rate is None:  # as fast as possible: the next frame is captured once the queue takes it
                        while not sender.send(frames[i % len(frames)], seq=i) and not stop.is_set():
                            time.sleep(0.0005)
                    else:
                        sender.send(frames[i % len(frames)], seq=i)  # a frame the queue refuses is dropped
                    sent[0] += 1
                done.set()

            thread = threading.Thread(target=send, daemon=True)
            thread.start()

            # from the result's timestamps: the subscriber's receive (publish -> here), the one stage the daemon
            # cannot see, and a coarse split for a daemon whose stats have no stages (an older baseline)
            coarse: dict[str, list[int]] = {"receive": [], "queue": [], "pipeline": [], "publish": []}
            subscriber: list[int] = []

            def recv() -> tuple[int, float] | None:
                r = sub.recv(50)
                if r is None:
                    return None
                now = time.time_ns()
                subscriber.append(now - r.publish_ts_ns)
                for name, value in zip(coarse, (r.recv_ts_ns - r.capture_ts_ns, r.infer_start_ns - r.recv_ts_ns,
                                                r.infer_end_ns - r.infer_start_ns, r.publish_ts_ns - r.infer_end_ns)):  # fmt: skip
                    coarse[name].append(value)
                return r.seq, (now - r.capture_ts_ns) / 1e6

            e2e = _collect(stop, recv, done, sent, timeout_s=n / (rate or 100) * 3 + 30)
            thread.join(5)
        run.sent = sent[0]
        run.cpu_percent, run.peak_rss_mb = stat.finish()
        daemon_stages = ControlClient(endpoints["control"]).request("stats").get("stages_ms")
        stages = {k: {"p50": v["p50"], "p99": v["p99"]} for k, v in daemon_stages.items()} if daemon_stages else None
        run.stages_ms = {**(stages or _stage_summary(coarse)), **_stage_summary({"subscriber": subscriber})}
    finally:
        daemon.stop()
    return _stats(run, e2e)


def run_imagezmq(mode: str, frames: list[np.ndarray], rate: float | None, n: int, size: str, tmp: Path) -> Run:
    import imagezmq

    run = Run(f"imagezmq-{mode}", size, f"{rate:g}" if rate else "max")
    ready = tmp / f"hub-{mode}.json"
    ready.unlink(missing_ok=True)
    sender = imagezmq.ImageSender(connect_to="tcp://127.0.0.1:*", REQ_REP=False) if mode == "pubsub" else None
    cmd = [sys.executable, str(HERE / "imagezmq_hub.py"), "--mode", mode, "--ready-file", str(ready)]
    if sender is not None:
        cmd += ["--frames-endpoint", sender.zmq_socket.getsockopt_string(zmq.LAST_ENDPOINT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    hub = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoints = wait_for_ready_file(ready, hub)
        if sender is None:
            sender = imagezmq.ImageSender(connect_to=endpoints["frames"], REQ_REP=True)
        stat = ProcStat(hub.pid)
        results = zmq.Context.instance().socket(zmq.SUB)
        results.setsockopt(zmq.LINGER, 0)
        results.setsockopt(zmq.SUBSCRIBE, b"")
        results.connect(endpoints["results"])
        if mode == "pubsub":  # the SUB side joins asynchronously: wait until a probe frame gets through
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                sender.send_image(json.dumps({"seq": -1, "capture_ts": time.time_ns()}), frames[0])
                if results.poll(200):
                    results.recv()
                    break
        done, stop, sent = threading.Event(), threading.Event(), [0]
        acquired: queue.Queue[tuple[int, int]] = queue.Queue()  # the naive, unbounded camera buffer

        def acquire() -> None:
            for i in schedule(rate, n):
                if stop.is_set():
                    break
                if rate is None:  # as fast as possible: the next frame is captured when the sender is free
                    while acquired.qsize() and not stop.is_set():
                        time.sleep(0.0002)
                acquired.put((i, time.time_ns()))
            acquired.put((-1, 0))

        def send() -> None:
            while not stop.is_set():
                i, capture = acquired.get()
                if i < 0:
                    break
                sender.send_image(json.dumps({"seq": i, "capture_ts": capture}), frames[i % len(frames)])
                sent[0] += 1
            done.set()

        threads = [threading.Thread(target=acquire, daemon=True), threading.Thread(target=send, daemon=True)]
        for t in threads:
            t.start()

        def recv() -> tuple[int, float] | None:
            if not results.poll(50):
                return None
            msg = json.loads(results.recv())
            return None if msg["seq"] < 0 else (msg["seq"], (time.time_ns() - msg["capture_ts"]) / 1e6)

        e2e = _collect(stop, recv, done, sent, timeout_s=n / (rate or 100) * 3 + 30)
        run.sent = max(sent[0], max(e2e, default=-1) + 1)
        run.cpu_percent, run.peak_rss_mb = stat.finish()
        results.close()
    finally:
        hub.terminate()
        try:
            hub.wait(10)
        except subprocess.TimeoutExpired:
            hub.kill()
        if sender is not None:
            sender.close()
    return _stats(run, e2e)


def _run(
    pipeline: str, frames: list[np.ndarray], rate: float | None, n: int, size: str, tmp: Path, setup: DaemonSetup
) -> Run:
    if pipeline == "imagezmq-pubsub" and rate is None and frames[0].nbytes > 1_000_000:
        # PUB and SUB each queue up to 1000 frames by default: 2 x 1000 x 6 MB at full HD would exhaust memory.
        return Run(pipeline, size, "max", skipped="unbounded queues would hold up to 2000 full-HD frames (12 GB)")
    if pipeline == "floor":
        return run_floor(frames, rate, n, size)
    if pipeline in ("edgert", "edgert-baseline", "edgert-triton"):
        return run_edgert(frames, rate, n, size, tmp, setup, baseline=pipeline == "edgert-baseline",
                          triton=pipeline == "edgert-triton")  # fmt: skip
    return run_imagezmq(pipeline.split("-")[1], frames, rate, n, size, tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150, help="frames per run")
    parser.add_argument("--sizes", default="480x640,1080x1920")
    parser.add_argument("--rates", default="30,60,max")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per setting, pooled (machine drift)")
    parser.add_argument("--overload-frames", type=int, default=400, help="0 to skip the overload case")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--daemon-config", type=Path, help="a daemon.toml for every edgert daemon (e.g. its [cpu])")
    parser.add_argument("--baseline-root", type=Path, help="another edgert checkout (git worktree add DIR REF): "
                        "adds the pipeline edgert-baseline, its daemon, for before/after in one run")  # fmt: skip
    parser.add_argument("--triton-python", type=Path, help="a Python with nvidia-pytriton and onnxruntime (a venv of "
                        "Debian's python3, as .venv-triton/bin/python): adds the pipeline edgert-triton")  # fmt: skip
    args = parser.parse_args()
    pipelines = [p for p in args.pipelines.split(",") if p]
    if args.triton_python and "edgert-triton" not in pipelines:
        pipelines.insert(pipelines.index("edgert") + 1 if "edgert" in pipelines else 0, "edgert-triton")
    with _triton_server(args.triton_python) as triton_url:
        _main(args, pipelines, triton_url)


@contextlib.contextmanager
def _triton_server(python: Path | None) -> Iterator[str | None]:
    """PyTriton's tritonserver serving the demo package on 127.0.0.1, for the edgert-triton pipeline."""
    if python is None:
        yield None
        return
    import socket

    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cmd = [str(python), str(ROOT / "deploy" / "triton" / "serve_package.py"), str(demo_package_path()),
           "--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", str(ports[2])]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert server.stdout is not None
        for line in server.stdout:  # "ready grpc=..." once the model is ready; the end of output if it failed
            if line.startswith("ready "):
                break
        else:
            raise SystemExit(f"the Triton server did not start ({python}): run it by hand to see why: {' '.join(cmd)}")
        threading.Thread(target=server.stdout.read, daemon=True).start()  # tritonserver logs there: keep it drained
        yield f"127.0.0.1:{ports[0]}"
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _main(args: argparse.Namespace, pipelines: list[str], triton_url: str | None) -> None:
    if args.baseline_root and "edgert-baseline" not in pipelines:
        pipelines.insert(pipelines.index("edgert") + 1 if "edgert" in pipelines else 0, "edgert-baseline")
    setup = DaemonSetup(args.daemon_config.resolve() if args.daemon_config else None,
                        args.baseline_root.resolve() if args.baseline_root else None, triton_url)  # fmt: skip
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for size in args.sizes.split(","):
            h, w = (int(v) for v in size.split("x"))
            frames = make_frames(h, w)
            for rate_text in args.rates.split(","):
                rate = None if rate_text == "max" else float(rate_text)
                rounds: dict[str, list[Run]] = {p: [] for p in pipelines}
                for _ in range(args.rounds):  # floor, edgert, imagezmq..., again: drift hits every pipeline alike
                    for pipeline in pipelines:
                        rounds[pipeline].append(_run(pipeline, frames, rate, args.frames, size, tmp, setup))
                for pipeline in pipelines:
                    run = _pool(rounds[pipeline])
                    runs.append(run)
                    lat = run.latency_ms or {}
                    if run.skipped:
                        print(f"{size:>9} {run.rate:>4} fps {pipeline:<16} skipped: {run.skipped}", flush=True)
                        continue
                    print(f"{size:>9} {run.rate:>4} fps {pipeline:<16} sent {run.sent:4d} got {run.received:4d} "
                          f"p50 {lat.get('p50', float('nan')):8.2f} p99 {lat.get('p99', float('nan')):8.2f} "
                          f"max {lat.get('max', float('nan')):8.2f} ms  cpu {run.cpu_percent}%  rss {run.peak_rss_mb} MB",
                          flush=True)  # fmt: skip
                    if run.stages_ms:
                        print(" " * 36 + "p50 by stage: " + "  ".join(
                            f"{k} {v['p50']:.2f}" for k, v in run.stages_ms.items()), flush=True)  # fmt: skip
        overload: list[Run] = []
        if args.overload_frames:
            floor = next((r for r in runs if r.pipeline == "floor" and r.rate == "max" and r.latency_ms), None)
            model_ms = floor.latency_ms["p50"] if floor and floor.latency_ms else 10.0
            rate = 2.0 * 1000.0 / model_ms
            size = args.sizes.split(",")[0]
            h, w = (int(v) for v in size.split("x"))
            frames = make_frames(h, w)
            for pipeline in [p for p in pipelines if p != "floor"]:
                run = _run(pipeline, frames, rate, args.overload_frames, size, tmp, setup)
                run.rate = f"overload {rate:.0f}"
                overload.append(run)
                lat = run.latency_ms or {}
                print(f"overload {rate:.0f} fps {pipeline:<16} sent {run.sent} got {run.received} p50 "
                      f"{lat.get('p50', float('nan')):.1f} p99 {lat.get('p99', float('nan')):.1f} ms", flush=True)  # fmt: skip
    report = _report(runs, overload, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.json").write_text(json.dumps(report, indent=2) + "\n")
    from charts import latency_chart, overload_chart

    latency_chart(runs, args.out / "pipeline_latency.png")
    if overload:
        overload_chart(overload, args.out / "pipeline_overload.png")
    print(json.dumps(report["targets"], indent=2))


def _report(runs: list[Run], overload: list[Run], args: argparse.Namespace) -> dict[str, Any]:
    def find(pipeline: str, size: str, rate: str) -> Run | None:
        return next((r for r in runs if (r.pipeline, r.size, r.rate) == (pipeline, size, rate) and r.latency_ms), None)

    targets: dict[str, Any] = {}
    for size in args.sizes.split(","):
        for rate in [r for r in args.rates.split(",") if r != "max"]:  # the rates a cart runs at
            daemon, floor = find("edgert", size, rate), find("floor", size, rate)
            if not (daemon and floor and daemon.latency_ms and floor.latency_ms):
                continue
            d50, f50 = daemon.latency_ms["p50"], floor.latency_ms["p50"]
            target: dict[str, Any] = {
                "edgert_p50_ms": d50, "floor_p50_ms": f50, "ratio": round(d50 / f50, 3), "diff_ms": round(d50 - f50, 3),
                "within_5pct_or_0.5ms_of_floor": bool(d50 <= max(1.05 * f50, f50 + 0.5)),
            }  # fmt: skip
            for peer in ("imagezmq-reqrep", "imagezmq-pubsub"):
                other = find(peer, size, rate)
                if other and other.latency_ms:
                    target[f"p50_p99_at_or_below_{peer}"] = bool(
                        d50 <= other.latency_ms["p50"] and daemon.latency_ms["p99"] <= other.latency_ms["p99"]
                    )
            targets[f"{size}_{rate}fps"] = target
    rss = [r.peak_rss_mb for r in runs + overload if r.pipeline == "edgert" and r.peak_rss_mb]
    if rss:
        targets["daemon_peak_rss_mb"] = {"max": max(rss), "met": bool(max(rss) < 250)}
    for run in overload:
        if run.latency_ms:
            targets[f"overload_{run.pipeline}_p99_ms"] = run.latency_ms["p99"]
    mine = targets.get("overload_edgert_p99_ms")
    peers = [v for k, v in targets.items() if k.startswith("overload_imagezmq")]
    if mine is not None and peers:
        targets["overload_advantage_kept"] = bool(mine < min(peers))

    def row(r: Run) -> dict[str, Any]:
        data = asdict(r)
        data["dropped"] = r.dropped
        if not r.rate.startswith("overload"):
            data.pop("series")
        return data

    return {
        "machine": machine_info(),
        "config": {
            "frames": args.frames,
            "rounds": args.rounds,
            "sizes": args.sizes,
            "rates": args.rates,
            "trim": "first and last 5% of each run",
        },  # fmt: skip
        "runs": [row(r) for r in runs],
        "overload": [row(r) for r in overload],
        "targets": targets,
    }


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
