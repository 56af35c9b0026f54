"""`edgert keys generate`: a CURVE key pair for the daemon or a client."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.cli.common import (
    Command,
    ExitCode,
    Output,
    _json_argument,
)


def _keys(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.sdk.security import generate_keys

    public, secret = generate_keys(args.name, args.dir)
    out.say(f"public key  {public}   (give to the other side: the daemon's authorized_clients folder, or clients)")
    out.say(f"secret key  {secret}   (stays on this device, mode 600)")
    out.result({"public": str(public), "secret": str(secret)})
    return ExitCode.OK


def add_parser(command: Command) -> None:
    p = command("keys", "generate a CURVE key pair for the daemon or a client", _keys)
    p.add_argument("action", choices=["generate"])
    p.add_argument("name", help="key name, e.g. daemon or scanner-1")
    p.add_argument("--dir", type=Path, default=Path("."),
                   help="folder to write NAME.key and NAME.key_secret into (default: the current folder)")  # fmt: skip
    _json_argument(p, "the key file paths")
