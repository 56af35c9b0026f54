"""`edgert compare`: run two models on the same inputs and report how far the candidate is from the reference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from calibration.sources import Sampling
from converters.convert import default_data, load_model
from converters.data import Card, EvalData, load_feeds
from converters.evaluate import Comparison, Outputs, compare, default_tolerance, head_of, run_model
from converters.fp16 import emulate_fp16
from converters.graph import ConversionError, copy_model, real_inputs
from converters.prepare import PrepareReport, fix_input_shapes
from edge_runtime.core.package import ModelCard
from edge_runtime.core.protocol import Task
from edge_runtime.core.tasks import TaskHead, default_head

DEFAULT_SAMPLING = Sampling()


@dataclass(frozen=True)
class ModelComparison:
    comparison: Comparison
    data: EvalData
    task: Task | None  # None: outputs compared as numbers only
    emulated_fp16: bool  # the candidate's FP16 rounding was emulated
    default_tolerance: float  # the task's, as `convert`'s gate uses it when no --tolerance is given

    def verdict(self, tolerance: float | None = None) -> tuple[bool, str]:
        """(passed, one line) by the gate's rule: the worst class's lower bound against 1 - tolerance."""
        tol = self.default_tolerance if tolerance is None else tolerance
        c = self.comparison
        required = 1.0 - tol
        passed = c.lower_bound >= required
        said = "" if tolerance is not None else " (the task's default tolerance; --tolerance sets it)"
        return passed, (
            f"edgert compare: {'PASSED' if passed else 'FAILED'}: {c.metric_name} {c.metric:.5f}, lower bound "
            f"{c.lower_bound:.5f} {'>=' if passed else '<'} {required:.5f} required{said}"
        )


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
    data: str | None = None,
    sampling: Sampling = DEFAULT_SAMPLING,
    card_path: str | Path | None = None,
    task: Task | None = None,
    input_shape: Sequence[int] | None = None,
    emulate: bool = True,
    numeric_only: bool = False,
) -> ModelComparison:
    """Compare a candidate with a reference. Each is an ONNX file or a model package. The card (preprocessing
    and task) comes from `card_path`, else the reference's package, else the candidate's. An FP16 candidate is
    run through the FP16 emulation unless `emulate` is False: ONNX Runtime's CPU provider computes most FP16 ops
    in FP32, so running the FP16 file directly would understate its error.

    The task's agreement metric is computed with the head the daemon decodes with (`edge_runtime.core.tasks`); `task`
    overrides the card's task, and `numeric_only` compares the outputs as numbers only."""
    ref, ref_card, _, _ = load_model(Path(reference), Path(card_path) if card_path else None)
    cand, cand_card, _, _ = load_model(Path(candidate), None)
    card: Card | None = ref_card or cand_card
    feed_model = ref
    if input_shape is not None:
        feed_model = copy_model(ref)
        fix_input_shapes(feed_model, {real_inputs(feed_model.graph)[0].name: list(input_shape)}, PrepareReport())
    eval_data = load_feeds(data or default_data(card), feed_model, card, sampling)  # as `convert` and `bench`
    emulated = emulate and has_fp16(cand)
    ref_out = run_model(ref, eval_data.feeds)
    cand_out = (
        run_model(emulate_fp16(cand), eval_data.feeds, optimize=False) if emulated else run_model(cand, eval_data.feeds)
    )
    head = None if numeric_only else _head(card, task, ref_out[0])
    result = compare(ref_out, cand_out, head)
    return ModelComparison(result, eval_data, result.task, emulated, default_tolerance(head))


def _head(card: Card | None, task: Task | None, outputs: Outputs) -> TaskHead | None:
    card = card if isinstance(card, ModelCard) else None  # a raw card gives preprocessing only
    try:
        if card is not None and task in (None, card.task):
            return head_of(card)  # as the gate judges it: a task without a decoder compares numbers
        if task is None:
            return None
        name = card.output.name if card is not None else next(iter(outputs))
        channels = int(outputs[name].shape[1]) if outputs[name].ndim > 1 else int(outputs[name].size)
        return default_head(task, name, channels)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None


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
        lines.append(f"{'class':<20} {'Dice':>8} {'IoU':>8} {'ref px':>10} {'cand px':>10}")
        lines += [
            f"{name[:20]:<20} {s.dice:8.4f} {s.iou:8.4f} {s.reference_pixels:>10} {s.candidate_pixels:>10}"
            + ("  (absent from the reference)" if not s.reference_pixels else "")
            for name, s in c.per_class.items()
        ]
        lines.append(f"pixel agreement {c.pixel_agreement:.5f}")
    if c.top1_agreement is not None:
        lines.append(f"top-1 agreement {c.top1_agreement:.5f}")
    if c.kl_divergence is not None:
        lines.append(f"mean KL divergence {c.kl_divergence:.5g}")
    if c.f1 is not None:
        lines.append(f"F1 at IoU 0.5 {c.f1:.5f} ({c.reference_boxes} reference boxes)")
    if c.summary is not None:
        lines.append(f"{c.summary_name}: {c.summary:.5f}")
    if c.verdict is not None:
        v = c.verdict
        lines.append(f"{'per class':<20} {'worst measure':>13} {'lower bound':>12} {'support':>12}")
        for cl in v.classes:
            state = "" if cl.judged else f"  (not judged: {cl.note})"
            lines.append(
                f"{cl.name[:20]:<20} {cl.metric:13.4f} {cl.lower:12.4f} {f'{cl.support} {cl.unit}':>12}{state}"
            )
    bound = f", lower bound {c.lower_bound:.5f}" if c.verdict is not None else ""
    lines.append(f"{c.metric_name}: {c.metric:.5f}{bound}")
    return "\n".join(lines)
