"""`edgert package`: validate a model package and show its card."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_runtime.cli.common import (
    Command,
    ExitCode,
    Output,
    _json_argument,
)


def _package(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.core.package import CARD_FILE, demo_package_path, open_package

    with open_package(args.package or demo_package_path()) as pkg:  # an archive's folder is gone after
        card = pkg.card
        raw_card = json.loads((pkg.root / CARD_FILE).read_text())
    spec = card.preprocess
    where = args.package or pkg.root
    onnx_file = pkg.onnx_path if Path(where).is_dir() else f"{where}: model.onnx"
    out.say(f"{card.name} {card.version} ({card.task.label}, {card.precision}) - valid")
    out.say(f"  onnx      {onnx_file} sha256 {pkg.sha256}")
    out.say(f"  input     '{card.input_name}' {list(spec.input_shape)} {spec.layout.value}, color {spec.color.value}, "
            f"resize {spec.resize.value}, mean {list(spec.mean)} std {list(spec.std)}")  # fmt: skip
    out.say(f"  output    '{card.output.name}' {card.output.decode.value} over {list(card.output.labels)}")
    conv = card.conversion
    if conv is not None:  # a converted artifact: its own verdict, never its original's figures as its own
        source = f" from sha256 {conv.from_sha256[:12]}" if conv.from_sha256 else ""
        out.say(f"  converted {conv.precision.upper()}{source} by {conv.tool or 'edgert'}")
        out.say(f"  gate      {conv.gate}")
        original = raw_card.get("conversion", {}).get("original_metrics")
        if original:
            out.say(f"  original  metrics of the model it was converted from: {json.dumps(original)}")
    elif card.metrics:
        out.say(f"  metrics   {json.dumps(card.metrics)}")
    out.result({"valid": True, "path": str(where), "sha256": pkg.sha256, "card": raw_card})
    return ExitCode.OK


def add_parser(command: Command) -> None:
    p = command("package", "validate a model package and show its card", _package)
    p.add_argument("package", nargs="?", help="package folder or archive (default: bundled demo model)")
    _json_argument(p, "the card")
