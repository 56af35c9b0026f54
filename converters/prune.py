"""Structured channel pruning of a prepared ONNX graph, allocated by measured sensitivity and repaired by least
squares on calibration data.

The parts live in `converters/pruning/`: `groups.py` (steps 1-2), `sensitivity.py` (3), `cost.py` (4), `repair.py`
(5), `options.py` (options and report); this module plans and applies.

No retraining: the integrator has an ONNX file and frames, not a training pipeline. The steps:

1. **Channel groups** (`channel_groups`). Channels that must go together are found by union-find over
   (tensor, channel) pairs: ops that keep channels (activations, pooling, Resize, BatchNormalization, depthwise
   convs) tie a channel of their input to the same channel of their output; element-wise ops (residual Add, the
   Mul of squeeze-and-excitation) tie their inputs' channels together; Concat ties input channel c to output
   channel offset + c. A group is prunable when a weighted op produces it (a Conv or ConvTranspose output row)
   and nothing in it is blocked: graph inputs and outputs, grouped convs that are not depthwise, reshapes that
   mix channels and ops this module does not know keep every channel they touch, and the report says which.
   Groups written by the same weighted ops form a **family** (one layer's output channels, or the layers a
   residual Add ties together).
2. **Importance** (`importance`) orders the channels within a family: removing channel c of a consumer's input
   removes W[:, c] * x_c from its output, whose expected energy ||W[:, c]||^2 E[x_c^2], as a fraction of what
   all the consumer's inputs contribute, is the channel's score (summed over its consumers).
3. **Sensitivity** (`plan_pruning`). Each family is pruned alone, in steps that keep a multiple of
   `channel_multiple` channels (a CPU convolution works in blocks of channels: 44 of 48 cost what 48 do), its
   consumers repaired, and the task metric measured against the unpruned model on the calibration frames.
4. **Allocation**. A cost model gives each weighted op's share of the budget as a function of its input and
   output channel counts: multiply-accumulates counted in the channel blocks the CPU kernel runs (latency), or
   plain multiply-accumulates (FLOPs). The model is fixed, never profiled per layer, so the same model and
   frames always prune the same channels. Greedily, the step that saves the most cost per unit of metric lost goes next;
   the resulting order is nested, so a smaller ratio is a prefix of a larger one and the gate's back-off is a
   shorter prefix.
5. **Removal and repair** (`prune_channels`). Rows, columns and per-channel constants are sliced out; consumers
   that lost input channels get the removed channels' mean contribution added to their bias. Then every Conv
   downstream of a change is refitted in graph order, by ridge least squares, on the *pruned* model's inputs
   to match the *unpruned* model's outputs, so that each layer also compensates what the layers before it lost
   (channel pruning with reconstruction, He et al. 2017).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import onnx

from calibration.errors import OptionError
from converters.evaluate import Feed
from converters.graph import ConversionError, copy_model
from converters.kinds import Budget
from converters.latency import layer_times
from converters.progress import Progress
from converters.pruning.cost import Family, allocate, cost_model, families_of
from converters.pruning.groups import (
    WEIGHTED,
    ChannelGroup,
    ChannelStats,
    channel_groups,
    channel_stats,
    consumer_inputs,
    conv_flops,
    importance,
)
from converters.pruning.options import (
    FamilyStep,
    LayerChannels,
    PruneOptions,
    PruneReport,
    SensitivityCost,
    cpu_channel_block,
)
from converters.pruning.repair import refit_downstream, remove_groups
from converters.pruning.sensitivity import measure_sensitivity
from edge_runtime.core.tasks import TaskHead


@dataclass
class PrunePlan:
    """What pruning needs that does not depend on the ratio: the prunable groups and families, their measured
    sensitivity, the cost model and the allocation order. Plan once, then `prune_channels` at as many ratios as
    the gate asks for."""

    options: PruneOptions  # its ratio is not part of the plan
    groups: list[ChannelGroup]
    blocked: list[str]
    families: list[Family]
    stats: dict[str, ChannelStats]
    whole: float  # the budget's modelled measure over every weighted op (FLOPs, in channel blocks for latency)
    order: list[tuple[int, int, float]]  # (family, step, measure left), the allocation order
    flops: int
    params: int
    measured_us: float = 0.0  # latency budget: the weighted ops' profiled time here, to express the model in us
    sensitivity: SensitivityCost = field(default_factory=SensitivityCost)

    def selection(self, ratio: float) -> tuple[list[ChannelGroup], list[FamilyStep]]:
        """The groups the shortest prefix of the order that removes `ratio` of the measure takes, and its steps."""
        if ratio <= 0.0:
            return [], []
        taken: dict[int, int] = {}
        steps: list[FamilyStep] = []
        for fi, step, left in self.order:
            taken[fi] = step
            fam = self.families[fi]
            steps.append(FamilyStep(fam.producers, fam.size, fam.kept[step], round(fam.losses[step], 6), left))
            if self.whole - left >= ratio * self.whole:
                break
        chosen = [g for fi, step in taken.items() for g in self.families[fi].groups[: self.families[fi].removed(step)]]
        return chosen, steps


def plan_pruning(
    model: onnx.ModelProto,
    feeds: Sequence[Feed],
    options: PruneOptions = PruneOptions(),
    head: TaskHead | None = None,
    say: Progress | None = None,
) -> PrunePlan:
    """Groups, families, importance, sensitivity (the task metric through `head`, else output cosine), the cost
    model and the allocation order, for pruning `model` at any ratio with these options."""
    tell: Progress = say or (lambda _m: None)
    flops, params = conv_flops(model)
    groups, blocked = channel_groups(model)
    plan = PrunePlan(options, groups, blocked, [], {}, float(flops), [], flops, params)
    if not groups:
        return plan
    tell(f"  measuring channel importance on {len(feeds)} frames ({len(groups)} prunable channel groups)")
    plan.stats = channel_stats(model, feeds, set(consumer_inputs(model, groups).values()))
    importance(model, groups, plan.stats)
    plan.families = families_of(groups, options)
    block = 1
    if options.budget is Budget.LATENCY:
        units = [n.name for n in model.graph.node if n.op_type in WEIGHTED]
        tell(f"  profiling {len(units)} weighted layers for a latency budget (their total only: the allocation")
        tell("  uses a fixed cost model, so timing noise cannot change what is pruned)")
        plan.measured_us = sum(layer_times(model, units, feeds[:2], runs=5, cpu=options.cpu).values())
        block = options.block or cpu_channel_block()
    cost = cost_model(model, options.budget, block)
    plan.whole = cost.total({})
    plan.sensitivity = measure_sensitivity(model, plan.families, plan.stats, feeds, options, head, tell)
    plan.order = allocate(plan.families, cost)
    return plan


def prune_channels(
    model: onnx.ModelProto,
    feeds: Sequence[Feed],
    options: PruneOptions = PruneOptions(),
    say: Progress | None = None,
    plan: PrunePlan | None = None,
    head: TaskHead | None = None,
) -> tuple[onnx.ModelProto, PruneReport]:
    """A copy of the prepared `model` with about `options.ratio` of the budget's measure (time or FLOPs) removed,
    and what was done. `plan` (from `plan_pruning` on the same model and feeds, with the same options but the
    ratio) saves re-measuring."""
    tell: Progress = say or (lambda _m: None)
    report = PruneReport(budget=options.budget)
    if plan is None and options.ratio == 0.0:  # nothing to remove: no need to measure anything
        groups, report.blocked = channel_groups(model)
        report.groups = len(groups)
        report.flops_before, report.params_before = report.flops_after, report.params_after = conv_flops(model)
        return copy_model(model), report
    if plan is None:
        plan = plan_pruning(model, feeds, options, head, say)
    elif replace(plan.options, ratio=options.ratio) != options:
        raise OptionError(f"the plan was made with other options ({plan.options}), not {options}")
    report.flops_before, report.params_before = plan.flops, plan.params
    report.groups, report.families, report.blocked = len(plan.groups), len(plan.families), plan.blocked
    report.sensitivity = plan.sensitivity
    chosen, report.steps = plan.selection(options.ratio)
    if options.budget is Budget.LATENCY:
        removed = (plan.whole - report.steps[-1].cost_left) / max(plan.whole, 1e-30) if report.steps else 0.0
        report.layer_us_before = round(plan.measured_us, 1)
        report.layer_us_removed = round(removed * plan.measured_us, 1)
    return _apply(model, chosen, plan.stats, feeds, options, tell, report)


def group_key(group: ChannelGroup) -> tuple[str, int]:
    """A channel group's name in a plan: its first (tensor, channel), found again from the graph alone."""
    return group.members[0]


def prune_groups(
    model: onnx.ModelProto,
    feeds: Sequence[Feed],
    keys: Sequence[tuple[str, int]],
    options: PruneOptions,
    say: Progress | None = None,
) -> tuple[onnx.ModelProto, PruneReport]:
    """A plan's pruning replayed: the channel groups named by `keys` (`group_key`) removed, with the same
    statistics and refits as `prune_channels` computes on the same frames, and no measurement of time or
    sensitivity."""
    tell: Progress = say or (lambda _m: None)
    groups, blocked = channel_groups(model)
    by_key = {group_key(g): g for g in groups}
    missing = [k for k in keys if (k[0], k[1]) not in by_key]
    if missing:
        raise ConversionError(
            f"the plan removes channel groups this model does not have, e.g. channel {missing[0][1]} of '{missing[0][0]}'"
        )
    report = PruneReport(budget=options.budget, groups=len(groups), blocked=blocked)
    report.flops_before, report.params_before = conv_flops(model)
    stats = channel_stats(model, feeds, set(consumer_inputs(model, groups).values()))
    return _apply(model, [by_key[(k[0], k[1])] for k in keys], stats, feeds, options, tell, report)


def _apply(
    model: onnx.ModelProto,
    chosen: Sequence[ChannelGroup],
    stats: Mapping[str, ChannelStats],
    feeds: Sequence[Feed],
    options: PruneOptions,
    tell: Progress,
    report: PruneReport,
) -> tuple[onnx.ModelProto, PruneReport]:
    """Removes `chosen`, refits, checks the graph; fills the report's removal figures."""
    report.groups_removed = len(chosen)
    if not chosen:
        report.flops_after, report.params_after = report.flops_before, report.params_before
        return copy_model(model), report
    removal = remove_groups(model, chosen, stats)
    work, report.layers = removal.model, removal.layers
    if options.repair:
        tell(f"  refitting the layers after the pruned channels on {len(feeds)} frames")
        report.repaired = refit_downstream(model, work, removal.drop_tensor, feeds, options, tell)
    try:
        work = onnx.shape_inference.infer_shapes(work, strict_mode=True, data_prop=True)
        onnx.checker.check_model(work, full_check=True)
    except Exception as exc:  # onnx's checker and inference errors
        raise ConversionError(f"the pruned graph is not valid: {str(exc)[:300]}") from None
    report.flops_after, report.params_after = conv_flops(work)
    return work, report


__all__ = [
    "Budget",
    "ChannelGroup",
    "FamilyStep",
    "LayerChannels",
    "PruneOptions",
    "PrunePlan",
    "PruneReport",
    "channel_groups",
    "conv_flops",
    "cpu_channel_block",
    "group_key",
    "importance",
    "plan_pruning",
    "prune_channels",
    "prune_groups",
]
