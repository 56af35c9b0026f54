"""`edgert`'s parser and `main`: the subcommands register themselves, one module each (their parser beside their
run function); `main` turns an expected failure (`EdgertError`) into one line and lets a real bug show its
traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

import edge_runtime.cli.audit as audit
import edge_runtime.cli.bench as bench
import edge_runtime.cli.build as build
import edge_runtime.cli.compare as compare
import edge_runtime.cli.convert as convert
import edge_runtime.cli.ctl as ctl
import edge_runtime.cli.demo as demo
import edge_runtime.cli.igtl as igtl
import edge_runtime.cli.keys as keys
import edge_runtime.cli.package as package
import edge_runtime.cli.record as record
import edge_runtime.cli.replay as replay
import edge_runtime.cli.serve as serve
import edge_runtime.cli.view as view
from edge_runtime import __version__
from edge_runtime.cli.common import (
    ERROR_CHARS,
    EXIT_CODES_HELP,
    ExitCode,
    Output,
    UsageError,
    _verbosity,
    log,
)
from edge_runtime.core.errors import EdgertError, escaped

SUBCOMMANDS = [
    demo.add_parser,
    serve.add_parser,
    view.add_parser,
    record.add_parser,
    igtl.add_parser,
    record.add_capture_parser,
    replay.add_parser,
    convert.add_parser,
    compare.add_parser,
    bench.add_parser,
    build.add_parser,
    ctl.add_parser,
    keys.add_parser,
    audit.add_parser,
    package.add_parser,
]  # in the order `edgert --help` lists them


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's default in `--help`, unless its help already says it or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, True, argparse.SUPPRESS, "", [], ())
            or isinstance(action, argparse._CountAction)  # -v/-q
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", dest="verbose_sub", action="count", default=0,
                        help="more output (-vv for debug logs)")  # fmt: skip
    common.add_argument("-q", "--quiet", dest="quiet_sub", action="count", default=0,
                        help="less output: no progress lines, warnings and errors only")  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="edgert",
        description="edgert: real-time inference for medical imaging devices, from model package to live overlay.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"edgert {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output (-vv for debug logs)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, help_text: str, func: Callable[[argparse.Namespace, Output], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES_HELP, parents=[common],
                           formatter_class=_HelpWithDefaults)  # fmt: skip
        p.set_defaults(func=func)
        return p

    for add in SUBCOMMANDS:
        add(command)
    return parser


def _log_level(args: argparse.Namespace) -> int:
    base = logging.INFO if args.command in ("serve", "demo", "view") else logging.WARNING
    return min(logging.ERROR, max(logging.DEBUG, base - 10 * _verbosity(args)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=_log_level(args), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = f"edgert {args.command}" + (f" {args.action}" if args.command == "ctl" else "")
    try:
        code = int(args.func(args, Output(args)))
        sys.stdout.flush()  # inside the try: a reader that went away is seen here, not at interpreter exit
        return code
    except BrokenPipeError:  # `edgert ... | head`: the reader has what it wanted; no traceback, no error line
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's own flush at exit cannot fail again
        return ExitCode.PIPE_CLOSED
    except UsageError as exc:
        print(f"{name}: usage error: {escaped(exc, ERROR_CHARS)}", file=sys.stderr)
        return ExitCode.USAGE
    except EdgertError as exc:  # an expected failure: one line, no traceback (a bug keeps its traceback)
        if _verbosity(args) >= 2:
            log.debug("traceback", exc_info=True)
        print(f"{name}: error: {escaped(exc, ERROR_CHARS)}", file=sys.stderr)  # one line, whatever a name held
        return ExitCode.ERROR
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
