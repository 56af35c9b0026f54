"""Attack benchmark, files and reloads: what hostile files cost, side by side with `--checkout` for a before/after.

    python benchmarks/attack_files.py [--checkout PATH] [--reloads 100] [--out benchmarks/results/attack_files.json]

Scenarios (issue 32, item 1), each in a child process of the given source tree, its peak RSS from wait4:

- dicom_bomb: `edgert replay` of a 1 KB DICOM whose header says 65500x65500 pixels and 1000 JPEG frames (4 GiB a
  frame decoded);
- dicom_liar: a 16x16 DICOM whose one JPEG frame's own header claims 65500x65500;
- zip_bomb_reload: `ctl reload` of a 1 MB zip archive that unpacks to 1 GiB of zeros, on a running daemon: the
  daemon's peak RSS, its answer, and the `edgert-pkg-*` folders left in its temporary folder;
- reloads: `ctl reload` of the bundled package `--reloads` times (a zip archive of it every other time): the
  daemon's RSS after 10 and after all of them.

A child is capped at `--memory-cap-gib` of address space (default 6) and `--timeout-s` (default 30 s) so that the
release before the hardening cannot take the machine down: it then reports the cap, not a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from converters.bench import machine_info  # noqa: E402
from edge_runtime.core.package import demo_package_path  # noqa: E402
from edge_runtime.daemon.process import DaemonProcess  # noqa: E402
from edge_runtime.sdk.control import ControlClient  # noqa: E402
from tests.calibration.make_dicom import cine, claiming, encoded  # noqa: E402  (the tests' DICOM bombs)

SCENARIOS = ("dicom_bomb", "dicom_liar", "zip_bomb_reload", "reloads")


def _child(cmd: list[str], checkout: Path, cap_gib: float, timeout_s: float) -> dict[str, Any]:
    """Run a command in `checkout`'s source tree under an address-space cap; its wall time, peak RSS and last line."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cap = int(cap_gib * 1024**3)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=limit)  # fmt: skip
    killed = threading.Timer(timeout_s, proc.kill)
    killed.start()
    output = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    killed.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in output.decode(errors="replace").splitlines() if ln.strip()]
    return {"seconds": round(time.monotonic() - t0, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "exit": proc.returncode, "timed_out": not killed.is_alive() and time.monotonic() - t0 >= timeout_s,
            "memory_error": "MemoryError" in output.decode(errors="replace"),
            "last_line": lines[-1][:200] if lines else ""}  # fmt: skip


def replay_file(path: Path, checkout: Path, cap_gib: float, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edge_runtime.cli", "replay", str(path), "--ingest", "tcp://127.0.0.1:9", "--fps",
           "1000", "--frames", "3"]  # fmt: skip
    return _child(cmd, checkout, cap_gib, timeout_s)


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _zipped(folder: Path, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"pkg/{f.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


def with_daemon(checkout: Path, work: Path, scenario: str, reloads: int) -> dict[str, Any]:
    """Start `edgert serve` from `checkout` with its own TMPDIR and run a reload scenario against it."""
    tmp = work / "daemon-tmp"
    tmp.mkdir()
    reload_dir = work / "models"
    reload_dir.mkdir()
    package = reload_dir / "demo"
    import shutil

    shutil.copytree(demo_package_path(), package)
    old_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    try:
        daemon = DaemonProcess(package, work, work / f"{scenario}.log", [], source_root=checkout)
    finally:
        if old_tmp is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = old_tmp
    try:
        endpoints = daemon.wait_ready()
        client = ControlClient(endpoints["control"], timeout_s=120)
        peak, stop = [rss_mb(daemon.pid)], threading.Event()

        def sample() -> None:
            while not stop.wait(0.01):
                peak.append(rss_mb(daemon.pid))

        threading.Thread(target=sample, daemon=True).start()
        if scenario == "zip_bomb_reload":
            bomb = _zipped(package, reload_dir / "bomb.zip", {"pkg/padding.bin": bytes(1 << 30)})
            before = rss_mb(daemon.pid)
            t0 = time.monotonic()
            reply = client.exchange({"cmd": "reload", "package": str(bomb)})
            took = time.monotonic() - t0
            time.sleep(0.5)
            stop.set()
            return {"archive_mb": round(bomb.stat().st_size / 1e6, 2), "seconds": round(took, 2),
                    "rss_before_mb": round(before, 1), "peak_rss_mb": round(max(peak), 1),
                    "reply": {"ok": reply.get("ok"), "error": str(reply.get("error", ""))[:160]},
                    "leftover_folders": sorted(p.name for p in tmp.glob("edgert-pkg-*")), "alive": daemon.proc.poll() is None}  # fmt: skip
        archive = _zipped(package, reload_dir / "demo.zip")
        rss: dict[int, float] = {}
        failed = 0
        for k in range(1, reloads + 1):
            reply = client.exchange({"cmd": "reload", "package": str(archive if k % 2 else package)})
            failed += not reply.get("ok")
            if k in (10, reloads):
                time.sleep(0.5)
                rss[k] = round(rss_mb(daemon.pid), 1)
        stop.set()
        return {"reloads": reloads, "failed": failed, "rss_after_mb": rss, "peak_rss_mb": round(max(peak), 1),
                "growth_10_to_end_mb": round(rss[reloads] - rss[10], 1),
                "leftover_folders": len(list(tmp.glob("edgert-pkg-*")))}  # fmt: skip
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="source tree the commands run from")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--reloads", type=int, default=100)
    parser.add_argument("--memory-cap-gib", type=float, default=6.0)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attack_files.json"))
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    report: dict[str, Any] = {"machine": machine_info(), "checkout": str(checkout), "scenarios": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.scenarios:
            if name == "dicom_bomb":
                path = cine(work / "bomb.dcm", 65500, 65500, [claiming(encoded(16, 16), 65500, 65500)] * 1000)
                result = {"file_bytes": path.stat().st_size,
                          **replay_file(path, checkout, args.memory_cap_gib, args.timeout_s)}  # fmt: skip
            elif name == "dicom_liar":
                path = cine(work / "liar.dcm", 16, 16, [claiming(encoded(16, 16), 65500, 65500)])
                result = {"file_bytes": path.stat().st_size,
                          **replay_file(path, checkout, args.memory_cap_gib, args.timeout_s)}  # fmt: skip
            else:
                scenario_dir = work / name
                scenario_dir.mkdir()
                result = with_daemon(checkout, scenario_dir, name, args.reloads)
            report["scenarios"][name] = result
            print(f"{name:16s} {json.dumps(result)}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
