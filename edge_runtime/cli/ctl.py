"""`edgert ctl`: status, stats, health or a model reload of a running daemon, over its control socket."""

from __future__ import annotations

import argparse
import json

from edge_runtime.cli.common import (
    CliError,
    Command,
    ExitCode,
    Output,
    UsageError,
    _client_keys,
    _json_argument,
    _key_arguments,
)


def _ctl(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.sdk.control import RELOAD_TIMEOUT_S, STATUS_TIMEOUT_S, ControlClient, reload_request

    reload = args.action == "reload"
    timeout = args.timeout if args.timeout is not None else (RELOAD_TIMEOUT_S if reload else STATUS_TIMEOUT_S)
    client = ControlClient(args.control, keys=_client_keys(args), timeout_s=timeout)
    if args.action == "health":  # for scripts and service managers: one line, and the exit status
        healthy, state = client.healthy()
        out.say(f"{'healthy' if healthy else 'unhealthy'}: {state}")
        out.result({"healthy": healthy, "state": state})
        return ExitCode.OK if healthy else ExitCode.ERROR
    if reload:
        if not args.package:
            raise UsageError("reload needs a model package path: edgert ctl reload PACKAGE")
        reply = client.exchange(reload_request(args.package))  # printed as it is, a refusal included
    else:
        if args.package:
            raise UsageError(f"{args.action} takes no package argument")
        reply = client.exchange(args.action)
    if out.json_target is None:
        out.say(json.dumps(reply, indent=2))
    out.result(reply)
    if not reply.get("ok"):
        raise CliError(str(reply.get("error", "the daemon refused the request")))
    return ExitCode.OK


def add_parser(command: Command) -> None:
    p = command("ctl", "status, stats, health or model reload of a running daemon", _ctl)
    p.add_argument("action", metavar="{status,stats,health,reload}", choices=["status", "stats", "health", "reload"],
                   help="health: exit 0 only if ready; reload PACKAGE: swap the model without stopping")  # fmt: skip
    p.add_argument("package", nargs="?", help="for reload: the model package to load")
    _key_arguments(p)
    p.add_argument("--control", default="tcp://127.0.0.1:5557", help="the daemon's control endpoint")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for an answer (2, or 60 for reload)")
    _json_argument(p, "the daemon's reply")
