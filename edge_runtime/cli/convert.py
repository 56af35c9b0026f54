"""`edgert convert`: prepare a model and convert it behind the accuracy gate."""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.kinds import CalibrationMethod
from converters.kinds import Budget, Precision, PruneMethod, QuantTarget, Saliency
from converters.options import ConvertOptions
from edge_runtime.cli.common import (
    SOURCE_HELP,
    Command,
    ExitCode,
    Output,
    _cpu_arguments,
    _cpu_setup,
    _input_shape_argument,
    _json_argument,
    _sampling,
    _sampling_arguments,
    choices_of,
)

_OPTIONS = ConvertOptions()  # the library's defaults, which the flags show and keep


def _prune_budget(text: str) -> tuple[float, float | None]:
    """--prune-budget: a fraction (0.3), or a latency (6ms) as (default fraction, milliseconds)."""
    try:
        if text.strip().lower().endswith("ms"):
            return _OPTIONS.prune_budget, float(text.strip()[:-2])
        return float(text), None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction such as 0.3 or a latency such as 6ms, got {text!r}"
        ) from None


def _convert(args: argparse.Namespace, out: Output) -> int:
    from converters.convert import convert_model, summary_text, write_result

    sampling = _sampling(args)
    options = ConvertOptions(
        precision=Precision(args.precision),
        calib=args.calib,
        calib_method=None if args.calib_method == "auto" else CalibrationMethod(args.calib_method),
        percentile=args.percentile,
        target=QuantTarget(args.target),
        fallback=Precision(args.fallback),
        trt_version=args.trt_version,
        stride=sampling.stride,
        sample_order=sampling.order,
        seed=sampling.seed,
        data=args.data,
        samples=sampling.count,
        tolerance=args.tolerance,
        target_opset=args.opset,
        input_shape=args.input_shape,
        fix_shapes=args.fix_shapes,
        range_margin=args.range_margin,
        max_fallback=args.max_fallback,
        latency=not args.no_latency,
        prune=None if args.prune is None else PruneMethod(args.prune),
        prune_budget=args.prune_budget[0],
        prune_target_ms=args.prune_budget[1],
        prune_repair=not args.no_prune_repair,
        prune_by=None if args.prune_by == "auto" else Budget(args.prune_by),
        prune_multiple=args.prune_multiple,
        prune_frames=args.prune_frames,
        prune_time_budget_s=args.prune_time_budget,
        sparse_saliency=Saliency(args.sparse_saliency),
        verify=args.verify,
        cpu=_cpu_setup(args),
        **{k: getattr(args, k) for k in ("search_samples", "verify_samples", "min_support") if getattr(args, k)},
    )
    if args.plan is not None:
        out.progress(f"replaying {args.plan}: its options and decisions replace the command line's")
    result = convert_model(args.model, options, card_path=args.card, progress=out.progress, plan=args.plan)
    files = write_result(result, args.out)
    out.say(summary_text(result.report))
    out.say("wrote   " + ", ".join(str(f) for f in files))
    if result.model is not None and result.card is None:
        out.progress("note: no card was given (--card), so the output is model.onnx without a model.json")
    out.result(result.report.to_json())
    return ExitCode.OK if result.passed else ExitCode.GATE_FAILED


def add_parser(command: Command) -> None:
    p = command("convert", "prepare a model and convert it to FP32, FP16 or INT8 behind an accuracy gate", _convert)
    p.add_argument("model", help="ONNX file or model package")
    p.add_argument(
        "-o", "--out", type=Path, required=True, help="output folder (model package, report.json, summary.txt)"
    )
    p.add_argument("--precision", choices=choices_of(Precision), default=_OPTIONS.precision.value)
    p.add_argument("--card", type=Path, help="model.json for a bare ONNX file (preprocessing, task)")
    p.add_argument("--data", help="evaluation data for the accuracy gate (default: --calib, else synthetic for a "
                   "package): " + SOURCE_HELP)  # fmt: skip
    _sampling_arguments(p)
    p.add_argument("--tolerance", type=float, help="allowed shortfall below 1.0 of the worst class's lower bound "
                   "(default: 0.02 segmentation and classification, 0.05 detection F1, 0.001 cosine otherwise)")  # fmt: skip
    p.add_argument("--opset", type=int, default=_OPTIONS.target_opset,
                   help=f"target opset (>= 13, default {_OPTIONS.target_opset})")  # fmt: skip
    _input_shape_argument(p)
    p.add_argument("--fix-shapes", action="store_true", help="fix dynamic dims to the card's input shape")
    p.add_argument(
        "--range-margin", type=float, default=_OPTIONS.range_margin, help="keep FP32 where max |x| > 65504 / margin"
    )
    p.add_argument("--max-fallback", type=int, help="most nodes the gate may keep FP32 (default max(4, 25%% of nodes))")
    g = p.add_argument_group("int8")
    g.add_argument("--calib", help="calibration data (default: --data, else synthetic for a package); same forms")
    g.add_argument("--calib-method", choices=["auto", *choices_of(CalibrationMethod)], default="auto",
                   help="activation range method; auto tries each and keeps the most accurate (default)")  # fmt: skip
    g.add_argument("--percentile", type=float, default=_OPTIONS.percentile, help="for --calib-method percentile")
    g.add_argument("--target", choices=choices_of(QuantTarget), default=_OPTIONS.target.value,
                   help="Q/DQ placement: ONNX Runtime CPU kernels, or TensorRT explicit quantization")  # fmt: skip
    g.add_argument(
        "--fallback",
        choices=[Precision.FP32.value, Precision.FP16.value],
        default=_OPTIONS.fallback.value,
        help="precision of layers kept out of INT8",
    )
    g.add_argument(
        "--trt-version", default=_OPTIONS.trt_version, help="TensorRT version for calibration.cache (e.g. 8.6.1)"
    )
    g.add_argument("--no-latency", action="store_true",
                   help="skip the per-layer profiling that keeps layers out of INT8 where INT8 is slower here")  # fmt: skip
    g = p.add_argument_group("pruning (before the precision stages)")
    g.add_argument("--prune", choices=choices_of(PruneMethod),
                   help="channels: structured channel pruning, repaired by least squares on calibration frames (no "
                   "retraining); 2:4: two of every four input-channel weights zero, for TensorRT's sparse tensor cores "
                   "(no speed on a CPU); channels+2:4: both")  # fmt: skip
    g.add_argument("--sparse-saliency", choices=choices_of(Saliency), default=_OPTIONS.sparse_saliency.value,
                   help="--prune 2:4: which weights go: optimal brain surgeon on calibration inputs with "
                   "least-squares compensation (default), or the smallest magnitudes")  # fmt: skip
    g.add_argument("--prune-budget", type=_prune_budget, default=(_OPTIONS.prune_budget, None), metavar="FRACTION|Nms",
                   help="fraction of the layers' time (or FLOPs) to remove, or a time per run to reach here, e.g. "
                   "6ms; backs off by 0.1 while the gate fails (default 0.3)")  # fmt: skip
    g.add_argument("--prune-by", choices=["auto", *choices_of(Budget)], default="auto",
                   help="what the budget is a fraction of: the layers' time measured here (auto for onnxruntime) "
                   "or their FLOPs (auto for tensorrt)")  # fmt: skip
    g.add_argument("--prune-multiple", type=int, default=0,
                   help="keep channel counts multiples of this (default: the block this CPU's convolutions work "
                   "in, 16 with AVX-512, so that 44 of 48 channels are not kept at the cost of 48; 8 for a FLOPs "
                   "budget); 1 allows any count")  # fmt: skip
    g.add_argument(
        "--prune-frames",
        type=int,
        default=_OPTIONS.prune_frames,
        help=f"calibration frames that measure each layer family's sensitivity and refit (default {_OPTIONS.prune_frames})",
    )
    g.add_argument(
        "--prune-time-budget",
        type=float,
        default=_OPTIONS.prune_time_budget_s,
        metavar="SECONDS",
        help="refuse, before it starts, a sensitivity pass estimated to take longer (default 900)",
    )
    g.add_argument("--no-prune-repair", action="store_true",
                   help="remove channels with bias correction only, no least-squares refit")  # fmt: skip
    g = p.add_argument_group("the gate: three disjoint splits (calibration: --samples)")
    g.add_argument("--search-samples", type=int,
                   help="frames every choice is judged on: calibration method, fallbacks, pruning ratio (default 100)")  # fmt: skip
    g.add_argument("--verify-samples", type=int,
                   help="frames used for nothing else, which deliver the verdict (default 200)")  # fmt: skip
    g.add_argument("--verify", help="the verify split's source (default: --data's, frames disjoint from the other "
                   "splits); same forms")  # fmt: skip
    g.add_argument("--min-support", type=int,
                   help="frames (boxes) a class needs in the verify split to be judged; a rarer class fails the "
                   "verdict with a request for data (default 10)")  # fmt: skip
    p.add_argument("--plan", type=Path, help="rebuild the model a report.json's plan recorded (its options and "
                   "decisions; nothing re-measured), then run the verify gate")  # fmt: skip
    _cpu_arguments(p)
    _json_argument(p, "the conversion report (also written to OUT/report.json)")
