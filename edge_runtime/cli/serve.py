"""`edgert serve`: run the inference daemon from a config file and flags over it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from edge_runtime.cli.common import BACKEND_HELP, Command, Output

# Each flag overrides one config key: its type and choices come from the key's field in the schema
# (edge_runtime.daemon.config.SECTIONS), so a flag cannot drift from the file it overrides.
_OVERRIDES: tuple[tuple[str, str, str], ...] = (
    ("--model", "model.package", "model package (default without --config: bundled demo model)"),
    ("--backend", "model.backend", BACKEND_HELP),
    ("--threads", "model.threads", "backend threads (0 = one per core)"),
    ("--device", "model.device", "CUDA device for the GPU backends (default 0)"),
    ("--ingest", "ingest.endpoint", "frame endpoint, e.g. tcp://127.0.0.1:5555"),
    ("--ingest-mode", "ingest.mode", "bind or connect to the ingest endpoint"),
    ("--ingest-pattern", "ingest.pattern", "rep: imagezmq REQ senders"),
    ("--ingest-format", "ingest.format", "imagezmq: accept unmodified imagezmq ImageSenders"),
    ("--results", "results.endpoint", "result PUB endpoint, e.g. tcp://127.0.0.1:5556"),
    ("--control", "control.endpoint", "control endpoint, e.g. tcp://127.0.0.1:5557"),
    ("--heartbeat-ms", "heartbeat.interval_ms", "heartbeat interval in ms (50..1000)"),
    ("--metrics", "metrics.endpoint", "serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9464 (off by default)"),
    (
        "--preview",
        "preview.endpoint",
        "publish each processed frame as a JPEG for `edgert view` on this PUB "
        "endpoint, e.g. tcp://127.0.0.1:5558 (off unless given)",
    ),  # fmt: skip
    ("--server-key", "security.server_key", "CURVE: this daemon's .key_secret (with --authorized-clients)"),
    ("--authorized-clients", "security.authorized_clients", "CURVE: folder of client .key files allowed to connect"),
    ("--audit", "audit.path", "keep the hash-chained audit log in this file (JSON lines)"),
    ("--reload-dir", "control.reload_dirs", "a folder `ctl reload` may load from, besides the model's own (repeat)"),
    ("--triton-url", "triton.url", "--backend triton: the server's gRPC host:port"),
    ("--triton-model", "triton.model", "--backend triton: the model's name there (default: the card's name)"),
)


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _from_cwd(dotted: str, value: Any) -> Any:
    """A path on the command line means the current folder's, whichever folder the config file is in (paths in
    the file start at the file)."""
    from edge_runtime.daemon.config import config_key

    kind = config_key(dotted).kind
    if value is None:
        return None
    if kind is Path:
        return str(Path(value).expanduser().absolute())
    if isinstance(value, list):  # a repeated flag (the folder paths of a tuple[Path, ...])
        return [str(Path(v).expanduser().absolute()) for v in value]
    return value


def _serve(args: argparse.Namespace, out: Output) -> int:

    from edge_runtime.core.package import demo_package_path
    from edge_runtime.daemon.config import apply_overrides, build_config, load_config
    from edge_runtime.daemon.server import Daemon

    overrides = {key: _from_cwd(key, getattr(args, _dest(flag))) for flag, key, _ in _OVERRIDES}
    if args.preview:
        overrides["preview.enabled"] = True  # an endpoint on the command line turns the preview on
    if args.config:
        config = load_config(args.config, overrides)
    else:
        data = apply_overrides({"model": {"package": str(demo_package_path())}}, overrides)
        config = build_config(data, Path.cwd(), where="command line")
    engine_source = None
    if config.backend.needs_engine:
        from converters.engine import BuildOptions, daemon_engine_source

        e = config.engine
        options = BuildOptions(workspace_mib=e.workspace_mib, opt_level=e.opt_level, dla_core=e.dla_core,
                               timing_cache=e.timing_cache, device=config.device)  # fmt: skip
        engine_source = daemon_engine_source(options, e.cache_dir, e.build_on_start, e.on_mismatch)
    return Daemon(dataclasses.replace(config, ready_file=args.ready_file), engine_source).run()


def add_parser(command: Command) -> None:
    from edge_runtime.daemon.config import config_key

    p = command("serve", "run the inference daemon", _serve)
    p.add_argument("--config", type=Path, help="daemon.toml; the flags below override it")
    for flag, dotted, help in _OVERRIDES:
        key = config_key(dotted)
        typed: dict[str, Any] = {"type": key.kind} if key.kind in (int, float) else {}  # the rest stays text
        listed = getattr(key.kind, "__origin__", None) is tuple  # tuple[Path, ...]: a repeated flag
        if listed:
            typed["action"] = "append"
        metavar = "PATH" if key.kind is Path or listed else ("ENDPOINT" if dotted.endswith(".endpoint") else None)
        default = getattr(key.default, "value", key.default)  # what the daemon uses when neither file nor flag says
        unset = default in (None, "", (), dataclasses.MISSING) or key.optional or "default" in help or "off " in help
        said = "" if unset else f", default {default}"
        p.add_argument(flag, **typed, choices=key.choices, metavar=metavar, help=f"{help} [{dotted}{said}]")
    p.add_argument("--ready-file", type=Path, help="write the bound endpoints here as JSON once ready")
