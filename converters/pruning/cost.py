"""The budget's cost model and the allocation: families of groups (one layer's output channels, or the layers a
residual Add ties), each weighted op's cost as a function of its channel counts (FLOPs, in the CPU kernels' channel
blocks for a latency budget), and the greedy order that saves the most cost per unit of metric lost."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from converters.graph import initializers
from converters.kinds import Budget
from converters.pruning.groups import WEIGHTED, ChannelGroup, Role, int_attr, node_flops, tensor_shapes
from converters.pruning.options import PruneOptions


@dataclass
class Family:
    """The channel groups one set of weighted ops writes, least important first, and the kept counts tried."""

    producers: tuple[str, ...]
    groups: list[ChannelGroup]
    kept: list[int]  # kept channel counts of the steps, largest first
    per_group: Counter[str]  # channels one group has in each tensor (1, or more where a Concat reads it twice)
    losses: list[float] = field(default_factory=list)  # metric drop with only this family pruned, per step

    @property
    def size(self) -> int:
        return len(self.groups)

    def removed(self, step: int) -> int:
        return 0 if step < 0 else self.size - self.kept[step]


def families_of(groups: Sequence[ChannelGroup], options: PruneOptions) -> list[Family]:
    by_producers: dict[tuple[str, ...], list[ChannelGroup]] = defaultdict(list)
    for grp in groups:
        by_producers[tuple(sorted({u.node for u in grp.uses if u.role is Role.PRODUCER}))].append(grp)
    out = []
    for producers, members in by_producers.items():
        members.sort(key=lambda g: g.score)
        n, m = len(members), options.channel_multiple
        least = max(1, n - int(options.max_layer_ratio * n))
        kept = [k for k in range((n - 1) // m * m, 0, -m) if k >= least]
        if len(kept) > options.max_steps:
            picks = np.unique(np.round(np.linspace(0, len(kept) - 1, options.max_steps)).astype(int))
            kept = [kept[int(i)] for i in picks]
        if kept:
            out.append(Family(producers, members, kept, Counter(t for t, _ in members[0].members)))
    return out


@dataclass(frozen=True)
class CostOp:
    """A weighted op in the cost model: `base` (microseconds or FLOPs) scaled by how many channel blocks of its
    input `x` and output `y` remain."""

    name: str
    base: float
    x: str  # "" where the input's channels do not change the cost on their own (depthwise: tied to y)
    y: str
    cin: int
    cout: int
    block: int


def _blocks(channels: int, block: int) -> int:
    return -(-channels // block)


class CostModel:
    def __init__(self, ops: Sequence[CostOp]) -> None:
        self.ops = list(ops)
        self.by_tensor: dict[str, list[int]] = defaultdict(list)
        for i, op in enumerate(self.ops):
            for t in {op.x, op.y} - {""}:
                self.by_tensor[t].append(i)

    @staticmethod
    def op_cost(op: CostOp, removed: Callable[[str], int]) -> float:
        cost = op.base
        if op.x:
            cost *= _blocks(op.cin - removed(op.x), op.block) / _blocks(op.cin, op.block)
        if op.y:
            cost *= _blocks(op.cout - removed(op.y), op.block) / _blocks(op.cout, op.block)
        return cost

    def total(self, removed: Mapping[str, int]) -> float:
        return sum(self.op_cost(op, lambda t: removed.get(t, 0)) for op in self.ops)

    def touched(self, tensors: Sequence[str]) -> list[int]:
        return sorted({i for t in tensors for i in self.by_tensor.get(t, [])})


def cost_model(model: onnx.ModelProto, budget: Budget, block: int) -> CostModel:
    """Every weighted op's cost: its FLOPs, for a latency budget counted in whole channel blocks of the CPU's
    convolution kernels (44 of 48 channels cost what 48 do). A fixed model, not profiled per layer: per-layer
    times on a shared machine vary by more than the differences the allocation weighs, and made each run prune
    other channels."""
    shapes = tensor_shapes(model)
    inits = initializers(model.graph)
    nodes = [n for n in model.graph.node if n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] in inits]
    flops = {n.name: node_flops(n, shapes) for n in nodes if n.output[0] in shapes}
    ops = []
    for n in nodes:
        if n.name not in flops or len(shapes.get(n.input[0], [])) < 2 or len(shapes[n.output[0]]) < 2:
            continue
        x, y = n.input[0], n.output[0]
        depthwise = n.op_type == "Conv" and int_attr(n, "group", 1) > 1
        base = float(flops[n.name])
        conv_block = block if budget is Budget.LATENCY and n.op_type in ("Conv", "ConvTranspose") else 1
        ops.append(CostOp(n.name, base, "" if depthwise else x, y, shapes[x][1], shapes[y][1], conv_block))
    return CostModel(ops)


def allocate(families: Sequence[Family], cost: CostModel) -> list[tuple[int, int, float]]:
    """The allocation order: (family, step, cost left) — greedily the step, of any family and possibly skipping
    steps of it that save nothing (channel blocks), with the most cost saved per metric lost."""
    removed: Counter[str] = Counter()
    taken = [-1] * len(families)
    left = cost.total({})
    worst = max((loss for f in families for loss in f.losses), default=0.0)
    eps = 1e-3 * worst + 1e-9  # steps that lost nothing measurable still rank by what they save
    touched = [cost.touched(list(f.per_group)) for f in families]
    order: list[tuple[int, int, float]] = []
    while True:
        best: tuple[float, int, int, float] | None = None
        for fi, fam in enumerate(families):
            now_loss = fam.losses[taken[fi]] if taken[fi] >= 0 else 0.0
            before = sum(cost.op_cost(cost.ops[i], lambda t: removed[t]) for i in touched[fi])
            for step in range(taken[fi] + 1, len(fam.kept)):
                extra = fam.removed(step) - fam.removed(taken[fi])

                def after_step(t: str, extra: int = extra, fam: Family = fam) -> int:
                    return removed[t] + extra * fam.per_group.get(t, 0)

                saved = before - sum(cost.op_cost(cost.ops[i], after_step) for i in touched[fi])
                if saved <= 1e-9 * max(left, 1e-30):
                    continue
                score = saved / (max(fam.losses[step] - now_loss, 0.0) + eps)
                if best is None or score > best[0]:
                    best = (score, fi, step, saved)
        if best is None:
            return order
        _, fi, step, saved = best
        for t, k in families[fi].per_group.items():
            removed[t] += (families[fi].removed(step) - families[fi].removed(taken[fi])) * k
        taken[fi] = step
        left -= saved
        order.append((fi, step, left))
