"""Running ONNX models on evaluation feeds, measuring activation ranges, and comparing outputs.

The same figures serve `edgert compare` and the converters' accuracy gates: per output max/mean absolute error,
cosine similarity and PSNR, and the task's agreement metric from its head in `edge_runtime.core.tasks` (the decoder the
daemon runs). The gate's single figure is `Comparison.metric`, 1.0 meaning identical.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from converters.graph import ConversionError, copy_model, elem_types
from converters.judge import DEFAULT_TOLERANCE, JudgeOptions, Verdict, judge
from converters.kinds import NUMERIC as NUMERIC  # the CLI's name for no task, defined where parsing can import it
from edge_runtime.backends.sessions import CpuSetup, cpu_session, ort_error
from edge_runtime.core.package import ModelCard
from edge_runtime.core.protocol import Task
from edge_runtime.core.tasks import ClassAgreement, TaskHead, card_head

Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


def session(model: onnx.ModelProto, optimize: bool = True, cpu: CpuSetup = CpuSetup()) -> ort.InferenceSession:
    """A CPU session from the one factory (`edge_runtime.backends.sessions`); `optimize=False` keeps every Cast:
    the FP16 emulation depends on its rounding casts staying put."""
    try:
        return cpu_session(model.SerializeToString(), cpu, optimize=optimize)
    except Exception as exc:  # ORT's own exception types
        raise ConversionError(f"ONNX Runtime cannot load the model: {ort_error(exc)}") from None


def iter_model(
    model: onnx.ModelProto, feeds: Sequence[Feed], optimize: bool = True, cpu: CpuSetup = CpuSetup()
) -> Iterator[Outputs]:
    """Each feed's outputs, one frame at a time: for a probe whose outputs are every activation, memory then holds
    one frame's activations, not every frame's."""
    sess = session(model, optimize, cpu)
    names = [o.name for o in sess.get_outputs()]
    for feed in feeds:
        yield dict(zip(names, sess.run(names, feed)))


def run_model(
    model: onnx.ModelProto, feeds: Sequence[Feed], optimize: bool = True, cpu: CpuSetup = CpuSetup()
) -> list[Outputs]:
    return list(iter_model(model, feeds, optimize, cpu))


def with_float_activations_as_outputs(model: onnx.ModelProto, only: Collection[str] | None = None) -> onnx.ModelProto:
    """A copy whose outputs include every float node output (or those in `only`), to observe activations."""
    types = elem_types(model)
    probe = copy_model(model)
    outputs = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if only is not None and out not in only:
                continue
            if out and out not in outputs and types.get(out) == TensorProto.FLOAT:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
                outputs.add(out)
    return probe


def activation_ranges(model: onnx.ModelProto, feeds: Sequence[Feed]) -> dict[str, float]:
    """Max |x| over the feeds for every float tensor: inputs, initializers and every node output."""
    probe = with_float_activations_as_outputs(model)
    ranges: dict[str, float] = {}
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            ranges[t.name] = _max_abs(onnx.numpy_helper.to_array(t))
    for feed, result in zip(feeds, iter_model(probe, feeds, optimize=False)):  # a frame at a time
        for name, value in [*feed.items(), *result.items()]:
            if np.issubdtype(value.dtype, np.floating):
                ranges[name] = max(ranges.get(name, 0.0), _max_abs(value))
    return ranges


def _max_abs(a: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    if not np.isfinite(a).all():
        return math.inf
    return float(np.abs(a).max())


@dataclass(frozen=True)
class OutputStats:
    name: str
    max_abs: float
    mean_abs: float
    cosine: float
    psnr_db: float
    nonfinite: int  # NaN/inf values in the candidate


@dataclass
class Comparison:
    task: Task | None  # None: the outputs are compared as numbers only
    metric_name: str
    metric: float  # 1.0 = candidate agrees exactly with the reference
    outputs: list[OutputStats]
    per_class: dict[str, ClassAgreement] = field(default_factory=dict)
    pixel_agreement: float | None = None
    top1_agreement: float | None = None
    kl_divergence: float | None = None  # classification: mean KL(reference || candidate)
    f1: float | None = None  # detection: F1 at IoU 0.5 against the reference's boxes
    reference_boxes: int | None = None  # detection
    samples: int = 0
    verdict: Verdict | None = None  # per class, the worst class and its lower bound: what the gate decides on
    summary_name: str = ""  # the task's whole-set figure (mean foreground Dice, mAP, top-1), for reference
    summary: float | None = None

    @property
    def lower_bound(self) -> float:
        """The bootstrap lower bound of the worst class (the metric itself when no verdict was taken)."""
        return self.verdict.lower_bound if self.verdict is not None else self.metric

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "task": self.task.label if self.task else NUMERIC}


def _numeric(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputStats:
    r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    nonfinite = int((~np.isfinite(c)).sum())
    if nonfinite:
        return OutputStats(name, math.inf, math.inf, math.nan, -math.inf, nonfinite)
    diff = np.abs(r - c)
    denom = float(np.linalg.norm(r) * np.linalg.norm(c))
    cosine = float(r @ c / denom) if denom else (1.0 if not diff.any() else 0.0)
    mse = float((diff**2).mean()) if diff.size else 0.0
    peak = float(np.abs(r).max()) if r.size else 0.0
    psnr = math.inf if mse == 0 else (10 * math.log10(peak**2 / mse) if peak else -math.inf)
    return OutputStats(name, float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0, cosine, psnr, 0)


def compare(
    reference: Sequence[Outputs],
    candidate: Sequence[Outputs],
    head: TaskHead | None = None,
    judging: JudgeOptions = JudgeOptions(),
) -> Comparison:
    """Compare two models' outputs on the same feeds: every output numerically, the task's whole-set agreement
    with a task `head` (the one the daemon decodes with), and the verdict (`converters.judge`): per class, the
    worst class and its bootstrap lower bound. The comparison's metric is the worst class (without a head: the
    worst output's cosine similarity)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"need the same non-zero number of runs, got {len(reference)} and {len(candidate)}")
    names = list(reference[0])
    missing = [n for n in names if n not in candidate[0]]
    if missing:
        raise ConversionError(f"candidate lacks output(s) {missing}; it has {list(candidate[0])}")
    stats = [
        _numeric(
            n, np.concatenate([r[n].ravel() for r in reference]), np.concatenate([c[n].ravel() for c in candidate])
        )
        for n in names
    ]
    numeric_metric = min((s.cosine for s in stats), default=1.0)
    result = Comparison(
        None,
        "min cosine similarity",
        numeric_metric if math.isfinite(numeric_metric) else 0.0,
        stats,
        samples=len(reference),
    )
    if head is not None:
        absent = [n for n in head.outputs if n not in reference[0]]
        if absent:
            raise ConversionError(f"the task reads output(s) {absent}; the model has {names}")
        try:
            agreement = head.agreement(reference, candidate)
        except ValueError as exc:
            raise ConversionError(str(exc)) from None
        result.task = head.task
        result.summary_name, result.summary = agreement.metric_name, agreement.metric
        result.per_class = agreement.per_class
        result.pixel_agreement, result.top1_agreement = agreement.pixel_agreement, agreement.top1_agreement
        result.kl_divergence, result.f1 = agreement.kl_divergence, agreement.f1
        result.reference_boxes = agreement.reference_boxes
    result.verdict = judge(head, reference, candidate, judging)
    result.metric_name, result.metric = result.verdict.metric_name, result.verdict.metric
    if any(s.nonfinite for s in stats):
        result.metric = result.verdict.lower_bound = 0.0  # NaN or inf anywhere fails whatever the task says
    return result


NUMERIC_TOLERANCE = DEFAULT_TOLERANCE[NUMERIC]  # allowed shortfall of the worst output's cosine without a task


def default_tolerance(head: TaskHead | None) -> float:
    """Allowed shortfall of the worst class's lower bound below 1.0, per task."""
    return DEFAULT_TOLERANCE[head.task.label if head is not None else NUMERIC]


def head_of(card: ModelCard | None) -> TaskHead | None:
    """The task head a card describes (the daemon's decoder); None (numeric comparison: min cosine over the
    outputs) without a card."""
    if card is None:
        return None
    return card_head(card)
