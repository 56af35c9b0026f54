"""`edgert`, the one console command: a thin layer over the library, one module per subcommand (its parser beside
its run function), the argument groups declared once in `common`, the parser and `main` in `main`. Each subcommand
imports what it needs when it runs, so `edgert --help` stays fast.

Conventions shared by every subcommand: `-v`/`-q` raise and lower the log and progress output; `--json [PATH|-]`
writes the command's result as JSON to a file or to stdout (the human-readable lines then go to stderr); a data
source is named the same way everywhere (`SOURCE_HELP`); exit codes are `ExitCode`. Expected failures (every
`EdgertError`) print one line naming the subcommand, never a traceback.
"""

from edge_runtime.cli.common import EXIT_CODES_HELP, SOURCE_HELP, CliError, ExitCode, UsageError
from edge_runtime.cli.main import build_parser, main

__all__ = ["EXIT_CODES_HELP", "SOURCE_HELP", "CliError", "ExitCode", "UsageError", "build_parser", "main"]
