"""`edgert view`: the live video with the model's overlays in a browser."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from edge_runtime.cli.common import (
    VIEW_PORT,
    CliError,
    Command,
    ExitCode,
    Output,
    _client_keys,
    _key_arguments,
    _verbosity,
)


def _view_token(args: argparse.Namespace) -> str | None:
    """The view's access token: --token-file, else --token (warned: it shows in `ps`), else $EDGERT_VIEW_TOKEN."""
    if args.token_file is not None:
        try:
            lines = args.token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read the token file {args.token_file}: {exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise CliError(f"the token file {args.token_file} is empty")
        return token
    if args.token is not None:
        logging.getLogger("edgert.view").warning(
            "--token shows in the process list to every local user; prefer --token-file or $EDGERT_VIEW_TOKEN"
        )
        return str(args.token)
    return os.environ.get("EDGERT_VIEW_TOKEN") or None


def _view(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.integrations.view import ViewOptions, ViewServer

    if _verbosity(args) >= 2:
        logging.getLogger("edgert.view.http").setLevel(logging.DEBUG)  # websockets' line per connection
    options = ViewOptions(
        results=args.results, preview=args.preview, host=args.host, port=args.port, token=_view_token(args),
        stream_id=args.stream_id, max_age_ms=args.max_age_ms, keys=_client_keys(args), tls_cert=args.cert,
        tls_key=args.key,
    )  # fmt: skip
    server = ViewServer(options)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return ExitCode.OK


def add_parser(command: Command) -> None:
    p = command("view", "live video with the model's overlays in a browser (needs the daemon's --preview)", _view)
    p.add_argument("--results", default="tcp://127.0.0.1:5556", help="the daemon's results endpoint")
    p.add_argument("--preview", help="the daemon's preview endpoint (default: the one its heartbeats announce)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to serve the page on (default 127.0.0.1; anything else is reachable from other "
                   "machines: use --token)")  # fmt: skip
    p.add_argument("--port", type=int, default=VIEW_PORT, help=f"HTTP port (default {VIEW_PORT})")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token-file", type=Path, help="read the access token the page URL must carry (?token=...) "
                       "from this file's first line, at least 8 characters; default $EDGERT_VIEW_TOKEN, else none")  # fmt: skip
    token.add_argument("--token", help="the access token itself (visible to every local user in `ps`: prefer "
                       "--token-file or $EDGERT_VIEW_TOKEN)")  # fmt: skip
    p.add_argument("--stream-id", type=int, help="show this stream (default: the first that sends)")
    p.add_argument("--max-age-ms", type=float, default=500.0,
                   help="an overlay older than this (capture to now) is not shown; the page says STALE (default 500)")  # fmt: skip
    p.add_argument("--cert", type=Path, help="serve HTTPS (and WSS) with this PEM certificate chain")
    p.add_argument("--key", type=Path, help="the certificate's PEM private key (default: in the --cert file)")
    _key_arguments(p)
