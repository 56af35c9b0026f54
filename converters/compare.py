"""`edgert compare`: run two models on the same inputs and report how far the candidate is from the reference."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from converters.convert import load_model
from converters.data import EvalData, load_feeds
from converters.evaluate import Comparison, compare, run_model
from converters.fp16 import emulate_fp16
from converters.graph import ConversionError, copy_model, real_inputs
from converters.prepare import PrepareReport, fix_input_shapes
from edge_runtime.package import ModelCard


@dataclass(frozen=True)
class ModelComparison:
    comparison: Comparison
    data: EvalData
    task: str
    emulated_fp16: bool  # the candidate's FP16 rounding was emulated


def has_fp16(model: onnx.ModelProto) -> bool:
    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) or any(
        a.name == "to" and a.i == TensorProto.FLOAT16
        for n in model.graph.node
        if n.op_type == "Cast"
        for a in n.attribute
    )


def compare_models(
    reference: str | Path,
    candidate: str | Path,
    data: str,
    samples: int = 32,
    card_path: str | Path | None = None,
    task: str | None = None,
    input_shape: list[int] | None = None,
    emulate: bool = True,
) -> ModelComparison:
    """Compare a candidate with a reference. Each is an ONNX file or a model package. The card (preprocessing
    and task) comes from `card_path`, else the reference's package, else the candidate's. An FP16 candidate is
    run through the FP16 emulation unless `emulate` is False: ONNX Runtime's CPU provider computes most FP16 ops
    in FP32, so running the FP16 file directly would understate its error."""
    if task not in (None, "segmentation", "classification", "numeric"):
        raise ConversionError(f"unknown task '{task}': segmentation, classification or numeric")
    ref, ref_card, _, _ = load_model(Path(reference), Path(card_path) if card_path else None)
    cand, cand_card, _, _ = load_model(Path(candidate), None)
    card: ModelCard | None = ref_card or cand_card
    feed_model = ref
    if input_shape is not None:
        feed_model = copy_model(ref)
        fix_input_shapes(feed_model, {real_inputs(feed_model.graph)[0].name: input_shape}, PrepareReport())
    eval_data = load_feeds(data, feed_model, card, samples)
    emulated = emulate and has_fp16(cand)
    ref_out = run_model(ref, eval_data.feeds)
    cand_out = (
        run_model(emulate_fp16(cand), eval_data.feeds, optimize=False) if emulated else run_model(cand, eval_data.feeds)
    )
    kind = task or (card.task.name.lower() if card else "numeric")
    result = compare(ref_out, cand_out, kind, card.output.name if card else None, card.output.labels if card else None)
    return ModelComparison(result, eval_data, kind, emulated)


def _fmt(value: float, digits: int = 4) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}g}"


def format_table(mc: ModelComparison) -> str:
    c = mc.comparison
    lines = [f"data: {mc.data.description}" + ("; candidate FP16 rounding emulated" if mc.emulated_fp16 else "")]
    lines.append(
        f"{'output':<20} {'max |err|':>11} {'mean |err|':>11} {'cosine':>10} {'PSNR dB':>9} {'non-finite':>10}"
    )
    for o in c.outputs:
        lines.append(
            f"{o.name[:20]:<20} {_fmt(o.max_abs):>11} {_fmt(o.mean_abs):>11} {_fmt(o.cosine, 7):>10} "
            f"{_fmt(o.psnr_db):>9} {o.nonfinite:>10}"
        )
    if c.per_class:
        lines.append(f"{'class':<20} {'Dice':>8} {'IoU':>8}")
        lines += [f"{name[:20]:<20} {s.dice:8.4f} {s.iou:8.4f}" for name, s in c.per_class.items()]
        lines.append(f"argmax agreement {c.argmax_agreement:.5f}")
    if c.top1_agreement is not None:
        lines.append(f"top-1 agreement {c.top1_agreement:.5f}")
    lines.append(f"{c.metric_name}: {c.metric:.5f}")
    return "\n".join(lines)
