"""`edgert compare`: two models on the same inputs, and their differences."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_runtime.cli.common import (
    SOURCE_HELP,
    Command,
    ExitCode,
    Output,
    _input_shape_argument,
    _json_argument,
    _sampling,
    _sampling_arguments,
)


def _compare(args: argparse.Namespace, out: Output) -> int:
    from converters.compare import compare_models, format_table
    from edge_runtime.core.protocol import Task

    numeric = args.task == "numeric"
    mc = compare_models(
        args.reference, args.candidate, args.data, sampling=_sampling(args), card_path=args.card,
        task=Task.from_name(args.task) if args.task and not numeric else None, numeric_only=numeric,
        input_shape=args.input_shape, emulate=not args.no_emulate,
    )  # fmt: skip
    out.say(format_table(mc))
    passed = args.tolerance is None or mc.comparison.metric >= 1.0 - args.tolerance
    out.result({
        "reference": str(args.reference),
        "candidate": str(args.candidate),
        "data": {"description": mc.data.description, "samples": len(mc.data.feeds),
                 "representative": mc.data.representative},
        "emulated_fp16": mc.emulated_fp16,
        "tolerance": args.tolerance,
        "passed": passed,
        **mc.comparison.to_json(),
    })  # fmt: skip
    if not passed:
        print(f"edgert compare: FAILED: {mc.comparison.metric_name} {mc.comparison.metric:.5f} < "
              f"{1.0 - args.tolerance:.5f}", file=sys.stderr)  # fmt: skip
        return ExitCode.GATE_FAILED
    return ExitCode.OK


def add_parser(command: Command) -> None:
    p = command("compare", "run two models on the same inputs and report their differences", _compare)
    p.add_argument("reference", help="ONNX file or model package")
    p.add_argument("candidate", help="ONNX file or model package")
    p.add_argument("--data", required=True, help=SOURCE_HELP)
    _sampling_arguments(p)
    p.add_argument("--card", type=Path, help="model.json when neither model is a package")
    p.add_argument("--task", choices=["segmentation", "classification", "numeric"], help="override the card's task")
    _input_shape_argument(p)
    p.add_argument("--tolerance", type=float, help="exit 3 if the task metric is below 1 - tolerance")
    p.add_argument("--no-emulate", action="store_true",
                   help="run an FP16 candidate as is (ONNX Runtime CPU runs most FP16 ops in FP32)")  # fmt: skip
    _json_argument(p, "the figures")
