"""`edgert demo`: the whole product on one machine.

A daemon process serves the model on loopback, a replay thread plays a cine into it as a scanner would, and the
main thread subscribes to results as a cart display would, draws the overlays and measures latency. One demo per
task: ultrasound segmentation (the default, on pydicom's bundled cine), polyp detection and endoscopy frame
quality with saliency (both on synthetic colonoscopy video).
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from calibration.dicom import DicomError
from calibration.preprocessing import Color, DicomOutput
from calibration.sources import SourceError, SourceFrame, open_source
from edge_runtime.core.card import ModelCard
from edge_runtime.core.detection import box_iou
from edge_runtime.core.errors import ControlError, DaemonUnavailable, EdgertError
from edge_runtime.core.package import PackageError, demo_package_path, load_package
from edge_runtime.core.protocol import Result, ResultStatus, Task, pixel_format_for
from edge_runtime.daemon.process import DaemonProcess
from edge_runtime.daemon.server import DaemonError
from edge_runtime.daemon.stats import percentiles_ms
from edge_runtime.sdk.overlay import draw_overlay, to_display_rgb
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.sdk.subscriber import ResultSubscriber
from edge_runtime.tools.replay import ReplayStats, replay

if TYPE_CHECKING:
    from edge_runtime.integrations.view import ViewServer

DEMO_CINE = "examples_ybr_color.dcm"  # pydicom's bundled 30-frame ultrasound cine (YBR_FULL_422, JPEG baseline)
GIF_MAX_FRAMES = 150
DRAIN_TIMEOUT_S = 2.0  # after the last frame is sent: how long to wait for results once the daemon holds none
CONTROL_TIMEOUT_S = 10.0  # the daemon's own stats: generous, for a board (or an emulator) far slower than this one
BUSY_DRAIN_S = 120.0  # the longest to wait while the daemon still holds a frame (a slow board, an emulator)


class DemoError(EdgertError, RuntimeError):
    pass


DEMO_SOURCES = {  # what each bundled demo model plays by default
    # seed 27: polyps in the first five 100-frame scenes (the 300 frames a default run plays among them), none in the
    # sixth, where the detector should stay quiet; the generator's own boxes are the truth the summary counts against
    Task.DETECTION: "synthetic-endoscopy:frames=600,size=480x640,clip=100,seed=27",
    Task.CLASSIFICATION: "synthetic-endoscopy:frames=600,size=480x640,clip=45,seed=7,quality=mixed",
}


@dataclass(frozen=True)
class DemoOptions:
    frames: int = 300
    source: str | None = None  # a frame source (calibration.sources); default: the task's demo source
    model: Path | None = None  # a model package; default: the bundled demo model of `task`
    task: Task = Task.SEGMENTATION  # which bundled demo: segmentation, detection or classification
    fps: float | None = None  # default: the recording's rate
    dicom: DicomOutput | None = None  # default: the card's preprocessing.dicom
    out: Path = Path("edgert-demo")
    view_port: int | None = None  # also serve `edgert view` on 127.0.0.1:PORT while the demo runs
    linger_s: float | None = None  # with view_port: keep the view up this long after the run; None: until Ctrl+C
    max_age_ms: float = 500.0  # a result older than this (capture to arrival) is stale: discarded, never drawn

    def __post_init__(self) -> None:
        if self.frames <= 0:
            raise DemoError("--frames must be positive")
        if not (math.isfinite(self.max_age_ms) and 1 <= self.max_age_ms <= 600_000):
            raise DemoError(f"--max-age-ms must be 1 to 600000, not {self.max_age_ms}")
        if self.linger_s is not None and not (math.isfinite(self.linger_s) and 0 <= self.linger_s <= 86400):
            raise DemoError(f"--linger must be 0 to 86400 seconds, not {self.linger_s}")


@dataclass(frozen=True)
class DemoResult:
    ok: bool
    summary: dict[str, Any]  # what summary.json holds
    error: str | None = None


def bundled_cine() -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(DEMO_CINE)
    if not path:
        raise DemoError(f"pydicom's test file {DEMO_CINE} is missing from this installation")
    return str(path)


@dataclass
class Recorder:
    """Latencies per result, and the sent frames needed to draw overlays (bounded)."""

    e2e_ns: list[int] = field(default_factory=list)
    inference_ns: list[int] = field(default_factory=list)
    queue_ns: list[int] = field(default_factory=list)
    transport_ns: list[int] = field(default_factory=list)
    errors: int = 0
    out_of_order: int = 0
    last_seq: int = -1
    frames: OrderedDict[int, SourceFrame] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, seq: int, frame: SourceFrame) -> None:
        with self.lock:
            self.frames[seq] = frame
            while len(self.frames) > 64:
                self.frames.popitem(last=False)

    def frame(self, seq: int) -> SourceFrame | None:
        with self.lock:
            return self.frames.get(seq)

    def add(self, r: Result, received_ns: int) -> None:
        self.e2e_ns.append(received_ns - r.capture_ts_ns)
        self.inference_ns.append(r.infer_end_ns - r.infer_start_ns)
        self.queue_ns.append(r.infer_start_ns - r.recv_ts_ns)
        self.transport_ns.append(r.recv_ts_ns - r.capture_ts_ns)
        self.errors += r.status is not ResultStatus.OK
        self.out_of_order += r.seq <= self.last_seq
        self.last_seq = max(self.last_seq, r.seq)


MATCH_IOU = 0.5  # a drawn box counts as finding a true polyp at this overlap


@dataclass
class Shown:
    """What the overlays showed, per task, and what the generator put in the frames where it says (synthetic
    sources): the demo's proof that it demonstrates its feature, in its summary and its last lines."""

    results: int = 0
    frames_with_boxes: int = 0
    boxes: int = 0
    labels: dict[str, int] = field(default_factory=dict)  # segmentation: results showing the class; else top-1
    truth_frames: int = 0  # results whose frame had a truth to compare with
    truth_positive_frames: int = 0  # detection: frames with a visible polyp
    truth_boxes: int = 0
    found: int = 0  # detection: true boxes matched by a drawn one; classification: top-1 equal to the truth

    def add(self, r: Result, frame: SourceFrame | None) -> None:
        if r.status is not ResultStatus.OK:
            return
        self.results += 1
        if r.task is Task.DETECTION:
            self.boxes += len(r.boxes)
            self.frames_with_boxes += bool(r.boxes)
        elif r.task is Task.SEGMENTATION:
            for name, area in r.areas_px.items():
                if area > 0 and name != r.labels[0]:
                    self.labels[name] = self.labels.get(name, 0) + 1
        elif r.classes:
            top = r.label(r.classes[0].class_id)
            self.labels[top] = self.labels.get(top, 0) + 1
        truth = frame.truth if frame is not None else None
        if truth is None:
            return
        if r.task is Task.DETECTION and truth.boxes is not None:
            self.truth_frames += 1
            self.truth_positive_frames += len(truth.boxes) > 0
            self.truth_boxes += len(truth.boxes)
            if len(truth.boxes) and r.boxes:
                drawn = np.array([[b.x1, b.y1, b.x2, b.y2] for b in r.boxes], np.float32)
                self.found += int((box_iou(truth.boxes, drawn).max(axis=1) >= MATCH_IOU).sum())
        elif r.task is Task.CLASSIFICATION and truth.label is not None and r.classes:
            self.truth_frames += 1
            self.found += r.label(r.classes[0].class_id) == truth.label

    def lines(self, task: Task) -> list[str]:
        if task is Task.DETECTION:
            said = [f"shown   boxes on {self.frames_with_boxes} of {self.results} frames ({self.boxes} boxes drawn)"]
            if self.truth_frames:
                said.append(
                    f"truth   polyps in {self.truth_positive_frames} of {self.truth_frames} frames "
                    f"({self.truth_boxes} boxes, the generator's own); {self.found} found at IoU >= {MATCH_IOU:g}"
                )
            return said
        ranked = sorted(self.labels.items(), key=lambda kv: -kv[1])
        if task is Task.SEGMENTATION:
            counts = ", ".join(f"{k} on {v}" for k, v in ranked) or "no class"
            said = [f"shown   masks drawn: {counts} of {self.results} frames"]
        else:
            counts = ", ".join(f"{k} {v}" for k, v in ranked) or "nothing"
            said = [f"shown   top-1 label on {self.results} frames: {counts}"]
        if task is Task.CLASSIFICATION and self.truth_frames:
            said.append(f"truth   the generator's frame quality agrees on {self.found} of {self.truth_frames} frames")
        return said

    def to_json(self, task: Task) -> dict[str, Any]:
        out: dict[str, Any] = {"results": self.results}
        if task is Task.DETECTION:
            out.update(frames_with_boxes=self.frames_with_boxes, boxes=self.boxes)
            if self.truth_frames:
                out["truth"] = {"frames": self.truth_frames, "frames_with_polyps": self.truth_positive_frames,
                                "boxes": self.truth_boxes, "found_at_iou_0_5": self.found}  # fmt: skip
        else:
            out["labels"] = dict(self.labels)
            if task is Task.CLASSIFICATION and self.truth_frames:
                out["truth"] = {"frames": self.truth_frames, "top1_agrees": self.found}
        return out


def _annotate(img: np.ndarray, r: Result, e2e_ms: float) -> Image.Image:
    """Overlay plus a caption strip: model id, frame, latency and the class legend."""
    canvas = Image.new("RGB", (img.shape[1], img.shape[0] + 28), (16, 16, 16))
    canvas.paste(Image.fromarray(img), (0, 28))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), f"{r.model.name} {r.model.version}  frame {r.seq}  {e2e_ms:.1f} ms", fill=(230, 230, 230))
    x = 4
    legend = list(zip(r.labels, r.colors))
    for name, color in legend[1:] if r.task is Task.SEGMENTATION else legend:  # class 0 is the background
        draw.rectangle((x, 16, x + 8, 24), fill=tuple(color))
        draw.text((x + 11, 14), name, fill=(200, 200, 200))
        x += 14 + 7 * len(name)
    return canvas


def _wait_for_heartbeat(sub: ResultSubscriber, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not sub.daemon_alive:  # a SUB socket misses what is published before it has joined
        if time.monotonic() > deadline:
            raise DemoError(f"no heartbeat from the daemon within {timeout_s:g} s")
        sub.recv(100)


def _draining(daemon: DaemonProcess, last_result: float) -> bool:
    """After the last frame: wait DRAIN_TIMEOUT_S past the last result, longer (up to BUSY_DRAIN_S) while the daemon
    still holds a frame it took: on a slow board one inference can outlast the drain, and its result is the one to
    show."""
    quiet = time.monotonic() - last_result
    if quiet < DRAIN_TIMEOUT_S:
        return True
    if quiet > BUSY_DRAIN_S:
        return False
    try:
        stats = daemon.control("stats", timeout_s=CONTROL_TIMEOUT_S)
    except (ControlError, DaemonUnavailable):  # the daemon cannot say: nothing more to wait for
        return False
    settled = sum(int(stats.get(k, 0)) for k in ("frames_out", "frames_dropped", "frames_stale", "frames_rejected"))
    return int(stats.get("frames_in", 0)) > settled


def _row(name: str, values: list[int]) -> str:
    p = percentiles_ms(values)
    if p is None:
        return f"  {name:<12} {'-':>8}"
    return f"  {name:<12} {p['p50']:8.2f} {p['p95']:8.2f} {p['p99']:8.2f} {p['max']:8.2f}"


def run_demo(options: DemoOptions, say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo; `say` gets the progress and summary lines."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        package = load_package(options.model or demo_package_path(options.task))
        default_source = DEMO_SOURCES.get(package.card.task) if options.model is None else None
        source = open_source(
            options.source or default_source or bundled_cine(), options.dicom or package.card.dicom_output
        )
    except (PackageError, SourceError, DicomError) as exc:
        raise DemoError(str(exc)) from None
    say(f"model   {package.model_id} ({package.card.task.label}, {len(package.card.output.labels)} classes)")
    say(f"source  {source.description}, {options.frames} frames" + (f" at {options.fps:g} fps" if options.fps else ""))
    say("starting daemon ...")
    views: list[ViewServer] = []  # the view outlives the daemon: its page says the demo ended
    try:
        with tempfile.TemporaryDirectory(prefix="edgert-demo-") as tmp:
            preview = ["--preview", "tcp://127.0.0.1:*"] if options.view_port is not None else []
            daemon = DaemonProcess(package.root, Path(tmp), out / "daemon.log", preview)
            try:
                result = _run(options, package.card, daemon, source, say, views)
            except DaemonError as exc:
                raise DemoError(f"daemon: {exc}") from None
            finally:
                code = daemon.stop()
                say(f"daemon stopped (exit status {code}), log: {out / 'daemon.log'}")
        for view in views:
            if not result.summary.get("interrupted"):  # Ctrl+C during the run ends the demo, view and all
                _linger(view, result, options.linger_s, say)
        return result
    finally:
        for view in views:
            view.stop()


def _run(
    args: DemoOptions,
    card: ModelCard,
    daemon: DaemonProcess,
    source: Any,
    say: Callable[[str], None],
    views: list[ViewServer],
) -> DemoResult:
    endpoints = daemon.wait_ready()
    if args.view_port is not None:
        from edge_runtime.integrations.view import ViewOptions, ViewServer

        view = ViewServer(ViewOptions(results=endpoints["results"], preview=endpoints["preview"], port=args.view_port,
                                      max_age_ms=args.max_age_ms))  # fmt: skip
        view.start()
        views.append(view)
        say(f"view    {view.url} (the overlays live in a browser while the demo runs)")
    return _play(args, card, daemon, endpoints, source, say)


def _linger(view: ViewServer, result: DemoResult, linger_s: float | None, say: Callable[[str], None]) -> None:
    """After the run the page stays, saying why the AI is offline, instead of vanishing mid-look."""
    received = result.summary.get("frames", {}).get("received", 0)
    view.end(f"the demo ended after {received} results; its daemon has stopped")
    until = "Ctrl+C to exit" if linger_s is None else f"for {linger_s:g} s (--linger)"
    say(f"view    {view.url} stays up, saying the demo ended (open pages keep their last frame), {until}")
    try:
        if linger_s is None:
            while True:
                time.sleep(3600)
        time.sleep(linger_s)
    except KeyboardInterrupt:
        pass


def _play(
    args: DemoOptions,
    card: ModelCard,
    daemon: DaemonProcess,
    endpoints: dict[str, str],
    source: Any,
    say: Callable[[str], None],
) -> DemoResult:
    out = args.out
    rec = Recorder()
    stop = threading.Event()
    stats_box: list[ReplayStats] = []
    failure: list[str] = []  # what stopped the scanner thread, reported by the main thread
    gif: list[Image.Image] = []
    gif_every = max(1, args.frames // GIF_MAX_FRAMES)
    stills: dict[str, Image.Image] = {}
    shown = Shown()
    fallback_first: Image.Image | None = None  # the first overlay, should none show a box
    with ResultSubscriber(endpoints["results"], max_age_ms=args.max_age_ms) as sub:
        _wait_for_heartbeat(sub, 10.0)
        say(f"daemon  ready, ingest {endpoints['ingest']}, results {endpoints['results']}")

        def scanner() -> None:
            sender = FrameSender(endpoints["ingest"])
            try:
                stats_box.append(
                    replay(source, sender, fps=args.fps, loop=True, max_frames=args.frames, stop=stop, on_send=rec.sent)
                )
            except (SourceError, DicomError, ValueError) as exc:  # a source that fails part-way
                failure.append(str(exc))
            except Exception as exc:  # never a traceback from a thread; the demo exits non-zero instead
                failure.append(f"replay failed: {exc.__class__.__name__}: {exc}")
            finally:
                sender.close(flush_ms=500)  # the last frames of a finite run still reach the daemon

        thread = threading.Thread(target=scanner, name="demo-scanner", daemon=True)
        started = time.perf_counter()
        thread.start()
        last_result = time.monotonic()
        received = 0
        interrupted = False
        try:
            while thread.is_alive() or _draining(daemon, last_result):
                r = sub.recv(100)
                if r is None:
                    if not thread.is_alive() and stats_box and received >= stats_box[0].sent:
                        break
                    continue
                now = time.time_ns()
                last_result = time.monotonic()
                received += 1
                rec.add(r, now)
                frame = rec.frame(r.seq)
                shown.add(r, frame)
                if received % 50 == 0:
                    say(f"  {received:5d} results, last end-to-end {(now - r.capture_ts_ns) / 1e6:6.2f} ms")
                if frame is None or not (r.seq % gif_every == 0 or "first" not in stills or r.seq >= args.frames - 1):
                    continue
                fmt = pixel_format_for(frame.pixels, bgr=frame.color is Color.BGR)
                img = _annotate(draw_overlay(to_display_rgb(frame.pixels, fmt), r), r, (now - r.capture_ts_ns) / 1e6)
                if r.task is not Task.DETECTION or r.boxes:  # the first still shows the feature where one shows
                    stills.setdefault("first", img)
                fallback_first = fallback_first or img
                stills["last"] = img
                if r.seq % gif_every == 0 and len(gif) < GIF_MAX_FRAMES:
                    gif.append(img)
        except KeyboardInterrupt:
            say("interrupted")
            interrupted = True
        finally:
            stop.set()
            thread.join(5.0)
        elapsed = time.perf_counter() - started
        daemon_stats = daemon.control("stats", timeout_s=CONTROL_TIMEOUT_S)
        stale, rejected = sub.stats.stale, sub.stats.rejected
    if fallback_first is not None:
        stills = {"first": stills.get("first", fallback_first), **stills}
    replay_stats = stats_box[0] if stats_box else ReplayStats()
    files = _write_images(out, stills, gif, 1000.0 / (args.fps or 30.0) * gif_every, list(card.output.colors))
    frames: dict[str, int] = {
        "sent": replay_stats.sent,
        "processed": daemon_stats.get("frames_out", 0),
        "received": received,
        "dropped_sender": replay_stats.dropped,
        "dropped_daemon": daemon_stats.get("frames_dropped", 0),
        "stale_discarded": stale,
        "rejected": daemon_stats.get("frames_rejected", 0) + rejected,
        "errors": rec.errors,
        "out_of_order": rec.out_of_order,
    }
    summary = {
        "frames": frames,
        "latency_ms": {
            "end_to_end": percentiles_ms(rec.e2e_ns),
            "inference": percentiles_ms(rec.inference_ns),
            "queue": percentiles_ms(rec.queue_ns),
            "transport": percentiles_ms(rec.transport_ns),
        },
        "shown": shown.to_json(card.task),
        "elapsed_s": round(elapsed, 2),
        "interrupted": interrupted,
        "files": [str(f) for f in files],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    f = frames
    say(
        f"\nframes  sent {f['sent']}  processed {f['processed']}  received {f['received']}  dropped "
        f"{f['dropped_sender'] + f['dropped_daemon']} (sender {f['dropped_sender']}, daemon {f['dropped_daemon']})  "
        f"stale {f['stale_discarded']}  errors {f['errors']}  in {elapsed:.1f} s"
    )
    say(f"latency (ms)  {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    say(_row("end-to-end", rec.e2e_ns))
    say(_row("inference", rec.inference_ns))
    say(_row("queue", rec.queue_ns))
    say(_row("transport", rec.transport_ns))
    for line in shown.lines(card.task):
        say(line)
    say("wrote   " + ", ".join(str(p) for p in files + [out / "summary.json"]))
    if failure:
        return DemoResult(False, summary, failure[0])
    if received == 0:
        return DemoResult(False, summary, "no results arrived: see the daemon log")
    return DemoResult(True, summary)


def _write_images(
    out: Path, stills: dict[str, Image.Image], gif: list[Image.Image], gif_ms: float, legend: list[tuple[int, int, int]]
) -> list[Path]:
    files = []
    for name, img in stills.items():
        path = out / f"overlay_{name}.png"
        img.save(path)
        files.append(path)
    if gif:
        path = out / "overlay.gif"
        frames = _paletted(gif, legend)
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=max(20, int(gif_ms)), loop=0,
                       optimize=False)  # fmt: skip
        files.append(path)
    return files


def _paletted(frames: list[Image.Image], legend: list[tuple[int, int, int]]) -> list[Image.Image]:
    """One palette for every GIF frame, holding the class colours exactly: a per-frame adaptive palette spends its
    256 entries on the picture and turns a small legend swatch or a thin box into a near colour."""
    fixed = [*dict.fromkeys([*legend, (16, 16, 16), (200, 200, 200), (230, 230, 230), (255, 255, 255)])]
    base = frames[0].quantize(colors=256 - len(fixed), method=Image.Quantize.MEDIANCUT)
    entries = (base.getpalette() or [])[: 3 * (256 - len(fixed))]
    palette = Image.new("P", (1, 1))
    palette.putpalette(entries + [v for c in fixed for v in c])
    return [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
