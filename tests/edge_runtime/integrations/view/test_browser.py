"""`edgert view` in a real headless Chromium against a real daemon process and a replay.

These tests never skip: CI installs Chromium from the system's packages (.ci/run), and a browser that cannot start
fails the test with the reason. The daemon is killed with SIGKILL (no STOPPING heartbeat: the hard case) and
restarted on the same ports while the replay and the view keep running.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from calibration.sources import open_source
from edge_runtime.core.package import demo_package_path, load_package
from edge_runtime.daemon.process import DaemonProcess
from edge_runtime.sdk.sender import FrameSender
from edge_runtime.tools.demo import DemoOptions, run_demo
from tests.edge_runtime.integrations.view.conftest import open_page

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[4]
OFFLINE_WITHIN_S = 2.0  # the bound, from the kill to the banner on screen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Scene:
    """A daemon process, a scanner thread replaying a cine at 15 fps, and `edgert view` as its own process."""

    tmp: Path
    ports: dict[str, int] = field(default_factory=lambda: {k: _free_port() for k in ("ingest", "results",
                                                                                       "control", "preview", "view")})  # fmt: skip
    daemon: DaemonProcess | None = None
    view: subprocess.Popen[bytes] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)

    def endpoint(self, name: str) -> str:
        return f"tcp://127.0.0.1:{self.ports[name]}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['view']}/"

    def start_daemon(self) -> None:
        args = [arg for name in ("ingest", "results", "control") for arg in (f"--{name}", self.endpoint(name))]
        self.daemon = DaemonProcess(demo_package_path(), self.tmp, self.tmp / "daemon.log",
                                    [*args, "--preview", self.endpoint("preview"), "--threads", "1"])  # fmt: skip
        self.daemon.wait_ready()

    def kill_daemon(self) -> None:
        assert self.daemon is not None
        self.daemon.proc.kill()  # SIGKILL: no STOPPING heartbeat, as when the process crashes
        self.daemon.proc.wait()
        self.daemon.stop()

    def start_scanner(self) -> None:
        frames = [f.pixels for f in open_source("synthetic:frames=30,size=480x640,seed=3")]

        def scan() -> None:
            with FrameSender(self.endpoint("ingest")) as sender:
                i = 0
                while not self.stop.wait(1 / 15):
                    if not self.paused.is_set():
                        sender.send(frames[i % len(frames)])
                        i += 1

        threading.Thread(target=scan, name="test-scanner", daemon=True).start()

    def start_view(self) -> None:
        log = open(self.tmp / "view.log", "wb")  # noqa: SIM115 (closed with the process)
        self.view = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime.cli", "view", "--results", self.endpoint("results"),
             "--port", str(self.ports["view"])],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.view.poll() is None, (self.tmp / "view.log").read_text()
            try:
                with urllib.request.urlopen(self.url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        pytest.fail("edgert view did not serve its page within 20 s")

    def close(self) -> None:
        self.stop.set()
        if self.view is not None:
            self.view.terminate()
            self.view.wait(10)
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.daemon.stop()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    s = Scene(tmp_path_factory.mktemp("view"))
    try:
        s.start_daemon()
        s.start_scanner()
        s.start_view()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def page(scene: Scene, browser: Any) -> Iterator[Any]:
    p = open_page(browser, scene.url)
    yield p
    p.close()


def _painted(page: Any) -> int:
    return int(page.evaluate("document.body.dataset.painted"))


def _video(page: Any) -> np.ndarray:
    """The canvas's own pixels (the video with its overlay, without the banners laid over it)."""
    url = page.evaluate("document.getElementById('video').toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _class_colours() -> np.ndarray:
    colors = load_package(demo_package_path()).card.output.colors
    return np.asarray(colors[1:], np.int16)  # class 0 is the background, never drawn


def _near(img: np.ndarray, colours: np.ndarray, tolerance: int = 40) -> int:
    """Pixels within `tolerance` (per channel) of one of `colours`: the contours, drawn in the card's colours."""
    return int(sum((np.abs(img - c).max(axis=2) <= tolerance).sum() for c in colours))


def _tinted(img: np.ndarray) -> int:
    """Coloured pixels: the ultrasound image is gray, so any chroma is overlay."""
    return int(((img.max(axis=2) - img.min(axis=2)) > 40).sum())


def test_the_overlay_is_painted_in_the_models_colours(page: Any) -> None:
    page.wait_for_function("document.body.dataset.banner === 'none' && Number(document.body.dataset.painted) > 10",
                           timeout=30_000)  # fmt: skip
    img = _video(page)
    assert img.shape[:2] == (480, 640)  # the canvas has the frame's size
    assert _near(img, _class_colours()) > 200
    assert _tinted(img) > 2000
    assert page.locator("#model").inner_text().startswith("us-seg-demo")
    assert "online" in page.locator("#link").inner_text().lower()
    legend = page.locator("#legend").inner_text()
    labels = load_package(demo_package_path()).card.output.labels
    assert all(name in legend for name in labels[1:])


def test_keyboard_toggles_the_overlay_and_contours_only(page: Any) -> None:
    page.keyboard.press("f")  # compare the modes on one frame
    page.wait_for_function("document.body.dataset.frozen === 'true'")
    filled = _video(page)
    page.keyboard.press("c")
    page.wait_for_function("document.body.dataset.mode === 'contours'")
    page.wait_for_timeout(100)  # the next animation frame redraws
    contours = _video(page)
    assert 0 < _tinted(contours) < _tinted(filled) / 2  # lines only
    assert _near(contours, _class_colours()) > 100
    page.keyboard.press("c")
    page.keyboard.press("o")
    page.wait_for_function("document.body.dataset.overlay === 'off' && document.body.dataset.mode === 'fill'")
    page.wait_for_timeout(100)
    assert _tinted(_video(page)) < 50  # the gray image alone
    page.keyboard.press("o")
    page.wait_for_function("document.body.dataset.overlay === 'on'")
    page.wait_for_timeout(100)
    assert np.array_equal(_video(page), filled)  # the same frame, drawn the same way again
    page.keyboard.press("f")
    page.wait_for_function("document.body.dataset.frozen === 'false'")


def test_freeze_holds_the_frame_and_says_so(page: Any) -> None:
    page.keyboard.press("f")
    page.wait_for_function("document.body.dataset.frozen === 'true'")
    assert page.locator("#frozen").is_visible()
    held = page.evaluate("document.body.dataset.seq")
    time.sleep(1.0)  # 15 new frames arrive meanwhile
    assert page.evaluate("document.body.dataset.seq") == held
    assert _near(_video(page), _class_colours()) > 100  # the frozen frame keeps its own overlay
    page.keyboard.press("f")
    page.wait_for_function(f"document.body.dataset.frozen === 'false' && document.body.dataset.seq !== '{held}'")
    assert not page.locator("#frozen").is_visible()


def test_when_frames_stop_the_overlay_goes_and_the_page_says_stale(page: Any, scene: Scene) -> None:
    page.wait_for_function("document.body.dataset.banner === 'none'", timeout=10_000)
    scene.paused.set()  # the scanner stops sending; the daemon stays up
    try:
        page.wait_for_function("document.body.dataset.banner === 'stale'", timeout=3_000)
        assert page.locator("#banner").inner_text().startswith("NO CURRENT AI RESULT")
        assert page.evaluate("document.body.dataset.link") == "online"
        img = _video(page)
        assert _tinted(img) < 50 and _near(img, _class_colours()) < 20
    finally:
        scene.paused.clear()
    page.wait_for_function("document.body.dataset.banner === 'none'", timeout=10_000)


def test_a_hung_daemon_shows_the_offline_banner_within_2_s(page: Any, scene: Scene) -> None:
    """SIGSTOP: the process and its connections stay, only the heartbeats stop (the timeout path)."""
    assert scene.daemon is not None
    page.wait_for_function("document.body.dataset.banner === 'none'", timeout=10_000)
    stopped = time.monotonic()
    os.kill(scene.daemon.pid, signal.SIGSTOP)
    try:
        page.wait_for_function("document.body.dataset.banner === 'offline'", timeout=OFFLINE_WITHIN_S * 1000)
        elapsed = time.monotonic() - stopped
        assert page.locator("#banner").inner_text().startswith("AI OFFLINE — no heartbeat")
    finally:
        os.kill(scene.daemon.pid, signal.SIGCONT)
    page.wait_for_function("document.body.dataset.banner === 'none'", timeout=10_000)
    print(f"offline banner {elapsed * 1000:.0f} ms after SIGSTOP")


def test_killing_the_daemon_shows_the_offline_banner_within_2_s(page: Any, scene: Scene) -> None:
    page.wait_for_function("document.body.dataset.banner === 'none'", timeout=10_000)
    killed = time.monotonic()
    scene.kill_daemon()
    page.wait_for_function("document.body.dataset.banner === 'offline'", timeout=OFFLINE_WITHIN_S * 1000)
    elapsed = time.monotonic() - killed
    assert elapsed < OFFLINE_WITHIN_S
    banner = page.locator("#banner")
    assert banner.is_visible() and banner.inner_text().startswith("AI OFFLINE")
    img = _video(page)
    assert _tinted(img) < 50 and _near(img, _class_colours()) < 20  # the overlay is gone, not frozen
    print(f"offline banner {elapsed * 1000:.0f} ms after SIGKILL")


def test_the_view_recovers_when_the_daemon_comes_back(page: Any, scene: Scene) -> None:
    painted = _painted(page)
    scene.start_daemon()  # same ports; the replay and the view never stopped
    page.wait_for_function(
        f"document.body.dataset.banner === 'none' && Number(document.body.dataset.painted) > {painted + 5}",
        timeout=30_000,
    )
    assert "online" in page.locator("#link").inner_text().lower()
    assert _near(_video(page), _class_colours()) > 200
    with urllib.request.urlopen(scene.url + "stats", timeout=5) as response:
        stats = response.read().decode()
    assert '"mismatched": 0' in stats


def test_edgert_demo_view_shows_the_demo_live_and_then_that_it_ended(browser: Any, tmp_path: Path) -> None:
    """`edgert demo --view`: the demo's daemon publishes previews and the page shows its overlays; after the run the
    page stays (open or reloaded) and says the demo ended, instead of vanishing."""
    port = _free_port()
    lines: list[str] = []
    options = DemoOptions(frames=240, fps=30.0, out=tmp_path / "demo", view_port=port, linger_s=15.0)
    runner = threading.Thread(target=lambda: lines.append(str(run_demo(options, say=lines.append).ok)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while not any(line.startswith("view ") for line in lines):
        assert runner.is_alive() and time.monotonic() < deadline, lines
        time.sleep(0.1)
    demo_page = open_page(browser, f"http://127.0.0.1:{port}/")
    try:
        demo_page.wait_for_function("Number(document.body.dataset.painted) > 5", timeout=20_000)
        assert _near(_video(demo_page), _class_colours()) > 50
        ended = "document.body.dataset.banner === 'offline' && document.getElementById('banner').textContent.includes('demo ended')"
        demo_page.wait_for_function(ended, timeout=40_000)
        assert any("stays up, saying the demo ended" in line and "for 15 s" in line for line in lines), lines
        assert _near(_video(demo_page), _class_colours()) < 10  # the last frame, its overlay gone
        demo_page.reload()
        demo_page.wait_for_function(ended, timeout=5_000)
    finally:
        demo_page.close()
        runner.join(60)
    assert lines[-1] == "True"
