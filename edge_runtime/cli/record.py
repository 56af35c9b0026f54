"""`edgert record` and `edgert capture`: DICOM captures of the live frame to a PACS, and asking for one."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edge_runtime.cli.common import (
    Command,
    ExitCode,
    Output,
    _client_keys,
    _json_argument,
    _key_arguments,
    _stop_on_signal,
)


def _record(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.integrations.record import PacsTarget, Recorder, RecordOptions, SourceStudy, SpoolBudget

    options = RecordOptions(
        results=args.results, spool=args.spool, preview=args.preview,
        pacs=PacsTarget.parse(args.pacs, args.calling_ae) if args.pacs else None,
        trigger=None if args.trigger == "none" else args.trigger, every_s=args.every, stream_id=args.stream_id,
        max_age_ms=args.max_age_ms, source=SourceStudy.from_file(args.source_dicom) if args.source_dicom else None,
        spool_budget=SpoolBudget(**{k: v for k, v in (("max_files", args.spool_max_files), ("max_bytes",
                                 None if args.spool_max_mb is None else int(args.spool_max_mb * 1024**2))) if v}),
        keys=_client_keys(args),
    )  # fmt: skip
    recorder = Recorder(options)
    where = f"sent to {args.pacs}" if args.pacs else "kept"
    with _stop_on_signal() as stop:
        recorder.start()
        out.progress(f"recording from {args.results}: captures spooled in {args.spool} and {where}; trigger "
                     f"{options.trigger or 'none'}{f', every {args.every:g} s' if args.every else ''}")  # fmt: skip
        try:
            recorder.run(stop, max_captures=args.count)
            if recorder.sender is not None and args.count is not None:  # a bounded run waits for its records
                deadline = time.monotonic() + args.drain_s
                while recorder.spool.pending() and time.monotonic() < deadline and not stop.is_set():
                    time.sleep(0.1)
        finally:
            recorder.stop()
    counts = recorder.sender.counts if recorder.sender else None
    pending = len(recorder.spool.pending())
    if recorder.spool_full:
        out.say(
            f"{recorder.spool_full} captures refused because the spool was full (--spool-max-mb, --spool-max-files)"
        )
    out.say(f"{recorder.captures} captures, {recorder.refused} refused; "
            + (f"{counts.sent} objects sent, {pending} still spooled" if counts else f"{pending} objects in the spool"))  # fmt: skip
    out.result({"captures": recorder.captures, "refused": recorder.refused, "spooled": pending,
                "sent": counts.sent if counts else 0, "pacs_refused": counts.refused if counts else 0})  # fmt: skip
    return ExitCode.OK


def _capture(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.integrations.record import request_capture

    reply = request_capture(args.trigger, args.timeout)
    out.result(reply)
    if not reply.get("ok"):
        out.say(f"capture refused: {reply.get('error')}")
        return ExitCode.ERROR
    out.say(f"captured stream {reply['stream']} seq {reply['seq']}: {len(reply['instances'])} DICOM objects")
    return ExitCode.OK


def add_parser(command: Command) -> None:
    p = command("record", "record the live frame and its result as DICOM (SC, and SEG for segmentation) to a PACS "
                "on a trigger", _record)  # fmt: skip
    p.add_argument("--results", default="tcp://127.0.0.1:5556", help="the daemon's results endpoint")
    p.add_argument("--preview", help="the daemon's preview endpoint (default: the one its heartbeats announce)")
    p.add_argument("--pacs", metavar="AE@HOST:PORT", help="C-STORE to this PACS, e.g. ORTHANC@127.0.0.1:4242 "
                   "(default: keep the files in --spool)")  # fmt: skip
    p.add_argument("--calling-ae", default="EDGERT", help="our AE title (default EDGERT)")
    p.add_argument("--spool", type=Path, default=Path("edgert-records"),
                   help="folder where records wait until the PACS has them (default ./edgert-records)")  # fmt: skip
    p.add_argument("--spool-max-mb", type=float, help="the spool's size budget in MiB, refused/ included: beyond it "
                   "captures are refused, never dropped (default 1024)")  # fmt: skip
    p.add_argument("--spool-max-files", type=int, help="the spool's file budget (default 10000)")
    p.add_argument("--trigger", default="tcp://127.0.0.1:5559",
                   help="endpoint `edgert capture` asks (default tcp://127.0.0.1:5559; 'none' for no socket)")  # fmt: skip
    p.add_argument("--every", type=float, metavar="SECONDS", help="also capture every SECONDS")
    p.add_argument("--source-dicom", type=Path, help="the DICOM file the frames come from: records join its study "
                   "and reference it (its patient data is copied, never invented)")  # fmt: skip
    p.add_argument("--stream-id", type=int, help="record this stream (default: the first that sends)")
    p.add_argument("--max-age-ms", type=float, default=1000.0, help="refuse to record a result older than this")
    p.add_argument("--count", type=int, help="stop after this many captures (then wait up to --drain-s for the PACS)")
    p.add_argument("--drain-s", type=float, default=30.0, help="with --count: how long to wait for the PACS")
    _key_arguments(p)
    _json_argument(p, "the counts")


def add_capture_parser(command: Command) -> None:
    p = command("capture", "ask a running `edgert record` to record the current frame now", _capture)
    p.add_argument("--trigger", default="tcp://127.0.0.1:5559", help="the recorder's trigger endpoint")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    _json_argument(p, "the recorder's reply")
