"""`edgert demo`: the live demo (daemon, cine replay, overlays, latency summary)."""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.preprocessing import DicomOutput
from edge_runtime.cli.common import (
    SOURCE_HELP,
    VIEW_PORT,
    CliError,
    Command,
    ExitCode,
    Output,
    UsageError,
    _dicom_argument,
    _json_argument,
    log,
)
from edge_runtime.core.protocol import Task


def _view_port(args: argparse.Namespace) -> int | None:
    if args.view is None:
        return None
    if args.view == "":
        return int(args.port)
    try:  # `--view PORT`: the old spelling, kept working
        port = int(args.view)
    except ValueError:
        raise UsageError(f"--view takes no value (the port is --port), got {args.view!r}") from None
    log.warning("--view PORT is deprecated: use --view --port PORT")
    return port


def _demo(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.tools.demo import DemoOptions, run_demo

    options = DemoOptions(
        frames=args.frames,
        source=args.source,
        model=args.model,
        task=Task.from_name(args.task),
        fps=args.fps,
        dicom=DicomOutput(args.dicom) if args.dicom else None,
        out=args.out,
        view_port=_view_port(args),
        linger_s=args.linger,
        **({"max_age_ms": args.max_age_ms} if args.max_age_ms is not None else {}),
    )
    result = run_demo(options, say=out.say)
    out.result({"ok": result.ok, "error": result.error, **result.summary})
    if not result.ok:
        raise CliError(result.error or "the demo failed")
    return ExitCode.OK


def add_parser(command: Command) -> None:
    p = command("demo", "live demo: daemon + DICOM cine replay + overlay subscriber, with a latency summary", _demo)
    p.add_argument("--frames", type=int, default=300, help="frames to stream (default 300)")
    p.add_argument("--source", default=None, help=SOURCE_HELP + " (default: the bundled ultrasound cine)")
    p.add_argument("--model", type=Path, default=None, help="model package (default: the bundled demo model of --task)")
    p.add_argument(
        "--task",
        choices=[t.label for t in Task],
        default="segmentation",
        help="bundled demo: segmentation (ultrasound cine, default), detection (polyps in synthetic colonoscopy) or "
        "classification (endoscopy frame quality with saliency)",
    )
    p.add_argument("--fps", type=float, default=None, help="replay rate (default: the recording's)")
    _dicom_argument(p, from_card=True)
    p.add_argument(
        "--out", type=Path, default=Path("edgert-demo"), help="folder for overlay images (default ./edgert-demo)"
    )
    p.add_argument("--view", nargs="?", const="", metavar="",
                   help="also show the live overlays in a browser at http://127.0.0.1:PORT/ (needs the view extra)")  # fmt: skip
    p.add_argument("--port", type=int, default=VIEW_PORT, help=f"--view's HTTP port (default {VIEW_PORT})")
    p.add_argument("--linger", type=float, default=None, metavar="SECONDS",
                   help="with --view: after the run the page stays, saying the demo ended; this long "
                   "(default: until Ctrl+C)")  # fmt: skip
    p.add_argument("--max-age-ms", type=float, default=None,
                   help="a result older than this, capture to arrival, is stale: counted, never drawn (default: "
                   "DemoOptions' 500; raise it only for a board far slower than real time, as an emulator)")  # fmt: skip
    _json_argument(p, "the summary")
