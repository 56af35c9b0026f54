"""Every command line that README.md and docs/ show is run as written, against the bundled models, on a bounded run.

A new user copies these lines into a shell from a fresh clone. Each page's lines run in order, in a folder of
their own that links the checkout's `docs/`, `edge_runtime/` and `benchmarks/` (the lines name them relative to
the checkout), with the page's placeholders (`PACKAGE`, `scans/`, `cart:5555`, `/etc/edgert/...`) made real there.
Servers (`serve`, `view`) run until they answer, the lines after them talk to them, and SIGINT stops them: they
must exit 0. Lines that need TensorRT or a GPU must fail here with an error line that says so and exit 1, never a traceback. The
test knows how to run every shown line: a line added to the docs without a way to run it here fails it.
Not run: the installation lines (`.ci/run` runs them on a fresh machine) and the benchmark scripts (minutes
each, run by hand; their figures are in benchmarks/results).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from pydicom.data import get_testdata_file

from tests.conftest import wait_until
from tests.models.make_models import onnx_model

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = {  # prefix of a shown line -> why this test does not run it
    "python3 -m pip install": "installation: .ci/run installs on a fresh machine",
    "pip install": "installation: .ci/run installs on a fresh machine",
    "apt-get": "installation: .ci/run installs on a fresh machine",
    "python3 benchmarks/": "a benchmark script: minutes each, run by hand, figures in benchmarks/results",
    "trtexec": "NVIDIA's trtexec, on a machine with TensorRT",
    "cp ": "a shell copy between the lines around it, done by this test's placeholders",
}
GPU_ERROR = re.compile(r"^edgert \w+: error: .*(TensorRT|tensorrt|CUDA|GPU)", re.S)


def _lines(page: Path) -> Iterator[str]:
    """The shell lines of a page's code blocks: continuations joined, comments and prompts dropped."""
    text = page.read_text(encoding="utf-8")
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang not in ("", "bash", "sh", "console"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = line.removeprefix("$ ").removesuffix(" &")  # `&`: in the background, as a server here runs
            for part in line.split(" && "):
                part = re.sub(r"\s+", " ", part.strip())
                if part.startswith(("edgert ", *NOT_RUN)):
                    yield part


@dataclass(frozen=True)
class Step:
    how: str  # run | server | bounded | no-gpu | until
    codes: tuple[int, ...] = (0,)
    seconds: float = 240.0  # run: its timeout; bounded: how long before SIGINT; until: how long to wait for `said`
    said: str = ""  # until: SIGINT once the command has said this (a command that waits for Ctrl+C)


RUN, SERVER, NO_GPU = Step("run"), Step("server"), Step("no-gpu", (1,))
BOUNDED = Step("bounded", (0, 130), 6.0)
# Pruning takes a minute or more per line on two cores: those lines run for a bounded time (their data loaded, the
# search begun, no error), tested end to end in tests/converters/test_prune.py; `--plan` replays what is there.
PRUNE = Step("bounded", (0, 3, 130), 20.0)
# On the small folder of scans here the gate may refuse a lossy line: exit 3 with its report is the documented outcome
# of a refusal, not a crash (the lines that later lines build on use the default data, which passes).
GATED = Step("run", (0, 3))

# How each shown line runs here, by page; they run in the page's order (a line shown twice runs once).
PLAN: dict[str, dict[str, Step]] = {
    "README.md": {
        "edgert demo": Step("run", seconds=120),
        "edgert serve --config docs/daemon.example.toml": SERVER,
        "edgert replay scans/cine.dcm --ingest tcp://127.0.0.1:5555 --loop": BOUNDED,
        "edgert replay synthetic:frames=600,size=480x640 --fps 60": Step("bounded", (0, 130), 8.0),
        "edgert ctl status": RUN,
        "edgert view": SERVER,
        "edgert package PACKAGE": RUN,
        "edgert convert PACKAGE --precision int8 -o out/": RUN,
        "edgert convert PACKAGE --prune channels --precision int8 -o out/": PRUNE,
        "edgert convert PACKAGE --plan out/report.json -o again/": RUN,
        "edgert bench out/": RUN,
        "edgert build out/ --print-trtexec --trt-version 10.3.0": RUN,
    },
    "BENCHMARKS.md": {
        "edgert bench edge_runtime/models/us_seg_demo [--precision fp16|int8] [--duration-s 3] [--json out.json]": RUN,
    },
    "CONVERTING.md": {
        "edgert convert model_pkg/ --precision int8 -o out/": RUN,
        "edgert convert model.onnx --card model.json --precision fp16 --data scans/ -o out_fp16/": RUN,
        "edgert convert old.onnx --input-shape 1,3,224,224 --data random -o out_old/": RUN,
        "edgert compare model_pkg/ out/ --data scans/ --tolerance 0.05 --json cmp.json": RUN,
        "edgert convert model_pkg/ --precision int8 --calib scans/ -o out/": GATED,
        "edgert convert model_pkg/ --precision int8 --calib scans/ --target tensorrt --fallback fp16 "
        "--trt-version 8.6.1 -o out_trt/": GATED,
        "edgert convert edge_runtime/models/us_seg_demo --prune channels -o out/": PRUNE,
        "edgert convert edge_runtime/models/us_seg_demo --plan out/report.json -o replayed/": RUN,
        "edgert convert edge_runtime/models/us_seg_demo --precision int8 --config docs/daemon.example.toml "
        "-o out-cart/": RUN,
        "edgert bench edge_runtime/models/us_seg_demo --config docs/daemon.example.toml --spin run": RUN,
        "edgert convert model_pkg/ --prune channels --prune-budget 0.4 --calib scans/ -o out/": PRUNE,
        "edgert convert model_pkg/ --prune channels --prune-budget 6ms --calib scans/ -o out/": PRUNE,
        "edgert convert model_pkg/ --prune channels --precision int8 --calib scans/ -o out/": PRUNE,
        "edgert convert model_pkg/ --prune channels+2:4 --precision int8 --calib scans/ -o out/": PRUNE,
    },
    "INTEGRATIONS.md": {
        "edgert serve --preview tcp://127.0.0.1:5558": SERVER,
        "edgert igtl --port 18944 --spacing 0.2,0.2": SERVER,
        "edgert igtl --source 127.0.0.1:18945 --source-device Image_Reference --ingest tcp://127.0.0.1:5555": BOUNDED,
        "edgert serve --preview tcp://127.0.0.1:5558 --config daemon.toml": SERVER,
        "edgert record --pacs ORTHANC@pacs.hospital:4242 --spool /var/spool/edgert --every 60": SERVER,
        "edgert capture": RUN,
    },
    "OPERATIONS.md": {
        "edgert keys generate daemon --dir /etc/edgert/keys": RUN,
        "edgert keys generate scanner --dir ./scanner-keys": RUN,
        "edgert serve --config daemon.toml --server-key /etc/edgert/keys/daemon.key_secret "
        "--authorized-clients /etc/edgert/authorized": SERVER,
        "edgert replay synthetic --ingest tcp://cart:5555 --server-key daemon.key --client-key scanner.key_secret": (
            BOUNDED
        ),
    },
    "TENSORRT.md": {
        "edgert convert model_pkg/ --precision fp16 -o pkg_fp16/": RUN,
        "edgert convert model_pkg/ --precision int8 --target tensorrt --trt-version 10.3.0 -o pkg_int8/": RUN,
        "edgert build pkg_int8/ --print-trtexec --trt-version 10.3.0": RUN,
        "edgert build /opt/edgert/models/pkg_int8 --workspace 1024 --timing-cache /var/cache/edgert/timing.cache": (
            NO_GPU
        ),
        "edgert serve --model /opt/edgert/models/pkg_int8 --backend tensorrt": NO_GPU,
        "edgert build PACKAGE --print-trtexec --trt-version 10.3.0": RUN,
    },
    "VIEW.md": {
        "edgert serve --preview tcp://127.0.0.1:5558": SERVER,
        "edgert view --results tcp://127.0.0.1:5556": SERVER,
        "edgert demo --view": Step("until", seconds=120, said="Ctrl+C to exit"),  # the page stays after the run
    },
    "TRITON.md": {  # a real tritonserver (tests/tritonserver.py) serves the demo package for this page
        "edgert serve --backend triton --triton-url 127.0.0.1:8001": SERVER,
    },
}


def test_the_plan_covers_every_line_the_docs_show() -> None:
    for page in PAGES:
        shown = [line for line in _lines(page) if line.startswith("edgert ")]
        planned = list(PLAN.get(page.name, {}))
        assert set(shown) == set(planned), (
            f"{page.name}: shown but not planned {sorted(set(shown) - set(planned))}, "
            f"planned but not shown {sorted(set(planned) - set(shown))}"
        )


def _old_onnx(path: Path) -> None:
    """A model as older exporters write it: a 3-channel input with free height and width."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.full(108, 0.1, np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["out"])],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, "h", "w"])],
        [weight],
    )
    onnx.save(onnx_model(graph), str(path))


def _workspace(tmp: Path) -> dict[str, str]:
    """The page's folder: the checkout linked in, the placeholders made real. Returns the text substitutions."""
    for name in ("docs", "edge_runtime", "benchmarks"):
        (tmp / name).symlink_to(ROOT / name)
    scans = tmp / "scans"
    scans.mkdir()
    shutil.copy(str(get_testdata_file("examples_ybr_color.dcm")), scans / "cine.dcm")
    from calibration.synthetic import SyntheticUltrasound

    gen = SyntheticUltrasound(240, 320, seed=5)
    for i in range(80):  # besides the cine: frames enough for calibration and both gate splits
        Image.fromarray(gen.sample()[0]).save(scans / f"frame_{i:03d}.png")
    demo = ROOT / "edge_runtime" / "models" / "us_seg_demo"
    shutil.copy(demo / "model.onnx", tmp / "model.onnx")
    shutil.copy(demo / "model.json", tmp / "model.json")
    _old_onnx(tmp / "old.onnx")
    (tmp / "cfg").mkdir()  # daemon.toml: the example, whose package path starts at its own folder
    shutil.copy(ROOT / "docs" / "daemon.example.toml", tmp / "cfg" / "daemon.toml")
    etc = tmp / "etc"
    return {
        "/opt/edgert/models/": "",  # what the cart holds is the package converted here
        "/var/cache/edgert/": f"{tmp}/cache/",
        "/var/spool/edgert": f"{tmp}/spool",
        "@pacs.hospital:": "@127.0.0.1:",  # no PACS listens: records wait in the spool, as when the PACS is down
        "/etc/edgert/": f"{etc}/",
        "model_pkg/": str(demo),
        "PACKAGE": str(demo),
        "tcp://cart:": "tcp://127.0.0.1:",
        "--config daemon.toml": "--config cfg/daemon.toml",
        "--server-key daemon.key ": f"--server-key {etc}/keys/daemon.key ",
        "--client-key scanner.key_secret": "--client-key scanner-keys/scanner.key_secret",
    }


def _argv(line: str, subs: dict[str, str]) -> list[str]:
    line = re.sub(r" \[[^]]*\]", "", line)  # a synopsis' optional parts: the plain line runs
    for old, new in subs.items():
        line = line.replace(old, new)
    return [sys.executable, "-m", "edge_runtime.cli", *shlex.split(line)[1:]]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _answers(argv: list[str]) -> bool:
    """A server line is up: the daemon answers health (with the line's keys), the view serves its page."""
    if "serve" in argv:
        keys: list[str] = []
        if "--server-key" in argv:
            secret = Path(argv[argv.index("--server-key") + 1])
            scanner = secret.parent.parent.parent / "scanner-keys" / "scanner.key_secret"
            keys = ["--server-key", str(secret.with_suffix(".key")), "--client-key", str(scanner)]
        probe = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "ctl", "health", "--timeout", "1", *keys],
                               env=_env(), capture_output=True, timeout=30)  # fmt: skip
        return probe.returncode == 0
    if "igtl" in argv or "record" in argv:  # Slicer's port; the recorder's trigger socket
        try:
            socket.create_connection(("127.0.0.1", 18944 if "igtl" in argv else 5559), timeout=1).close()
            return True
        except OSError:
            return False
    try:
        with urllib.request.urlopen("http://127.0.0.1:8080/", timeout=1) as page:
            return bool(page.status == 200)
    except OSError:
        return False


def _command(line: str) -> str:
    return line.split()[1]


def _stop(proc: subprocess.Popen[str], line: str) -> None:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    allowed = (0, 130) if _command(line) == "replay" else (0,)  # a replay stopped by ^C says it was interrupted
    assert proc.returncode in allowed, f"{line}: exit {proc.returncode} after SIGINT\n{err[-2000:]}"
    assert "Traceback" not in err, f"{line}: {err[-2000:]}"


def _run_until(argv: list[str], cwd: Path, step: Step) -> tuple[str, str, int]:
    """Run until the command says `step.said`, then SIGINT it, as its user would."""
    out_path, err_path = cwd / ".until.out", cwd / ".until.err"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        proc = subprocess.Popen(argv, cwd=cwd, env=_env(), text=True, stdout=out_file, stderr=err_file)
        try:
            said = wait_until(lambda: proc.poll() is not None or step.said in out_path.read_text() + err_path.read_text(),
                              timeout=step.seconds, interval=0.5)  # fmt: skip
            assert said and proc.poll() is None, f"`{' '.join(argv)}` ended without saying {step.said!r}"
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out_path.read_text(), err_path.read_text(), proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if p.name in PLAN], ids=lambda p: p.name)
def test_every_command_a_page_shows_runs_as_written(page: Path, tmp_path: Path) -> None:
    subs = _workspace(tmp_path)
    triton = None
    if page.name == "TRITON.md":  # the page's Triton server, on ports of its own
        from tests.conftest import free_ports
        from tests.tritonserver import TritonServer

        triton = TritonServer(ROOT / "edge_runtime" / "models" / "us_seg_demo", *free_ports(3)).start()
        subs["--triton-url 127.0.0.1:8001"] = f"--triton-url {triton.url}"
    if page.name == "OPERATIONS.md":  # the page's `cp` between its lines: the daemon gets the public half
        (tmp_path / "etc" / "authorized").mkdir(parents=True)
    servers: list[tuple[subprocess.Popen[str], str]] = []
    try:
        for line in dict.fromkeys(x for x in _lines(page) if x.startswith("edgert ")):  # in the page's order
            step = PLAN[page.name][line]
            argv = _argv(line, subs)
            if page.name == "OPERATIONS.md" and "serve" in argv:
                shutil.copy(tmp_path / "scanner-keys" / "scanner.key", tmp_path / "etc" / "authorized")
            if "demo" in argv:  # the demo runs its own daemon, and its view takes the view's port
                while servers:
                    _stop(*servers.pop())
            for proc, started in [x for x in servers if _command(x[1]) == _command(line)]:  # the same ports
                servers.remove((proc, started))
                _stop(proc, started)
            if step.how == "server":
                proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
                servers.append((proc, line))
                wait_until(lambda: proc.poll() is not None or _answers(argv), timeout=60, interval=0.5)
                assert proc.poll() is None, f"{line}: exited {proc.returncode}\n{proc.communicate()[1][-2000:]}"
                scanning = any(_command(started) == "replay" for _, started in servers)
                if page.name == "INTEGRATIONS.md" and "serve" in argv and not scanning:  # the page's scanner
                    scanner = _argv("edgert replay scans/cine.dcm --loop", subs)
                    servers.append((subprocess.Popen(scanner, cwd=tmp_path, env=_env(), text=True,
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE),
                                    "edgert replay scans/cine.dcm --loop"))  # fmt: skip
                continue
            if step.how == "bounded":
                proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
                try:
                    proc.wait(step.seconds)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=30)
                code = proc.returncode
            elif step.how == "until":
                out, err, code = _run_until(argv, tmp_path, step)
            else:
                done = subprocess.run(argv, cwd=tmp_path, env=_env(), text=True, capture_output=True,
                                      timeout=step.seconds)  # fmt: skip
                out, err, code = done.stdout, done.stderr, done.returncode
            assert code in step.codes, f"{page.name}: `{line}` exited {code}\n{out[-1500:]}\n{err[-2500:]}"
            assert "Traceback" not in err, f"{page.name}: `{line}`\n{err[-2500:]}"
            if step.how == "no-gpu":
                said = err.strip().splitlines()  # the daemon's own log lines may come before it
                assert said and GPU_ERROR.match(said[-1]), f"{page.name}: `{line}`: {err[-1500:]}"
    finally:
        for proc, line in reversed(servers):
            if proc.poll() is None:
                _stop(proc, line)
        if triton is not None:
            triton.stop()
