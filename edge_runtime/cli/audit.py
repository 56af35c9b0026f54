"""`edgert audit verify`: check an audit log's hash chain."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.cli.common import (
    Command,
    ExitCode,
    Output,
    _json_argument,
)


def _audit(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.daemon.audit import verify

    found = verify(args.file, expected_head=args.head)
    names = ", ".join(f.name for f in found.files)
    out.say(f"{'ok' if found.ok else 'BROKEN'}: {found.records} records in {len(found.files)} file(s) ({names})")
    if found.records:
        start = "the first record ever" if found.complete_history else f"record {found.first_seq} (older rotated away)"
        out.say(f"  from {start} to record {found.head_seq}, head {found.head}")
        out.say(
            "  ends with a clean stop" if found.ends_with_stop else "  open: the daemon is running, or its end was cut"
        )
    for problem in found.problems:
        out.say(f"  {problem}")
    out.result({"ok": found.ok, "records": found.records, "files": [str(f) for f in found.files],
                "first_seq": found.first_seq, "head_seq": found.head_seq, "head": found.head,
                "complete_history": found.complete_history, "ends_with_stop": found.ends_with_stop,
                "problems": found.problems})  # fmt: skip
    return ExitCode.OK if found.ok else ExitCode.CHAIN_BROKEN


def add_parser(command: Command) -> None:
    p = command("audit", "check an audit log's hash chain: any edited, inserted or deleted record is found", _audit)
    p.add_argument("action", choices=["verify"])
    p.add_argument("file", type=Path, help="the audit log (its rotated files NAME.1, NAME.2... are read too)")
    p.add_argument("--head", help="the newest record's hash as recorded elsewhere (ctl status): also finds a cut end")
    _json_argument(p, "the verification")
