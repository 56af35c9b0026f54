"""Running ONNX models on evaluation feeds, measuring activation ranges, and comparing outputs.

The same figures serve `edgert compare` and the converters' accuracy gates: per output max/mean absolute error,
cosine similarity and PSNR; per task Dice/IoU per class and argmax agreement (segmentation) or top-1 agreement
(classification). The gate's single figure is `Comparison.metric`, 1.0 meaning identical.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from converters.graph import ConversionError, copy_model, elem_types

Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


def session(model: onnx.ModelProto, optimize: bool = True, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not optimize:  # keeps every Cast: the FP16 emulation depends on its rounding casts staying put
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types
        raise ConversionError(f"ONNX Runtime cannot load the model: {str(exc)[:300]}") from None


def run_model(model: onnx.ModelProto, feeds: Sequence[Feed], optimize: bool = True) -> list[Outputs]:
    sess = session(model, optimize)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, feed))) for feed in feeds]


def with_float_activations_as_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose outputs include every float node output, to observe activations on real data."""
    types = elem_types(model)
    probe = copy_model(model)
    outputs = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
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
    for feed, result in zip(feeds, run_model(probe, feeds, optimize=False)):
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


@dataclass(frozen=True)
class ClassStats:
    dice: float
    iou: float


@dataclass
class Comparison:
    task: str
    metric_name: str
    metric: float  # 1.0 = candidate agrees exactly with the reference
    outputs: list[OutputStats]
    per_class: dict[str, ClassStats] = field(default_factory=dict)
    argmax_agreement: float | None = None
    top1_agreement: float | None = None
    samples: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
    task: str = "numeric",
    output: str | None = None,
    labels: Sequence[str] | None = None,
) -> Comparison:
    """Compare two models' outputs on the same feeds. `task` is segmentation, classification or numeric;
    `output` names the output the task reads (default: the first)."""
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
        task,
        "min cosine similarity",
        numeric_metric if math.isfinite(numeric_metric) else 0.0,
        stats,
        samples=len(reference),
    )
    head = output or names[0]
    if task == "segmentation":
        ref_lab = np.concatenate([_labels(r[head]).ravel() for r in reference])
        cand_lab = np.concatenate([_labels(c[head]).ravel() for c in candidate])
        classes = int(reference[0][head].shape[1]) if reference[0][head].shape[1] > 1 else 2
        names_ = list(labels) if labels and len(labels) == classes else [str(i) for i in range(classes)]
        dice_fg = []
        for k in range(classes):
            p, t = cand_lab == k, ref_lab == k
            inter, total, union = int((p & t).sum()), int(p.sum() + t.sum()), int((p | t).sum())
            result.per_class[names_[k]] = ClassStats(
                2 * inter / total if total else 1.0, inter / union if union else 1.0
            )
            if k and total:
                dice_fg.append(2 * inter / total)
        result.argmax_agreement = float((ref_lab == cand_lab).mean())
        result.metric_name = "mean foreground Dice vs reference"
        result.metric = float(np.mean(dice_fg)) if dice_fg else result.argmax_agreement
    elif task == "classification":
        ref_top = np.array([int(np.argmax(r[head])) for r in reference])
        cand_top = np.array([int(np.argmax(c[head])) for c in candidate])
        result.top1_agreement = float((ref_top == cand_top).mean())
        result.metric_name, result.metric = "top-1 agreement", result.top1_agreement
    if any(s.nonfinite for s in stats):
        result.metric = 0.0  # NaN or inf anywhere is a failure whatever the task metric says
    return result


def _labels(logits: np.ndarray) -> np.ndarray:
    """Class map from [N, C, H, W] logits (C == 1: threshold at 0, as sigmoid > 0.5)."""
    logits = np.nan_to_num(logits, nan=-np.inf)
    return (logits[:, 0] > 0).astype(np.uint8) if logits.shape[1] == 1 else logits.argmax(axis=1).astype(np.uint8)


DEFAULT_TOLERANCE: Mapping[str, float] = {"segmentation": 0.01, "classification": 0.01, "numeric": 1e-3}
