"""`edgert serve`: run the inference daemon from a config file and flags over it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from edge_runtime.cli.common import (
    BACKEND_HELP,
    BACKENDS,
    Command,
    Output,
)


def _serve(args: argparse.Namespace, out: Output) -> int:

    from edge_runtime.core.package import demo_package_path
    from edge_runtime.daemon.config import apply_overrides, build_config, load_config
    from edge_runtime.daemon.server import Daemon

    overrides = {
        "model.package": args.model,
        "model.backend": args.backend,
        "model.threads": args.threads,
        "model.device": args.device,
        "ingest.endpoint": args.ingest,
        "ingest.mode": args.ingest_mode,
        "ingest.pattern": args.ingest_pattern,
        "ingest.format": args.ingest_format,
        "results.endpoint": args.results,
        "control.endpoint": args.control,
        "heartbeat.interval_ms": args.heartbeat_ms,
        "metrics.endpoint": args.metrics,
        "preview.enabled": True if args.preview else None,
        "preview.endpoint": args.preview,
        "security.server_key": str(args.server_key) if args.server_key else None,
        "security.authorized_clients": str(args.authorized_clients) if args.authorized_clients else None,
        "audit.path": str(args.audit) if args.audit else None,
    }
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
    p = command("serve", "run the inference daemon", _serve)
    p.add_argument("--config", type=Path, help="daemon.toml; the flags below override it")
    p.add_argument("--model", help="model package (default without --config: bundled demo model)")
    p.add_argument("--backend", choices=BACKENDS, help=BACKEND_HELP)
    p.add_argument("--threads", type=int, help="backend threads (0 = one per core)")
    p.add_argument("--device", type=int, help="CUDA device for the GPU backends (default 0)")
    p.add_argument("--ingest", help="frame endpoint, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--ingest-mode", choices=["bind", "connect"])
    p.add_argument("--ingest-pattern", choices=["pull", "sub", "rep"], help="rep: imagezmq REQ senders")
    p.add_argument(
        "--ingest-format", choices=["edgert", "imagezmq"], help="imagezmq: accept unmodified imagezmq ImageSenders"
    )
    p.add_argument("--results", help="result PUB endpoint, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--control", help="control endpoint, e.g. tcp://127.0.0.1:5557")
    p.add_argument("--heartbeat-ms", type=int, help="heartbeat interval in ms (50..1000)")
    p.add_argument("--ready-file", type=Path, help="write the bound endpoints here as JSON once ready")
    p.add_argument("--metrics", help="serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9464 (off by default)")
    p.add_argument("--preview", metavar="ENDPOINT", help="publish each processed frame as a JPEG for `edgert view` "
                   "on this PUB endpoint, e.g. tcp://127.0.0.1:5558 (off by default)")  # fmt: skip
    p.add_argument("--server-key", type=Path, help="CURVE: this daemon's .key_secret (with --authorized-clients)")
    p.add_argument("--authorized-clients", type=Path, help="CURVE: folder of client .key files allowed to connect")
    p.add_argument("--audit", type=Path, metavar="FILE", help="keep the hash-chained audit log in FILE (JSON lines)")
