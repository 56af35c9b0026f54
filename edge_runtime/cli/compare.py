"""`edgert compare`: two models on the same inputs, and their differences."""

from __future__ import annotations

import argparse
from pathlib import Path

from converters.kinds import NUMERIC
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
from edge_runtime.core.protocol import Task


def _compare(args: argparse.Namespace, out: Output) -> int:
    from converters.compare import compare_models, format_table

    numeric = args.task == NUMERIC
    mc = compare_models(
        args.reference, args.candidate, args.data, sampling=_sampling(args), card_path=args.card,
        task=Task.from_name(args.task) if args.task and not numeric else None, numeric_only=numeric,
        input_shape=args.input_shape, emulate=not args.no_emulate,
    )  # fmt: skip
    out.say(format_table(mc))
    passed, verdict = mc.verdict(args.tolerance)
    out.result({
        "reference": str(args.reference),
        "candidate": str(args.candidate),
        "data": {"description": mc.data.description, "samples": len(mc.data.feeds),
                 "representative": mc.data.representative},
        "emulated_fp16": mc.emulated_fp16,
        "tolerance": args.tolerance if args.tolerance is not None else mc.default_tolerance,
        "passed": passed,
        **mc.comparison.to_json(),
    })  # fmt: skip
    out.say(verdict)
    return ExitCode.OK if passed else ExitCode.GATE_FAILED


def add_parser(command: Command) -> None:
    p = command("compare", "run two models on the same inputs and report their differences", _compare)
    p.add_argument("reference", help="ONNX file or model package")
    p.add_argument("candidate", help="ONNX file or model package")
    p.add_argument("--data", help="the frames both run on (default: as convert, the card's data_source or synthetic for "
                   "a package, random for a bare ONNX): " + SOURCE_HELP)  # fmt: skip
    _sampling_arguments(p)
    p.add_argument("--card", type=Path, help="model.json when neither model is a package")
    p.add_argument("--task", choices=[*(t.label for t in Task), NUMERIC],
                   help=f"override the card's task ({NUMERIC}: compare the outputs as numbers only)")  # fmt: skip
    _input_shape_argument(p)
    p.add_argument("--tolerance", type=float, help="exit 3 if the worst class's lower bound is below 1 - tolerance "
                   "(default: the task's, as convert's gate)")  # fmt: skip
    p.add_argument("--no-emulate", action="store_true",
                   help="run an FP16 candidate as is (ONNX Runtime CPU runs most FP16 ops in FP32)")  # fmt: skip
    _json_argument(p, "the figures")
