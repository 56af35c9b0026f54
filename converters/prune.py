"""Structured channel pruning of a prepared ONNX graph, allocated by measured sensitivity and repaired by least
squares on calibration data.

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

import math
import os
import platform
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import numpy_helper

from calibration.errors import OptionError
from converters.evaluate import Feed, Outputs, compare, run_model
from converters.graph import (
    ConversionError,
    copy_model,
    drop_unused_initializers,
    initializers,
    real_inputs,
    replace_initializer,
)
from converters.kinds import Budget as Budget  # defined with the other option enums, light to import
from converters.latency import layer_times
from converters.patches import frames, im2col, plain_conv, sample_positions
from converters.progress import Eta, Progress
from edge_runtime.backends.sessions import CpuSetup
from edge_runtime.core.tasks import TaskHead

# Ops that apply to each channel independently: channel c of input 0 is channel c of output 0.
_PER_CHANNEL = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Identity", "Dropout",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample",
    "BatchNormalization", "InstanceNormalization", "Cast",
}  # fmt: skip
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"}
_FLATTEN = {"Flatten", "Reshape", "Squeeze"}
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def cpu_channel_block() -> int:
    """The channel block ONNX Runtime's CPU convolutions work in here (its NCHWc layout): 16 with AVX-512, 8 with
    AVX2, else 1 (no blocked layout: time follows the channel count)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return 1
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return 8 if os.name == "nt" else 1
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = 0.3  # fraction of the budget's measure to remove
    budget: Budget = Budget.LATENCY
    repair: bool = True  # least-squares refits (else bias correction only), in the sensitivity steps too
    max_layer_ratio: float = 0.75  # no family loses more than this fraction of its channels
    ridge: float = 1e-2  # least-squares regularisation towards the current weights, relative to mean diag(X^T X)
    positions: int = 512  # output positions sampled per frame for the least-squares fits
    channel_multiple: int = 16  # kept channel counts are multiples of this (or unchanged): ORT's CPU convs work
    # in blocks of 16 channels on AVX-512 (8 on AVX2) and TensorRT's tensor cores in multiples of 8, so 44 of 48
    # channels run as slowly as 48 (measured: 4.8 ms for 36-48 channels, 3.7 ms for 32, here)
    max_steps: int = 8  # sensitivity is measured at no more than this many kept counts per family
    block: int = 0  # the kernels' channel block in the latency cost model; 0: this CPU's (`cpu_channel_block`)
    anchors: int = 2  # steps per family whose loss the whole model measures; the others are interpolated
    time_budget_s: float | None = 900.0  # refuse (before it starts) a sensitivity pass estimated to take longer
    cpu: CpuSetup = CpuSetup()  # how the layers' time is measured (reported, never allocated on)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise OptionError(f"prune ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise OptionError(f"max layer ratio must be in (0, 1), got {self.max_layer_ratio}")
        if self.channel_multiple < 1 or self.max_steps < 1 or self.block < 0:
            raise OptionError("channel multiple and max steps must be >= 1, block >= 0")
        if self.anchors < 1 or (self.time_budget_s is not None and not self.time_budget_s > 0):
            raise OptionError("anchors must be >= 1 and the sensitivity time budget > 0 s")


@dataclass(frozen=True)
class LayerChannels:
    node: str
    op: str
    before: int  # output channels
    after: int


@dataclass(frozen=True)
class FamilyStep:
    """One step of the allocation: a family's producers, the channels it keeps, what pruning it alone cost."""

    producers: tuple[str, ...]
    before: int  # channels of the family
    after: int
    loss: float  # drop of the task metric with only this family pruned to `after`, on the calibration frames
    cost_left: float  # the budget's modelled measure after this step and every step before it


@dataclass
class SensitivityCost:
    """What the sensitivity pass cost: it grows with the layer families (one activation pass and `anchors`
    whole-model evaluations each), not with families x steps x frames."""

    families: int = 0
    steps: int = 0  # kept counts whose loss is known (measured at anchors, interpolated between them)
    whole_model_runs: int = 0  # candidate evaluations over every sensitivity frame
    activation_passes: int = 0  # passes over the frames for the consumers' normal equations (families share them)
    frames: int = 0
    estimated_s: float = field(default=0.0, compare=False)  # what the budget was checked against, before the pass
    seconds: float = field(default=0.0, compare=False)  # measured: not part of what the pass decided


@dataclass
class PruneReport:
    budget: Budget = Budget.LATENCY
    flops_before: int = 0
    flops_after: int = 0
    layer_us_before: float = 0.0  # profiled time of the weighted ops (latency budget)
    layer_us_removed: float = 0.0  # the share the cost model says the selection removes, of that time
    params_before: int = 0
    params_after: int = 0
    groups: int = 0  # prunable channel groups found
    families: int = 0  # of them, by producing layers
    groups_removed: int = 0
    blocked: list[str] = field(default_factory=list)  # why some channels cannot be removed (one line per cause)
    layers: list[LayerChannels] = field(default_factory=list)  # weighted ops whose output channels changed
    steps: list[FamilyStep] = field(default_factory=list)  # the allocation's steps taken, in order
    repaired: list[str] = field(default_factory=list)  # convs refitted by least squares
    sensitivity: SensitivityCost | None = None  # what measuring each family's loss cost

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / self.flops_before if self.flops_before else 1.0


# ------------------------------------------------------------------------------------------------- shapes


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    g = inferred.graph
    out: dict[str, list[int]] = {}
    for v in [*g.input, *g.value_info, *g.output]:
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[v.name] = [d.dim_value for d in dims]
    for t in g.initializer:
        out[t.name] = list(t.dims)
    return out


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def conv_flops(model: onnx.ModelProto) -> tuple[int, int]:
    """(multiply-accumulates x 2 of every Conv, ConvTranspose, Gemm and MatMul with a constant weight, their
    parameter count): what pruning reduces."""
    shapes, inits = _shapes(model), initializers(model.graph)
    flops = params = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if node.input[1] not in inits:
            continue
        w = shapes[node.input[1]]
        params += math.prod(w) + (math.prod(shapes[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0)
        if node.output[0] in shapes:
            flops += _node_flops(node, shapes)
    return flops, params


# ------------------------------------------------------------------------------------------- channel groups


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(self, x: tuple[str, int]) -> tuple[str, int]:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


@dataclass(frozen=True)
class _Use:
    """A weighted op's use of one channel: an output channel it writes (`producer`), an input channel it reads
    (`consumer`: Conv weight axis 1; `consumer_convt`: ConvTranspose axis 0; `consumer_t`: Gemm with transB,
    axis 1; `consumer_row`: MatMul or Gemm, axis 0), or a channel it carries through (`depthwise`)."""

    node: str
    role: str
    index: int


@dataclass
class ChannelGroup:
    members: list[tuple[str, int]]  # (tensor, channel)
    uses: list[_Use]
    score: float = 0.0
    cost: float = 0.0  # what removing it saves in the budget's measure (FLOPs, or microseconds)


def channel_groups(model: onnx.ModelProto) -> tuple[list[ChannelGroup], list[str]]:
    """Prunable channel groups of a prepared model, and why the other channels are not prunable."""
    g = model.graph
    shapes, inits = _shapes(model), initializers(g)
    uf = _UnionFind()
    blocked: set[tuple[str, int]] = set()
    reasons: dict[str, str] = {}
    uses: dict[tuple[str, int], list[_Use]] = defaultdict(list)

    def channels(t: str, axis: int = 1) -> int:
        s = shapes.get(t)
        return s[axis] if s is not None and len(s) > axis else 0

    def block(t: str, why: str) -> None:
        if t in inits or not t:
            return
        n = channels(t)
        for c in range(n):
            blocked.add((t, c))
            uf.find((t, c))
        reasons.setdefault(why, t)

    def tie(a: str, b: str) -> None:
        n = channels(a)
        if n != channels(b) or n == 0:
            block(a, f"channel counts of '{a}' and '{b}' differ or are unknown")
            block(b, f"channel counts of '{a}' and '{b}' differ or are unknown")
            return
        for c in range(n):
            uf.union((a, c), (b, c))

    for inp in real_inputs(g):
        block(inp.name, "graph inputs keep their channels")
    for out in g.output:
        block(out.name, "graph outputs keep their channels")
    for node in g.node:
        op, name = node.op_type, node.name
        ins = [t for t in node.input if t and t not in inits]
        if op in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in inits:
            group = _attr(node, "group", 1)
            w = shapes[node.input[1]]
            x, y = node.input[0], node.output[0]
            depthwise = op == "Conv" and group > 1 and w[1] == 1 and w[0] == group == channels(x)
            if depthwise:
                tie(x, y)
                for c in range(channels(y)):
                    uses[(y, c)].append(_Use(name, "depthwise", c))
            elif group == 1:
                reads = "consumer_convt" if op == "ConvTranspose" else "consumer"
                for c in range(channels(x)):
                    uses[(x, c)].append(_Use(name, reads, c))
                    uf.find((x, c))
                for c in range(channels(y)):
                    uses[(y, c)].append(_Use(name, "producer", c))
                    uf.find((y, c))
            else:
                block(x, f"grouped {op} '{name}' (not depthwise)")
                block(y, f"grouped {op} '{name}' (not depthwise)")
        elif op in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            x = node.input[0]
            trans_b = op == "Gemm" and _attr(node, "transB", 0) == 1
            if len(shapes.get(x, [])) == 2 and not (op == "Gemm" and _attr(node, "transA", 0)):
                for c in range(channels(x)):
                    uses[(x, c)].append(_Use(name, "consumer_t" if trans_b else "consumer_row", c))
                    uf.find((x, c))
            else:
                block(x, f"{op} '{name}' reads a tensor that is not [N, features]")
            block(node.output[0], f"{op} outputs keep their features")
        elif op in _PER_CHANNEL and ins:
            tie(ins[0], node.output[0])
            for t in ins[1:]:
                block(t, f"{op} '{name}' reads a second activation")
        elif op in _ELEMENTWISE:
            y = node.output[0]
            n = channels(y)
            for t in node.input:
                if not t or t in inits:
                    continue
                s = shapes.get(t)
                if s is not None and len(s) == len(shapes.get(y, [])) and s[1] == n:
                    tie(t, y)
                elif s is not None and len(s) >= 2 and s[1] == 1:
                    continue  # broadcast along channels: not tied
                else:
                    block(t, f"{op} '{name}' broadcasts an activation in a way channel pruning cannot follow")
                    block(y, f"{op} '{name}' broadcasts an activation in a way channel pruning cannot follow")
        elif op == "Concat":
            y = node.output[0]
            rank = len(shapes.get(y, []))
            axis = _attr(node, "axis", 1)
            if axis < 0:
                axis += rank
            if axis == 1:
                offset = 0
                for t in ins:
                    n = channels(t)
                    for c in range(n):
                        uf.union((t, c), (y, offset + c))
                    offset += n
                if offset != channels(y):
                    for t in [*ins, y]:
                        block(t, f"Concat '{name}' reads a constant or unknown-shaped input")
            else:
                for t in ins:
                    tie(t, y)
        elif op in _FLATTEN and ins:
            s, o = shapes.get(ins[0]), shapes.get(node.output[0])
            if s and o and len(s) >= 2 and math.prod(s[2:]) == 1 and len(o) == 2 and o[1] == s[1]:
                tie(ins[0], node.output[0])
            else:
                for t in [*ins, *node.output]:
                    block(t, f"{op} '{name}' mixes channels with other dimensions")
        else:
            for t in [*ins, *[o for o in node.output if o]]:
                block(t, f"{op} '{name}' is not known to keep channels apart")

    classes: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    for key in list(uf.parent):
        classes[uf.find(key)].append(key)
    groups = []
    for members in classes.values():
        if any(m in blocked for m in members):
            continue
        member_uses = [u for m in members for u in uses.get(m, [])]
        if not any(u.role == "producer" for u in member_uses):
            continue
        groups.append(ChannelGroup(sorted(members), member_uses))
    why = [f"{cause} (e.g. '{tensor}')" for cause, tensor in reasons.items()]
    return groups, why


# ------------------------------------------------------------------------------------------- importance


def _consumer_inputs(model: onnx.ModelProto, groups: Sequence[ChannelGroup]) -> dict[str, str]:
    by_name = {n.name: n for n in model.graph.node}
    return {u.node: by_name[u.node].input[0] for grp in groups for u in grp.uses if u.role.startswith("consumer")}


@dataclass
class _ChannelStats:
    """Per-channel mean and mean square of a tensor over the frames (channel axis 1)."""

    total: np.ndarray
    squares: np.ndarray
    count: int = 0

    def add(self, x: np.ndarray) -> None:
        flat = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64)
        self.total += flat.sum(axis=(0, 2))
        self.squares += (flat**2).sum(axis=(0, 2))
        self.count += flat.shape[0] * flat.shape[2]

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    @property
    def mean_square(self) -> np.ndarray:
        return self.squares / max(self.count, 1)


def channel_stats(model: onnx.ModelProto, feeds: Sequence[Feed], tensors: set[str]) -> dict[str, _ChannelStats]:
    stats: dict[str, _ChannelStats] = {}
    for values in frames(model, feeds, tensors):
        for name, x in values.items():
            if name not in stats:
                stats[name] = _ChannelStats(np.zeros(x.shape[1]), np.zeros(x.shape[1]))
            stats[name].add(x)
    return stats


def _column_energy(w: np.ndarray, role: str) -> np.ndarray:
    """||W[:, c]||^2 for each input channel c of a consumer's weight."""
    if role == "consumer":  # Conv [O, C, k, k]
        return np.asarray((w.astype(np.float64) ** 2).sum(axis=(0, *range(2, w.ndim))), np.float64)
    if role == "consumer_t":  # Gemm transB [O, C]
        return np.asarray((w.astype(np.float64) ** 2).sum(axis=0), np.float64)
    if role == "consumer_row":  # MatMul / Gemm [C, O]
        return np.asarray((w.astype(np.float64) ** 2).sum(axis=1), np.float64)
    if role == "consumer_convt":  # ConvTranspose [C, O, k, k]
        return np.asarray((w.astype(np.float64) ** 2).sum(axis=tuple(range(1, w.ndim))), np.float64)
    raise ValueError(role)


def importance(model: onnx.ModelProto, groups: Sequence[ChannelGroup], stats: Mapping[str, _ChannelStats]) -> None:
    """Sets each group's score: the fraction of its consumers' input energy that it carries, summed."""
    inits = initializers(model.graph)
    by_name = {n.name: n for n in model.graph.node}
    energy: dict[str, np.ndarray] = {}  # consumer -> per-input-channel contribution energy
    for grp in groups:
        for u in grp.uses:
            if not u.role.startswith("consumer") or u.node in energy:
                continue
            node = by_name[u.node]
            ex2 = stats[node.input[0]].mean_square
            energy[u.node] = _column_energy(numpy_helper.to_array(inits[node.input[1]]), u.role) * ex2
    for grp in groups:
        grp.score = sum(
            float(energy[u.node][u.index] / max(energy[u.node].sum(), 1e-30))
            for u in grp.uses
            if u.role.startswith("consumer")
        )


# ------------------------------------------------------------------------------------------- families and cost


@dataclass
class _Family:
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


def _families(groups: Sequence[ChannelGroup], options: PruneOptions) -> list[_Family]:
    by_producers: dict[tuple[str, ...], list[ChannelGroup]] = defaultdict(list)
    for grp in groups:
        by_producers[tuple(sorted({u.node for u in grp.uses if u.role == "producer"}))].append(grp)
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
            out.append(_Family(producers, members, kept, Counter(t for t, _ in members[0].members)))
    return out


@dataclass(frozen=True)
class _CostOp:
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


class _CostModel:
    def __init__(self, ops: Sequence[_CostOp]) -> None:
        self.ops = list(ops)
        self.by_tensor: dict[str, list[int]] = defaultdict(list)
        for i, op in enumerate(self.ops):
            for t in {op.x, op.y} - {""}:
                self.by_tensor[t].append(i)

    @staticmethod
    def op_cost(op: _CostOp, removed: Callable[[str], int]) -> float:
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


def _cost_model(model: onnx.ModelProto, budget: Budget, block: int) -> _CostModel:
    """Every weighted op's cost: its FLOPs, for a latency budget counted in whole channel blocks of the CPU's
    convolution kernels (44 of 48 channels cost what 48 do). A fixed model, not profiled per layer: per-layer
    times on a shared machine vary by more than the differences the allocation weighs, and made each run prune
    other channels."""
    shapes = _shapes(model)
    inits = initializers(model.graph)
    nodes = [n for n in model.graph.node if n.op_type in _WEIGHTED and len(n.input) > 1 and n.input[1] in inits]
    flops = {n.name: _node_flops(n, shapes) for n in nodes if n.output[0] in shapes}
    ops = []
    for n in nodes:
        if n.name not in flops or len(shapes.get(n.input[0], [])) < 2 or len(shapes[n.output[0]]) < 2:
            continue
        x, y = n.input[0], n.output[0]
        depthwise = n.op_type == "Conv" and _attr(n, "group", 1) > 1
        base = float(flops[n.name])
        conv_block = block if budget is Budget.LATENCY and n.op_type in ("Conv", "ConvTranspose") else 1
        ops.append(_CostOp(n.name, base, "" if depthwise else x, y, shapes[x][1], shapes[y][1], conv_block))
    return _CostModel(ops)


def _allocate(families: Sequence[_Family], cost: _CostModel) -> list[tuple[int, int, float]]:
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

                def after_step(t: str, extra: int = extra, fam: _Family = fam) -> int:
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


def _node_flops(node: onnx.NodeProto, shapes: Mapping[str, list[int]]) -> int:
    w = shapes[node.input[1]]
    out = shapes.get(node.output[0], [1])
    if node.op_type == "ConvTranspose":
        x = shapes.get(node.input[0], out)
        return 2 * math.prod(w) * math.prod(x[2:]) * x[0]
    if node.op_type == "Conv":
        return 2 * math.prod(w) * math.prod(out[2:]) * out[0]
    return 2 * math.prod(w) * math.prod(out[:-1])


def _removed_axis(node: onnx.NodeProto, role: str) -> int:
    """The weight axis whose entries one removed channel takes away, for this use of the channel."""
    if role in ("consumer", "consumer_t") or (node.op_type == "ConvTranspose" and role == "producer"):
        return 1
    return 0


# ------------------------------------------------------------------------------------------- least squares


def _slice(a: np.ndarray, axis: int, drop: Sequence[int]) -> np.ndarray:
    keep = np.setdiff1d(np.arange(a.shape[axis]), np.asarray(drop, dtype=np.int64))
    return np.take(a, keep, axis=axis)


class _NormalEquations:
    """X^T X, X^T Y and the means, accumulated frame by frame, for refitting a Conv's weights and bias so that its
    output on the patches X matches the targets Y."""

    def __init__(self, m: int, o: int) -> None:
        self.gram, self.xty = np.zeros((m, m)), np.zeros((m, o))
        self.sx, self.sy, self.n = np.zeros(m), np.zeros(o), 0
        self.syy = 0.0  # sum of squared targets: the local error of a candidate comes from the sums alone

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        self.gram += x.T @ x
        self.xty += x.T @ y
        self.sx += x.sum(axis=0)
        self.sy += y.sum(axis=0)
        self.syy += float(np.sum(y * y))
        self.n += len(x)

    def energy(self) -> float:
        """Sum of squared deviations of the targets from their mean: what a relative local error divides by."""
        return self.syy - float(self.sy @ self.sy) / max(self.n, 1)

    def solve(self, keep: np.ndarray, prior: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """Weights [O, len(keep)] on the columns `keep` and bias [O], ridge-regularised towards `prior` [O, keep]."""
        mx, my = self.sx[keep] / self.n, self.sy / self.n
        gram = self.gram[np.ix_(keep, keep)] - self.n * np.outer(mx, mx)
        xty = self.xty[keep] - self.n * np.outer(mx, my)
        lam = ridge * float(np.mean(np.diag(gram))) + 1e-12
        solved = np.linalg.solve(gram + lam * np.eye(len(keep)), xty + lam * prior.T)  # [keep, O]
        return solved.T, my - mx @ solved


def _columns(channels: int, drop: Sequence[int], k: int) -> np.ndarray:
    """The im2col columns of the kept input channels (channel-major, k = kh * kw per channel)."""
    kept = np.setdiff1d(np.arange(channels), np.asarray(drop, dtype=np.int64))
    return np.asarray((kept[:, None] * k + np.arange(k)[None, :]).reshape(-1), np.int64)


def _bias_correction(w: np.ndarray, drop: Sequence[int], mean: np.ndarray, role: str) -> np.ndarray:
    """What the removed input channels added to each output on average (their mean times their weights)."""
    d = np.asarray(drop, dtype=np.int64)
    if role == "consumer":
        return np.asarray(
            (w[:, d].astype(np.float64).sum(axis=tuple(range(2, w.ndim))) * mean[d]).sum(axis=1), np.float64
        )
    if role == "consumer_t":
        return np.asarray((w[:, d].astype(np.float64) * mean[d]).sum(axis=1), np.float64)
    if role == "consumer_row":
        return np.asarray((w[d, :].astype(np.float64) * mean[d][:, None]).sum(axis=0), np.float64)
    # ConvTranspose [C, O, k, k]
    return np.asarray(
        (w[d].astype(np.float64).sum(axis=tuple(range(2, w.ndim))) * mean[d][:, None]).sum(axis=0), np.float64
    )


# ------------------------------------------------------------------------------------------- removal


@dataclass
class _Removal:
    model: onnx.ModelProto
    drop_tensor: dict[str, list[int]]  # tensor -> channels removed from it
    layers: list[LayerChannels]


def _remove(
    model: onnx.ModelProto,
    chosen: Sequence[ChannelGroup],
    stats: Mapping[str, _ChannelStats],
    refits: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    shapes: Mapping[str, list[int]] | None = None,
) -> _Removal:
    """Slices the chosen groups out of a copy of `model`. A consumer that lost input channels takes its weights
    from `refits` (all output rows, kept input columns, and bias) where given, else keeps its other weights and
    absorbs the removed channels' mean contribution in its bias. `shapes`: the model's, if already inferred."""
    shapes = shapes if shapes is not None else _shapes(model)
    drops: dict[tuple[str, str], list[int]] = defaultdict(list)
    drop_tensor: dict[str, list[int]] = defaultdict(list)
    for grp in chosen:
        for u in grp.uses:
            drops[(u.node, u.role)].append(u.index)
        for t, c in grp.members:
            drop_tensor[t].append(c)
    work = copy_model(model)
    g = work.graph
    arrays = {name: numpy_helper.to_array(t) for name, t in initializers(g).items()}
    layers: list[LayerChannels] = []
    for node in g.node:
        name, op = node.name, node.op_type
        if op in _WEIGHTED and len(node.input) > 1 and node.input[1] in arrays:
            w = arrays[node.input[1]]
            has_b = len(node.input) > 2 and bool(node.input[2]) and node.input[2] in arrays
            b = arrays[node.input[2]].astype(np.float64) if has_b else None
            before = w.shape[0] if op != "ConvTranspose" else w.shape[1]
            consumer_role = next((r for (n, r) in drops if n == name and r.startswith("consumer")), None)
            if consumer_role is not None:
                dropped = sorted(drops[(name, consumer_role)])
                if refits is not None and name in refits:
                    flat, b = refits[name]
                    w = flat.reshape(w.shape[0], w.shape[1] - len(dropped), *w.shape[2:])
                else:
                    shift = _bias_correction(w, dropped, stats[node.input[0]].mean, consumer_role)
                    w = _slice(w, _removed_axis(node, consumer_role), dropped)
                    b = (b if b is not None else np.zeros(shift.shape[0])) + shift
            for role in ("producer", "depthwise"):
                if (name, role) in drops:
                    dropped = sorted(drops[(name, role)])
                    w = _slice(w, _removed_axis(node, role), dropped)
                    if b is not None:
                        b = _slice(b, 0, dropped)
                    if role == "depthwise":
                        for a in node.attribute:
                            if a.name == "group":
                                a.i = w.shape[0]
            if w is not arrays[node.input[1]]:
                _set_weights(g, node, np.asarray(w, arrays[node.input[1]].dtype), b, "pruned")
                after = w.shape[0] if op != "ConvTranspose" else w.shape[1]
                if after != before:
                    layers.append(LayerChannels(name, op, before, after))
        elif op in ("BatchNormalization", "InstanceNormalization", "PRelu") or op in _ELEMENTWISE:
            y = node.output[0]
            if y not in drop_tensor:
                continue
            rank, n = len(shapes[y]), shapes[y][1]
            for i, t in enumerate(node.input):
                if t not in arrays or (i == 0 and op != "PRelu" and op not in _ELEMENTWISE):
                    continue
                a = arrays[t]
                if op in ("BatchNormalization", "InstanceNormalization"):
                    new = _slice(a, 0, drop_tensor[y])
                else:  # broadcast against the activation: slice the channel axis if it has one
                    aligned = a.reshape((1,) * (rank - a.ndim) + a.shape)
                    if aligned.shape[1] != n or n == 1:
                        continue
                    new = _slice(aligned, 1, drop_tensor[y])
                    new = new.reshape(new.shape[rank - a.ndim :])
                new_name = f"{t}_pruned_{node.name}"
                replace_initializer(g, new_name, new.astype(a.dtype))
                node.input[i] = new_name
        elif op in ("Reshape", "Resize") and node.output[0] in drop_tensor:
            idx = 1 if op == "Reshape" else 3
            if len(node.input) > idx and node.input[idx] in arrays:
                a = arrays[node.input[idx]].copy()
                if a.ndim == 1 and a.shape[0] > 1 and a[1] > 0:
                    a[1] -= len(drop_tensor[node.output[0]])
                    new_name = f"{node.input[idx]}_pruned_{node.name}"
                    replace_initializer(g, new_name, a)
                    node.input[idx] = new_name
    del g.value_info[:]
    if any(v.name in drop_tensor for v in g.output):  # never: graph outputs are blocked
        raise ConversionError("pruning would change a graph output")
    drop_unused_initializers(g)
    return _Removal(work, dict(drop_tensor), layers)


def _set_weights(g: onnx.GraphProto, node: onnx.NodeProto, w: np.ndarray, b: np.ndarray | None, tag: str) -> None:
    """New initializers for this node alone (the old ones may be shared with other nodes)."""
    replace_initializer(g, f"{node.name}_{tag}_w", w)
    node.input[1] = f"{node.name}_{tag}_w"
    if b is not None:
        replace_initializer(g, f"{node.name}_{tag}_b", np.asarray(b, w.dtype))
        if len(node.input) > 2 and node.input[2]:
            node.input[2] = f"{node.name}_{tag}_b"
        else:
            del node.input[2:]
            node.input.append(f"{node.name}_{tag}_b")


_TARGET_BYTES = 256 << 20  # most memory the refit's targets (unpruned outputs at sampled positions) may hold


def _refit(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    drop_tensor: Mapping[str, Sequence[int]],
    feeds: Sequence[Feed],
    options: PruneOptions,
    say: Progress,
) -> list[str]:
    """Refits, in graph order, every plain Conv of `pruned` whose input differs from the original's: on the
    pruned model's own inputs (with the refits before it applied), to the original outputs of its kept channels.
    Returns the refitted convs' names."""
    g = pruned.graph
    changed = set(drop_tensor)
    for node in g.node:  # graph order is topological
        if any(i in changed for i in node.input):
            changed.update(o for o in node.output if o)
    arrays = {name: numpy_helper.to_array(t) for name, t in initializers(g).items()}
    convs = [
        n
        for n in g.node
        if n.input[0] in changed and len(n.input) > 1 and n.input[1] in arrays and plain_conv(n, arrays[n.input[1]])
    ]
    shapes = _shapes(original)
    if not convs or any(n.output[0] not in shapes for n in convs):
        return []
    rng = np.random.default_rng(0)
    picks = {n.name: [sample_positions(shapes[n.output[0]][2:], options.positions, rng) for _ in feeds] for n in convs}
    refitted: list[str] = []
    eta = Eta(say, "least-squares refits", len(convs))
    start = 0
    while start < len(convs):
        chunk: list[onnx.NodeProto] = []
        size = 0
        for n in convs[start:]:  # the unpruned targets of as many convs as fit in memory, in one pass
            size += 8 * len(feeds) * options.positions * shapes[n.output[0]][1]
            if chunk and size > _TARGET_BYTES:
                break
            chunk.append(n)
        targets: dict[str, list[np.ndarray]] = defaultdict(list)
        for values in frames(original, feeds, {n.output[0] for n in chunk}):
            for n in chunk:
                y = values[n.output[0]][0]
                keep = np.setdiff1d(np.arange(y.shape[0]), np.asarray(drop_tensor.get(n.output[0], []), np.int64))
                flat = y[keep].reshape(len(keep), -1)
                targets[n.name].append(flat[:, picks[n.name][len(targets[n.name])]].T.astype(np.float64))
        for n in chunk:
            inits = initializers(g)
            w = numpy_helper.to_array(inits[n.input[1]])
            eq = _NormalEquations(int(np.prod(w.shape[1:])), w.shape[0])
            for i, values in enumerate(frames(pruned, feeds, {n.input[0]})):
                eq.add(im2col(values[n.input[0]], n, w.shape, picks[n.name][i]), targets[n.name][i])
            prior = w.reshape(w.shape[0], -1).astype(np.float64)
            new_w, new_b = eq.solve(np.arange(prior.shape[1]), prior, options.ridge)
            _set_weights(g, n, new_w.reshape(w.shape).astype(w.dtype), new_b, "refit")
            refitted.append(n.name)
            del targets[n.name]
            eta.step(len(refitted))
        start += len(chunk)
    drop_unused_initializers(g)
    return refitted


# ------------------------------------------------------------------------------------------- plan and prune


@dataclass
class PrunePlan:
    """What pruning needs that does not depend on the ratio: the prunable groups and families, their measured
    sensitivity, the cost model and the allocation order. Plan once, then `prune_channels` at as many ratios as
    the gate asks for."""

    options: PruneOptions  # its ratio is not part of the plan
    groups: list[ChannelGroup]
    blocked: list[str]
    families: list[_Family]
    stats: dict[str, _ChannelStats]
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


def _residual(eq: _NormalEquations, keep: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    """Sum over the sampled positions of ||y - (w x + b)||^2 for weights `w` [O, keep] on the columns `keep`,
    from the accumulated sums (no activations kept): the local error of a candidate consumer."""
    g = eq.gram[np.ix_(keep, keep)]
    return float(
        eq.syy - 2.0 * np.sum(w * eq.xty[keep].T) - 2.0 * b @ eq.sy + np.sum((w @ g) * w)
        + 2.0 * b @ (w @ eq.sx[keep]) + eq.n * b @ b
    )  # fmt: skip


def _anchors(steps: int, count: int) -> list[int]:
    """The steps measured on the whole model: one anchor is the most aggressive step (it scales the proxy); more
    spread from the least aggressive (the step the allocation takes most often) to the most."""
    if count == 1:
        return [steps - 1]
    return sorted({int(i) for i in np.round(np.linspace(0, steps - 1, min(count, steps)))})


def _interpolate(proxy: Sequence[float], measured: Mapping[int, float]) -> list[float]:
    """Each step's loss from its local proxy, piecewise linear through (0, 0) and the measured anchors, made
    non-decreasing in the step (removing more never costs less)."""
    points = sorted({(0.0, 0.0), *((proxy[i], loss) for i, loss in measured.items())})
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    out: list[float] = []
    for i, e in enumerate(proxy):
        loss = measured[i] if i in measured else float(np.interp(e, xs, ys)) if xs[-1] > 0 else ys[-1]
        out.append(max(loss, out[-1] if out else 0.0))
    return out


def _sensitivity(
    model: onnx.ModelProto,
    families: Sequence[_Family],
    stats: Mapping[str, _ChannelStats],
    feeds: Sequence[Feed],
    options: PruneOptions,
    head: TaskHead | None,
    say: Progress,
) -> SensitivityCost:
    """Each family's loss at each of its steps with only that family pruned, judged with the task's metric
    against the unpruned model.

    Running the whole model at every step of every family is families x steps x frames model runs (500 s on a
    7 MB detector). Instead each step gets a local proxy, the relative error it leaves in its consumers' outputs
    after the least-squares refit (exact sums from the normal equations, no activations kept; without plain-conv
    consumers, the removed share of the family's importance), and the whole model is run at `anchors` steps only
    (the least and the most aggressive); the other steps are interpolated in the proxy. The allocation needs the ranking
    and the rough size of each loss; the gate then judges every pruned model for real."""
    started = time.perf_counter()
    reference = run_model(model, feeds)
    compare(reference, reference, head)  # timed with the run: an anchor is a run and a judgement
    one_pass = time.perf_counter() - started
    g = _Graph.of(model)
    cost = SensitivityCost(families=len(families), steps=sum(len(f.kept) for f in families), frames=len(feeds))
    runs = sum(len(_anchors(len(f.kept), options.anchors)) for f in families)
    consumers_of = [_refit_consumers(fam, g) for fam in families]
    batches = _batches(consumers_of, g, _EQS_BYTES)
    estimate = one_pass * (runs + 2 * len(batches))  # + the activation passes (x2: the probe)
    cost.estimated_s = round(estimate, 1)
    say(f"  sensitivity: {len(families)} layer families, {cost.steps} steps, {runs} whole-model runs and "
        f"{len(batches)} activation passes over {len(feeds)} frames: about {cost.estimated_s:.0f} s")  # fmt: skip
    if options.time_budget_s is not None and estimate > options.time_budget_s:  # unrounded: a tiny budget still holds
        raise ConversionError(
            f"pruning's sensitivity pass would take about {cost.estimated_s:.0f} s ({len(families)} layer families, "
            f"{one_pass:.1f} s per pass over {len(feeds)} frames), over its budget of {options.time_budget_s:.0f} s: "
            "raise --prune-time-budget or give fewer --prune-frames"
        )
    eta = Eta(say, "sensitivity", len(families))
    done = 0
    for batch in batches:
        cost.activation_passes += 1
        shared = _normal_equations(g, feeds, sorted({c for fi in batch for c in consumers_of[fi]}), options)
        for fi in batch:
            fam, eqs = families[fi], {c: shared[c] for c in consumers_of[fi]}
            fam.losses = _family_losses(g, fam, eqs, stats, reference, feeds, options, head, cost)
            done += 1
            eta.step(done)
    cost.seconds = round(time.perf_counter() - started, 2)
    return cost


_EQS_BYTES = 256 * 1024 * 1024  # normal equations held at once: families share an activation pass up to this


@dataclass(frozen=True)
class _Graph:
    """A model with its nodes by name, initializers as arrays and tensor shapes, read once."""

    model: onnx.ModelProto
    nodes: Mapping[str, onnx.NodeProto]
    arrays: Mapping[str, np.ndarray]
    shapes: Mapping[str, list[int]]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Graph:
        arrays = {name: numpy_helper.to_array(t) for name, t in initializers(model.graph).items()}
        return cls(model, {n.name: n for n in model.graph.node}, arrays, _shapes(model))

    def weight(self, node: str) -> np.ndarray:
        return self.arrays[self.nodes[node].input[1]]

    def bias(self, node: str) -> np.ndarray | float:
        n = self.nodes[node]
        return self.arrays[n.input[2]].astype(np.float64) if len(n.input) > 2 and n.input[2] else 0.0


def _refit_consumers(fam: _Family, g: _Graph) -> list[str]:
    """The family's consumers the least-squares refit (and the local error) knows how to unfold: plain convs."""
    consumers = sorted({u.node for grp in fam.groups for u in grp.uses if u.role == "consumer"})
    return [c for c in consumers if plain_conv(g.nodes[c], g.weight(c))]


def _batches(consumers_of: Sequence[Sequence[str]], g: _Graph, limit: int) -> list[list[int]]:
    """Families in order, grouped so that one batch's normal equations (X^T X of every consumer) fit in `limit`
    bytes; a family larger than that is a batch of its own."""
    out: list[list[int]] = []
    used, seen = limit + 1, set[str]()
    for fi, consumers in enumerate(consumers_of):
        size = 0
        for c in consumers:
            if c not in seen:
                w = g.weight(c)
                size += 8 * (w[0].size ** 2 + w[0].size * w.shape[0])
        if out and used + size <= limit:
            out[-1].append(fi)
            used += size
        else:
            out.append([fi])
            used, seen = size, set()
        seen.update(consumers)
    return out


def _normal_equations(
    g: _Graph, feeds: Sequence[Feed], consumers: Sequence[str], options: PruneOptions
) -> dict[str, _NormalEquations]:
    """Each consumer conv's normal equations over the frames, in one activation pass (a generator per consumer,
    seeded alike: the sampled positions do not depend on which consumers share the pass)."""
    if not consumers:
        return {}
    rngs = {c: np.random.default_rng(0) for c in consumers}
    eqs: dict[str, _NormalEquations] = {}
    for values in frames(g.model, feeds, {g.nodes[c].input[0] for c in consumers}):
        for c in consumers:
            node, w = g.nodes[c], g.weight(c)
            picks = sample_positions(g.shapes[node.output[0]][2:], options.positions, rngs[c])
            cols = im2col(values[node.input[0]], node, w.shape, picks)
            flat = w.reshape(w.shape[0], -1).astype(np.float64)
            eqs.setdefault(c, _NormalEquations(flat.shape[1], flat.shape[0])).add(cols, cols @ flat.T + g.bias(c))
    return eqs


def _family_losses(
    g: _Graph,
    fam: _Family,
    eqs: Mapping[str, _NormalEquations],
    stats: Mapping[str, _ChannelStats],
    reference: Sequence[Outputs],
    feeds: Sequence[Feed],
    options: PruneOptions,
    head: TaskHead | None,
    cost: SensitivityCost,
) -> list[float]:
    """One family's loss per step: the local proxy at every step, the whole model at the anchors."""
    energy = sum(eq.energy() for eq in eqs.values())
    total_score = sum(g.score for g in fam.groups) or 1.0
    proxy: list[float] = []
    refits_of: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    for step in range(len(fam.kept)):
        chosen = fam.groups[: fam.removed(step)]
        refits, residual = {}, 0.0
        for c, eq in eqs.items():
            w = g.weight(c)
            drop = [u.index for grp in chosen for u in grp.uses if u.node == c and u.role == "consumer"]
            keep = _columns(w.shape[1], drop, w.shape[2] * w.shape[3])
            prior = w.reshape(w.shape[0], -1)[:, keep].astype(np.float64)
            if options.repair:
                refits[c] = eq.solve(keep, prior, options.ridge)
                residual += _residual(eq, keep, *refits[c])
            else:
                bias = np.broadcast_to(g.bias(c), (w.shape[0],)).astype(np.float64)
                residual += _residual(eq, keep, prior, bias)
        refits_of.append(refits if options.repair else {})
        proxy.append(max(residual, 0.0) / energy if energy > 0 else sum(g.score for g in chosen) / total_score)
    measured = {}
    for step in _anchors(len(fam.kept), options.anchors):
        candidate = _remove(g.model, fam.groups[: fam.removed(step)], stats, refits_of[step], g.shapes).model
        measured[step] = 1.0 - compare(reference, run_model(candidate, feeds), head).metric
        cost.whole_model_runs += 1
    return _interpolate(proxy, measured)


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
    plan.stats = channel_stats(model, feeds, set(_consumer_inputs(model, groups).values()))
    importance(model, groups, plan.stats)
    plan.families = _families(groups, options)
    block = 1
    if options.budget is Budget.LATENCY:
        units = [n.name for n in model.graph.node if n.op_type in _WEIGHTED]
        tell(f"  profiling {len(units)} weighted layers for a latency budget (their total only: the allocation")
        tell("  uses a fixed cost model, so timing noise cannot change what is pruned)")
        plan.measured_us = sum(layer_times(model, units, feeds[:2], runs=5, cpu=options.cpu).values())
        block = options.block or cpu_channel_block()
    cost = _cost_model(model, options.budget, block)
    plan.whole = cost.total({})
    plan.sensitivity = _sensitivity(model, plan.families, plan.stats, feeds, options, head, tell)
    plan.order = _allocate(plan.families, cost)
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
    stats = channel_stats(model, feeds, set(_consumer_inputs(model, groups).values()))
    return _apply(model, [by_key[(k[0], k[1])] for k in keys], stats, feeds, options, tell, report)


def _apply(
    model: onnx.ModelProto,
    chosen: Sequence[ChannelGroup],
    stats: Mapping[str, _ChannelStats],
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
    removal = _remove(model, chosen, stats)
    work, report.layers = removal.model, removal.layers
    if options.repair:
        tell(f"  refitting the layers after the pruned channels on {len(feeds)} frames")
        report.repaired = _refit(model, work, removal.drop_tensor, feeds, options, tell)
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
    "importance",
    "group_key",
    "plan_pruning",
    "prune_channels",
    "prune_groups",
]
