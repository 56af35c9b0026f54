"""`edgert replay`: play files or a synthetic cine to a daemon, as a scanner would."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from calibration.preprocessing import DicomOutput
from edge_runtime.cli.common import (
    SOURCE_HELP,
    CliError,
    Command,
    ExitCode,
    Output,
    _client_keys,
    _dicom_argument,
    _ingest,
    _ingest_argument,
    _json_argument,
    _key_arguments,
)


def _replay(args: argparse.Namespace, out: Output) -> int:
    from calibration.sources import open_source
    from edge_runtime.core.protocol import Limits
    from edge_runtime.sdk.sender import FrameSender
    from edge_runtime.tools.replay import replay

    limits = Limits()
    if args.config is not None:
        from edge_runtime.daemon.config import load_config

        limits = load_config(args.config).limits
    source = open_source(args.source, DicomOutput(args.dicom), limits.image)
    ingest = _ingest(args)
    rate = f" at {args.fps:g} fps (--fps, not the source's own rate)" if args.fps else ""
    out.progress(f"replaying {source.description} to {ingest}{rate}" + (" (looping)" if args.loop else ""))
    started = time.perf_counter()
    sender = FrameSender(ingest, stream_id=args.stream_id, keys=_client_keys(args))
    try:
        stats = replay(source, sender, fps=args.fps, loop=args.loop, max_frames=args.frames, limits=limits)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    finally:
        sender.close(flush_ms=500)  # let the last queued frames leave; never more than half a second
    elapsed = time.perf_counter() - started
    refusal = sender.refusal()
    if args.frames is not None and not args.loop and stats.frames < args.frames:
        print(f"the source ended after {stats.frames} of the {args.frames} frames asked: add --loop to play it again",
              file=sys.stderr)  # fmt: skip
    why = ""
    if stats.dropped:
        why = f" (refused: {refusal})" if refusal else " (daemon absent or behind)"
    print(
        f"sent {stats.sent} frames in {elapsed:.1f} s ({stats.sent / max(elapsed, 1e-9):.1f} fps), "
        f"dropped {stats.dropped}{why}, late {stats.late}"
        + (f", refused {stats.refused} (over the daemon's limits)" if stats.refused else ""),
        file=sys.stderr,
    )
    out.result({"sent": stats.sent, "dropped": stats.dropped, "late": stats.late, "refused": stats.refused,
                "seconds": round(elapsed, 3), "reached_fps": stats.reached_fps})  # fmt: skip
    if refusal and not stats.sent:
        raise CliError(f"no frame reached the daemon: {refusal}")
    if stats.refused and not (stats.sent or stats.dropped):
        raise CliError("no frame of this source can be sent to the daemon")
    return ExitCode.OK


def add_parser(command: Command) -> None:
    p = command("replay", "play DICOM, images, video or a synthetic cine to a daemon, as a scanner would", _replay)
    p.add_argument("source", help=SOURCE_HELP)
    _ingest_argument(p, "the daemon's ingest endpoint (--to: the old name, deprecated)")
    p.add_argument("--fps", type=float, help="frame rate (default: the recording's Frame Time / Cine Rate, else 30)")
    p.add_argument("--loop", action="store_true", help="start again at the end")
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--stream-id", type=int, default=0)
    p.add_argument("--config", type=Path, metavar="DAEMON_TOML",
                   help="the daemon's config: no frame over its [limits] is decoded or sent (default: the defaults)")  # fmt: skip
    _dicom_argument(p)
    _key_arguments(p)
    _json_argument(p, "the replay counts")
