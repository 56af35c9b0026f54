"""The conversion report: what `edgert convert` did, as typed records.

`report.json` is `ConversionReport.to_json()`; `summary.txt` and the terminal show `summary_text(report)`; the card's
`conversion` note is `card_note(report)`. Every reader uses the fields, never string keys.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from converters.evaluate import Comparison
from converters.gate import Fallback, Sensitivity, SensitivityMethod
from converters.kinds import Precision as Precision  # defined with the other option enums, light to import
from converters.kinds import PruneMethod as PruneMethod  # defined with the other option enums, light to import
from converters.latency import LatencyReport
from converters.plan import Plan
from converters.prepare import PrepareReport
from converters.prune import PruneReport
from converters.sparsity import SparsityReport

if TYPE_CHECKING:  # options.py imports this module's enums; importing it here at run time would be circular
    from converters.options import ConvertOptions


@dataclass(frozen=True)
class ModelFile:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class OutputFile:
    sha256: str
    size_bytes: int
    size_ratio: float  # output size / input size


@dataclass(frozen=True)
class DataInfo:
    description: str
    samples: int
    representative: bool  # False for random tensors


@dataclass(frozen=True)
class KeptNode:
    """A node kept out of the lower precision, and why."""

    node: str
    op: str
    reason: str


@dataclass
class AccuracyReport:
    metric_name: str
    metric: float
    required: float
    before_fallback: float  # with every unit in the lower precision
    passed: bool
    evaluations: int
    comparison: Comparison
    sensitivity: list[Sensitivity] = field(default_factory=list)  # most sensitive first, when a search ran
    sensitivity_method: SensitivityMethod | None = None
    lower_bound: float = 0.0  # bootstrap lower bound of the worst class: what must clear `required`

    @property
    def tolerance(self) -> float:
        return 1.0 - self.required


@dataclass
class Fp16Report:
    nodes: int
    fp16_nodes: int
    fp32_nodes: list[KeptNode]
    range_margin: float
    ranges_measured: bool


@dataclass
class Int8Report:
    target: str
    method: str
    method_scores: dict[str, float]  # gate metric with every op INT8, per calibration method
    quantizable_ops: int
    int8_ops: int
    kept_higher_precision: list[KeptNode]
    fallback_precision: Precision
    trt_version: str
    fp16_nodes: int = 0  # with --fallback fp16: nodes outside INT8 that run in FP16
    mixed_metric: float | None = None  # with --fallback fp16: the gate metric of the mixed model


@dataclass(frozen=True)
class PruneAttempt:
    ratio: float  # fraction of the budget's measure (layer time or FLOPs) asked of the pruner
    metric: float  # the gate's metric of the pruned FP32 model against the original, on the search split
    lower_bound: float = 0.0  # its bootstrap lower bound


@dataclass
class PruneResult:
    method: PruneMethod
    requested: float  # fraction of the budget's measure requested (--prune-budget, or derived from target_ms)
    used: float  # the largest one tried that passed the gate (0.0: nothing pruned)
    repair: bool
    metric_name: str
    attempts: list[PruneAttempt] = field(default_factory=list)
    details: PruneReport | None = None  # of the pruning that was kept
    target_ms: float | None = None  # --prune-budget given as a latency: the model's time to reach
    fp32_ms: float | None = None  # the unpruned FP32 model's median time per run, measured here
    pruned_ms: float | None = None  # the kept pruned model's, timed in the same interleaved rounds
    note: str = ""  # why nothing was pruned, when nothing was


@dataclass
class VerifyReport:
    """The verdict on the model that ships, on the verify split: frames used for nothing else."""

    data: DataInfo
    comparison: Comparison  # its `verdict` holds every class, the worst and the bound
    required: float
    passed: bool
    reason: str = ""  # why not


@dataclass(frozen=True)
class ReplayCheck:
    """A `--plan` replay: the model the plan recorded against the one rebuilt."""

    planned_sha256: str | None
    rebuilt_sha256: str | None
    identical: bool


@dataclass
class ConversionReport:
    edgert_version: str
    input: ModelFile
    options: ConvertOptions
    precision: Precision
    prepare: PrepareReport
    data: DataInfo | None = None  # the search split: every choice was judged on it
    calibration_data: DataInfo | None = None  # INT8 ranges, pruning's statistics and refits
    verify_data: DataInfo | None = None  # the verdict's frames, used for nothing else
    prepare_check: Comparison | None = None  # prepared FP32 vs the original
    prune: PruneResult | None = None
    sparsity: SparsityReport | None = None  # --prune 2:4
    fp16: Fp16Report | None = None
    int8: Int8Report | None = None
    latency: LatencyReport | None = None  # INT8 for onnxruntime: per-layer cost and what left INT8 for speed
    accuracy: AccuracyReport | None = None
    fallback: list[Fallback] = field(default_factory=list)
    output: OutputFile | None = None
    passed: bool = False
    failure: str | None = None
    seconds: float = 0.0
    verify: VerifyReport | None = None
    plan: Plan | None = None  # every decision, for `edgert convert --plan`
    replay: ReplayCheck | None = None  # set when this conversion replayed a plan

    @property
    def requested(self) -> str:
        parts = [self.precision.value.upper()]
        if self.options.prune is not None:
            parts.insert(0, f"pruned ({self.options.prune.value})")
        return " ".join(parts)

    @property
    def shipped(self) -> str:
        """What the written model is, in a few words ('nothing' when the gate refused it)."""
        if not self.passed:
            return "nothing"
        parts = []
        if self.prune is not None and self.prune.details is not None and self.prune.used > 0:
            parts.append(f"pruned (FLOPs x{self.prune.details.flops_ratio:.2f})")
        if self.sparsity is not None and self.sparsity.applied:
            parts.append(f"2:4 on {len(self.sparsity.applied)} layers")
        if self.int8 is not None and self.int8.int8_ops > 0:
            mixed = "+FP16" if self.int8.fp16_nodes else ""
            parts.append(f"INT8{mixed} ({self.int8.int8_ops} of {self.int8.quantizable_ops} weighted ops)")
        elif self.fp16 is not None and self.fp16.fp16_nodes > 0:
            parts.append(f"FP16 ({self.fp16.fp16_nodes} of {self.fp16.nodes} nodes)")
        elif self.int8 is not None and self.int8.fp16_nodes > 0:
            parts.append(f"FP16 ({self.int8.fp16_nodes} nodes; no op in INT8)")
        else:
            parts.append("FP32")
        return " ".join(parts)

    @property
    def shipped_precision(self) -> str:
        """What the written graph computes in: int8 when any op is quantized (FP16 beside it or not), fp16 when any
        node is in half precision, else fp32."""
        if self.int8 is not None and self.int8.int8_ops > 0:
            return "int8"
        if (self.fp16 is not None and self.fp16.fp16_nodes > 0) or (self.int8 is not None and self.int8.fp16_nodes):
            return "fp16"
        return "fp32"

    @property
    def version_tags(self) -> tuple[str, ...]:
        """The semver build tags a converted package's version gains (`1.0.0+pruned.int8`): what was done to it."""
        tags = []
        if self.prune is not None and self.prune.details is not None and self.prune.used > 0:
            tags.append("pruned")
        if self.sparsity is not None and self.sparsity.applied:
            tags.append("sparse24")
        if self.shipped_precision != "fp32":
            tags.append(self.shipped_precision)
        return tuple(tags) or ("fp32",)

    def gate_text(self) -> str:
        """The verdict in one line, as the card records it."""
        verify = self.verify
        if verify is None:
            return "passed (lossless steps only: outputs checked against the original)" if self.passed else "failed"
        c = verify.comparison
        word = "passed" if verify.passed else "failed"
        return (f"{word}: {c.metric_name} {c.metric:.4f}, lower bound {c.lower_bound:.4f} >= "
                f"{verify.required:.4f}, on {c.samples} frames used for nothing else")  # fmt: skip

    def headline(self) -> str:
        """The first line: what was asked, what shipped, and why they differ."""
        why = ""
        if not self.passed:
            why = self.failure or "refused"
        elif self.int8 is not None and self.int8.int8_ops == 0:
            lat = self.latency
            if (
                lat is not None
                and lat.kept_fp32_for_speed
                and len(lat.kept_fp32_for_speed) == self.int8.quantizable_ops
            ):
                why = f"INT8 does not pay here (FP32 {lat.fp32_ms:.2f} ms, all-INT8 {lat.int8_ms:.2f} ms)"
            else:
                why = "no INT8 op keeps the gate"
        elif self.fp16 is not None and self.fp16.fp16_nodes == 0:
            why = "no node keeps the gate in FP16"
        elif self.prune is not None and self.prune.used == 0:
            why = f"nothing pruned: {self.prune.note or 'every ratio failed the gate'}"
        verdict = "PASSED" if self.passed else "FAILED"
        return f"edgert convert: {self.requested} requested -> {self.shipped} shipped: {verdict}" + (
            f" ({why})" if why else ""
        )

    def to_json(self) -> dict[str, Any]:
        value = _jsonable(self)
        assert isinstance(value, dict)
        return value


def _jsonable(value: object) -> object:
    """Dataclasses to objects (properties such as `tolerance` included), enums to their names, non-finite floats to
    strings: report.json stays strict JSON that any parser reads."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, AccuracyReport):
            out["tolerance"] = value.tolerance
        return out
    if isinstance(value, enum.Enum):
        return value.name.lower() if isinstance(value, enum.IntEnum) else value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def card_note(report: ConversionReport) -> dict[str, Any]:
    """The `conversion` entry written into the converted package's card."""
    note: dict[str, Any] = {
        "precision": report.shipped_precision,
        "requested": report.precision.value,
        "from_sha256": report.input.sha256,
        "gate": report.gate_text(),
        "tool": f"edgert {report.edgert_version}",
    }
    if report.prune is not None and report.prune.details is not None and report.prune.used > 0:
        d = report.prune.details
        note["pruned"] = {"method": report.prune.method.value, "flops_ratio": round(d.flops_ratio, 4),
                          "repair": report.prune.repair}  # fmt: skip
    if report.sparsity is not None and report.sparsity.applied and report.output is not None:
        sp = report.sparsity
        note["sparse_2_4"] = {"layers": list(sp.applied), "weights_fraction": round(sp.fraction, 4),
                              "axis": "input channels", "verified": sp.verified}  # fmt: skip
    if report.verify is not None:  # the verdict on frames used for nothing else (a replay reaches the same)
        c = report.verify.comparison
        note["accuracy_vs_original"] = {c.metric_name: round(c.metric, 6), "lower_bound": round(c.lower_bound, 6),
                                        "verify_frames": c.samples}  # fmt: skip
    elif report.accuracy is not None:
        note["accuracy_vs_original"] = {report.accuracy.metric_name: round(report.accuracy.metric, 6)}
    if report.fp16 is not None:
        note["fp32_nodes"] = len(report.fp16.fp32_nodes)
    if report.int8 is not None:
        q = report.int8
        note.update(target=q.target, calibration=q.method, int8_ops=q.int8_ops, fallback=q.fallback_precision.value)
    return note


def _counts(prep: PrepareReport) -> str:
    """What preparation changed, the stages that changed something only."""
    done = [
        (prep.constants_moved, "Constant nodes made initializers"),
        (prep.constants_folded, "constants folded"),
        (prep.batchnorms_folded, "BatchNorm folded"),
        (prep.hardswish_fused, "hard-swish fused"),
        (prep.affine_folded, "affine ops folded"),
        (prep.identities_removed, "pass-through nodes removed"),
        (prep.dead_nodes_removed, "dead nodes removed"),
    ]
    said = ", ".join(f"{what} {n}" for n, what in done if n)
    return f" ({said})" if said else " (nothing to change)"


def summary_text(report: ConversionReport) -> str:
    """The report as a few readable lines, for the terminal and summary.txt."""
    prep = report.prepare
    lines = [
        report.headline(),
        f"  input      {report.input.path} ({report.input.size_bytes / 1024:.1f} KiB)",
        f"  prepare    opset {prep.opset_before} -> {prep.opset_after}, nodes {prep.nodes_before} -> {prep.nodes_after}"
        + _counts(prep),
    ]
    if prep.shapes_fixed:
        lines.append(f"  shapes     fixed {prep.shapes_fixed}")
    if report.replay is not None:
        r = report.replay
        lines.append(f"  replay     plan's model {(r.planned_sha256 or '?')[:16]}..., rebuilt "
                     f"{(r.rebuilt_sha256 or 'nothing')[:16]}...: {'byte-identical' if r.identical else 'DIFFERENT'}")  # fmt: skip
    if report.calibration_data is not None:
        lines.append(f"  calibrate  {report.calibration_data.description}")
    if report.data is not None:
        lines.append(f"  search     {report.data.description}")
    if report.verify_data is not None:
        lines.append(f"  verify     {report.verify_data.description}")
    if report.prepare_check is not None:
        c = report.prepare_check
        worst = max((o.max_abs for o in c.outputs), default=0.0)
        lines.append(f"  check      prepared FP32 vs original: min cosine {c.metric:.7f}, max |diff| {worst:.3g}")
    if report.prune is not None:
        pr = report.prune
        tried = ", ".join(f"{a.ratio:.2f}: {a.metric:.4f}" for a in pr.attempts)
        if pr.details is not None and pr.used > 0:
            d = pr.details
            lines.append(f"  prune      {pr.method.value}, {pr.used:.2f} of {d.budget.value} removed"
                         f"{'' if pr.used == pr.requested else f' ({pr.requested:.2f} requested)'}, "
                         f"{'least-squares repair' if pr.repair else 'bias correction only'}: FLOPs x{d.flops_ratio:.2f}, "
                         f"params x{d.params_after / max(d.params_before, 1):.2f}; {pr.metric_name} tried {tried}")  # fmt: skip
            if pr.fp32_ms is not None and pr.pruned_ms is not None:
                lines.append(f"               measured here: {pr.fp32_ms:.2f} ms -> {pr.pruned_ms:.2f} ms per run "
                             f"({pr.fp32_ms / max(pr.pruned_ms, 1e-9):.2f}x)")  # fmt: skip
            if d.sensitivity is not None:
                sc = d.sensitivity
                lines.append(f"               sensitivity: {sc.families} layer families, {sc.whole_model_runs} "
                             f"whole-model runs of {sc.frames} frames, {sc.seconds:.1f} s")  # fmt: skip
            lines += [f"               {c.op} '{c.node}' {c.before} -> {c.after} channels" for c in d.layers]
        else:
            why = pr.note or f"every ratio failed the gate ({tried})"
            lines.append(f"  prune      {pr.method.value}: nothing pruned, {why}")
    if report.sparsity is not None:
        sp = report.sparsity
        lines.append(f"  2:4        {len(sp.applied)} of {len(sp.eligible)} eligible layers, {100 * sp.fraction:.0f}% of the "
                     f"weights in 2:4 groups (half of them zero){', pattern verified' if sp.verified else ''}; no speed "
                     "on this CPU (ONNX Runtime's kernels are dense): TensorRT runs them on sparse tensor cores")  # fmt: skip
        lines += [f"               kept dense: '{e.node}' (alone it costs {e.loss:.4f})" for e in sp.eligible
                  if e.node not in sp.applied and e.loss is not None]  # fmt: skip
        lines += [f"               not eligible: '{n}': {why}" for n, why in sp.skipped.items()]
    if report.fp16 is not None:
        f = report.fp16
        lines.append(f"  fp16       {f.fp16_nodes} of {f.nodes} nodes in FP16, {len(f.fp32_nodes)} kept FP32")
        lines += [f"               {k.op} '{k.node}': {k.reason}" for k in f.fp32_nodes]
    if report.int8 is not None:
        q = report.int8
        scores = ", ".join(f"{k} {v:.4f}" for k, v in q.method_scores.items())
        lines.append(f"  int8       {q.int8_ops} of {q.quantizable_ops} weighted ops INT8 ({q.target} placement), "
                     f"calibration {q.method} (gate scores: {scores})")  # fmt: skip
        fallback = q.fallback_precision.value.upper()
        lines += [f"               {k.op} '{k.node}' kept {fallback}: {k.reason}" for k in q.kept_higher_precision]
    if report.latency is not None:
        lat = report.latency
        tried = ", ".join(f"{t.int8_layers}: {t.ms:.2f} ms" for t in lat.trials)
        shipped = f", shipped {lat.final_ms:.2f} ms" if lat.final_ms is not None else ""
        lines.append(f"  latency    FP32 {lat.fp32_ms:.2f} ms, all-INT8 {lat.int8_ms:.2f} ms{shipped} per run here "
                     f"({report.options.cpu.describe()}); "
                     f"{len(lat.proposed)} layer(s) slower in INT8 than FP32, {len(lat.kept_fp32_for_speed)} kept FP32 "
                     f"(INT8 layers timed: {tried})")  # fmt: skip
        lines += [
            f"               {c.op} '{c.node}' not fused by ONNX Runtime: {c.reason}" for c in lat.layers if not c.fused
        ]
        best = lat.final_ms if lat.final_ms is not None else (lat.chosen_ms or lat.int8_ms)
        if best >= lat.fp32_ms * 0.98:
            lines.append(f"  speed      INT8 does not pay on this machine: best INT8 {best:.2f} ms vs FP32 {lat.fp32_ms:.2f} ms; "
                         "ship FP32 or FP16 here, or convert for a target with faster integer kernels")  # fmt: skip
    if report.accuracy is not None:
        a = report.accuracy
        lines.append(
            f"  search     {a.metric_name} {a.metric:.4f}, lower bound {a.lower_bound:.4f} (required >= "
            f"{a.required:.4f}; before fallback {a.before_fallback:.4f}; {a.evaluations} evaluations)"
        )
        if a.sensitivity and a.sensitivity_method is not None:
            top = ", ".join(f"{s.op} '{s.node}' {s.score:+.4f}" for s in a.sensitivity[:5])
            lines.append(f"  sensitive  ({a.sensitivity_method.value}) {top}")
    if report.verify is not None:
        v = report.verify
        c = v.comparison
        lines.append(f"  verdict    verify split, {c.samples} frames: {c.metric_name} {c.metric:.4f}, lower bound "
                     f"{c.lower_bound:.4f} (required >= {v.required:.4f}): {'PASSED' if v.passed else 'FAILED'}")  # fmt: skip
        if c.verdict is not None:
            for cl in c.verdict.classes:
                got = ", ".join(f"{k} {x:.4f}" for k, x in cl.measures.items())
                state = f"lower bound {cl.lower:.4f}" if cl.judged else f"not judged: {cl.note}"
                lines.append(f"               {cl.name}: {got} ({cl.support} {cl.unit}; {state})")
        if v.reason:
            lines.append(f"               {v.reason}")
    if report.output is not None:
        o = report.output
        lines.append(f"  output     {o.size_bytes / 1024:.1f} KiB ({o.size_ratio:.2f}x the input)")
    if report.failure:
        lines.append(f"  failure    {report.failure}")
    lines.append(f"  time       {report.seconds:.1f} s")
    return "\n".join(lines)
