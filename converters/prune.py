"""Structured channel pruning of a prepared ONNX graph, repaired by least squares on calibration data.

No retraining: the integrator has an ONNX file and frames, not a training pipeline. Four small steps:

1. **Channel groups** (`channel_groups`). Channels that must go together are found by union-find over
   (tensor, channel) pairs: ops that keep channels (activations, pooling, Resize, BatchNormalization, depthwise
   convs) tie a channel of their input to the same channel of their output; element-wise ops (residual Add, the
   Mul of squeeze-and-excitation) tie their inputs' channels together; Concat ties input channel c to output
   channel offset + c. A group is prunable when a weighted op produces it (a Conv or ConvTranspose output row)
   and nothing in it is blocked: graph inputs and outputs, grouped convs that are not depthwise, reshapes that
   mix channels and ops this module does not know keep every channel they touch, and the report says which.
2. **Importance** (`importance`). Removing channel c of a consumer's input removes W[:, c] * x_c from its output;
   its expected energy ||W[:, c]||^2 E[x_c^2], as a fraction of what all the consumer's input channels
   contribute, scores the channel comparably across layers. A group's score sums its consumers.
3. **Selection** under a FLOPs budget: the groups with the least score per FLOP saved go first, until the
   requested fraction of the model's FLOPs is gone; no tensor loses more than `max_layer_ratio` of its channels.
4. **Removal and repair** (`prune_channels`). Rows, columns and per-channel constants are sliced out and shapes
   re-inferred. Each consumer that lost input channels is refitted on calibration activations: its kept weights
   and bias solve a ridge least-squares problem (towards the original weights) so that its output matches the
   unpruned layer's; without repair, the bias still absorbs the removed channels' mean contribution. The repair
   is per layer, on the original model's activations (inputs and targets), so layers repair independently.
"""

from __future__ import annotations

import enum
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from converters.evaluate import Feed, session, with_float_activations_as_outputs
from converters.graph import (
    ConversionError,
    copy_model,
    graph_output_names,
    initializers,
    real_inputs,
    replace_initializer,
)
from converters.latency import layer_times
from converters.progress import Progress

# Ops that apply to each channel independently: channel c of input 0 is channel c of output 0.
_PER_CHANNEL = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Identity", "Dropout",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample",
    "BatchNormalization", "InstanceNormalization", "Cast",
}  # fmt: skip
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"}
_FLATTEN = {"Flatten", "Reshape", "Squeeze"}


class Budget(str, enum.Enum):
    """What `PruneOptions.ratio` is a fraction of."""

    LATENCY = "latency"  # the weighted ops' measured time on ONNX Runtime's CPU provider (profiled here)
    FLOPS = "flops"  # their multiply-accumulates


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = 0.3  # fraction of the budget's measure to remove
    budget: Budget = Budget.LATENCY
    repair: bool = True  # least-squares refit of the consumers (else bias correction only)
    max_layer_ratio: float = 0.75  # no tensor loses more than this fraction of its channels
    ridge: float = 1e-2  # least-squares regularisation, relative to the mean diagonal of X^T X
    positions: int = 512  # output positions sampled per frame for the least-squares fit
    channel_multiple: int = 16  # kept channel counts are multiples of this (or unchanged): ORT's CPU convs work
    # in blocks of 16 channels on AVX-512 (8 on AVX2) and TensorRT's tensor cores in multiples of 8, so 44 of 48
    # channels run as slowly as 48 (measured: 4.8 ms for 36-48 channels, 3.7 ms for 32, here)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"prune ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise ValueError(f"max layer ratio must be in (0, 1), got {self.max_layer_ratio}")


@dataclass(frozen=True)
class LayerChannels:
    node: str
    op: str
    before: int  # output channels
    after: int


@dataclass
class PruneReport:
    budget: Budget = Budget.LATENCY
    flops_before: int = 0
    flops_after: int = 0
    layer_us_before: float = 0.0  # profiled time of the weighted ops (latency budget)
    layer_us_removed: float = 0.0  # the selected groups' share of it (an estimate until timed)
    params_before: int = 0
    params_after: int = 0
    groups: int = 0  # prunable channel groups found
    groups_removed: int = 0
    blocked: list[str] = field(default_factory=list)  # why some channels cannot be removed (one line per cause)
    layers: list[LayerChannels] = field(default_factory=list)  # weighted ops whose output channels changed
    repaired: list[str] = field(default_factory=list)  # consumers refitted by least squares

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


def _frames(model: onnx.ModelProto, feeds: Sequence[Feed], tensors: set[str]) -> Iterator[dict[str, np.ndarray]]:
    """Each frame's values of `tensors`, one frame at a time (memory holds one frame's activations)."""
    probe = with_float_activations_as_outputs(model, tensors)
    sess = session(probe)
    names = [o.name for o in sess.get_outputs()]
    for feed in feeds:
        values = {n: v for n, v in zip(names, sess.run(names, feed)) if n in tensors}
        values.update({n: v for n, v in feed.items() if n in tensors})
        yield values


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
    for values in _frames(model, feeds, tensors):
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


def _group_time(model: onnx.ModelProto, groups: Sequence[ChannelGroup], times: Mapping[str, float]) -> None:
    """Each group's cost as time: a weighted op's measured time split evenly over the channels of the axis the
    group's use removes (layers without a measured time fall back to their FLOPs share, scaled by the mean
    time per FLOP of the measured ones)."""
    shapes = _shapes(model)
    by_name = {n.name: n for n in model.graph.node}
    flop_of: dict[str, int] = {}
    for grp in groups:
        for u in grp.uses:
            node = by_name[u.node]
            if u.node not in flop_of:
                flop_of[u.node] = _node_flops(node, shapes)
    measured = [(times[n], f) for n, f in flop_of.items() if n in times and f > 0]
    us_per_flop = sum(t for t, _ in measured) / max(sum(f for _, f in measured), 1)
    for grp in groups:
        total = 0.0
        for u in grp.uses:
            node = by_name[u.node]
            w = shapes[node.input[1]]
            axis = _removed_axis(node, u.role)
            layer_us = times.get(u.node, flop_of[u.node] * us_per_flop)
            total += layer_us / max(w[axis], 1)
        grp.cost = total


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


def _group_flops(model: onnx.ModelProto, groups: Sequence[ChannelGroup]) -> None:
    """Each group's cost as FLOPs: what removing its channel takes from each weighted op that uses it."""
    shapes = _shapes(model)
    by_name = {n.name: n for n in model.graph.node}
    per_channel: dict[tuple[str, str], int] = {}
    for grp in groups:
        total = 0
        for u in grp.uses:
            key = (u.node, u.role)
            if key not in per_channel:
                node = by_name[u.node]
                axis = _removed_axis(node, u.role)
                per_channel[key] = _node_flops(node, shapes) // max(shapes[node.input[1]][axis], 1)
            total += per_channel[key]
        grp.cost = float(total)


def _align(
    chosen: list[ChannelGroup], groups: Sequence[ChannelGroup], shapes: Mapping[str, list[int]], options: PruneOptions
) -> list[ChannelGroup]:
    """Adjust the selection so that every tensor keeps all its channels or a multiple of `channel_multiple`:
    round each tensor to the nearer multiple (removing the next least important groups, or putting back the most
    important removed ones), then put groups back until every tensor is aligned (this always ends: at worst
    nothing is removed)."""
    m = options.channel_multiple
    if m <= 1:
        return chosen
    order = sorted(groups, key=lambda g: g.score / max(g.cost, 1e-12))
    rank = {id(g): i for i, g in enumerate(order)}
    picked = {id(g) for g in chosen}
    by_tensor: dict[str, list[ChannelGroup]] = defaultdict(list)
    for grp in groups:
        for t in {t for t, _ in grp.members}:
            by_tensor[t].append(grp)

    def kept(t: str) -> int:
        return shapes[t][1] - sum(1 for g in by_tensor[t] if id(g) in picked)

    def aligned(t: str) -> bool:
        k = kept(t)
        return k == shapes[t][1] or (k % m == 0 and k > 0)

    def cap_ok(grp: ChannelGroup) -> bool:
        return all(
            shapes[t][1] - kept(t) + 1 <= options.max_layer_ratio * shapes[t][1] for t in {t for t, _ in grp.members}
        )

    for _ in range(3):  # round each tensor to the nearer multiple
        for t in sorted(by_tensor):
            if aligned(t):
                continue
            k = kept(t)
            extra = k % m
            if extra <= m // 2 and k - extra >= m:  # remove `extra` more, least important first
                for grp in sorted((g for g in by_tensor[t] if id(g) not in picked), key=lambda g: rank[id(g)]):
                    if kept(t) % m == 0:
                        break
                    if cap_ok(grp):
                        picked.add(id(grp))
            if not aligned(t):  # put back the most important removed ones
                for grp in sorted((g for g in by_tensor[t] if id(g) in picked), key=lambda g: -rank[id(g)]):
                    if aligned(t):
                        break
                    picked.discard(id(grp))
    changed = True
    while changed:  # put back until every tensor is aligned
        changed = False
        for t in sorted(by_tensor):
            while not aligned(t):
                back = max((g for g in by_tensor[t] if id(g) in picked), key=lambda g: rank[id(g)])
                picked.discard(id(back))
                changed = True
    return [g for g in order if id(g) in picked]


# ------------------------------------------------------------------------------------------- removal


def _slice(a: np.ndarray, axis: int, drop: Sequence[int]) -> np.ndarray:
    keep = np.setdiff1d(np.arange(a.shape[axis]), np.asarray(drop, dtype=np.int64))
    return np.take(a, keep, axis=axis)


def _im2col(x: np.ndarray, node: onnx.NodeProto, w_shape: Sequence[int], picks: np.ndarray) -> np.ndarray:
    """Patches [positions, C * kh * kw] of a Conv's input at the sampled output positions `picks` (flat)."""
    kh, kw = w_shape[2], w_shape[3]
    strides, dil, pads = _strides(node), _dil(node), _pads(node)
    xp = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    out_w = (xp.shape[2] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    rows, cols = picks // out_w, picks % out_w
    patches = np.empty((len(picks), x.shape[1], kh, kw), np.float64)
    for i in range(kh):
        for j in range(kw):
            patches[:, :, i, j] = xp[:, rows * strides[0] + i * dil[0], cols * strides[1] + j * dil[1]].T
    return patches.reshape(len(picks), -1)


class _LeastSquares:
    """Normal equations, accumulated frame by frame, for refitting one group-1 Conv whose input lost channels:
    its kept weights and bias such that, on the sampled patches, its output matches the unpruned layer's."""

    def __init__(self, node: onnx.NodeProto, w: np.ndarray, drop: Sequence[int], positions: int) -> None:
        self.node, self.w, self.positions = node, w.astype(np.float64), positions
        k = w.shape[2] * w.shape[3]
        self.kept = _slice(np.arange(w.shape[1] * k).reshape(w.shape[1], k), 0, drop).reshape(-1)
        self.kept_channels = w.shape[1] - len(drop)
        m, o = len(self.kept), w.shape[0]
        self.gram, self.xty = np.zeros((m, m)), np.zeros((m, o))
        self.sx, self.sy, self.n = np.zeros(m), np.zeros(o), 0

    def add(self, x: np.ndarray, rng: np.random.Generator) -> None:
        kh, kw = self.w.shape[2], self.w.shape[3]
        pads, strides, dil = _pads(self.node), _strides(self.node), _dil(self.node)
        out_h = (x.shape[2] + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1
        out_w = (x.shape[3] + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1
        n = out_h * out_w
        picks = rng.choice(n, size=min(n, self.positions), replace=False)
        cols = _im2col(x, self.node, self.w.shape, picks)  # [P, C*k*k]
        y = cols @ self.w.reshape(self.w.shape[0], -1).T
        xk = cols[:, self.kept]
        self.gram += xk.T @ xk
        self.xty += xk.T @ y
        self.sx += xk.sum(axis=0)
        self.sy += y.sum(axis=0)
        self.n += len(picks)

    def solve(self, b: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        mx, my = self.sx / self.n, self.sy / self.n
        gram = self.gram - self.n * np.outer(mx, mx)
        xty = self.xty - self.n * np.outer(mx, my)
        w0 = self.w.reshape(self.w.shape[0], -1)[:, self.kept]  # [O, kept*k]
        lam = ridge * float(np.mean(np.diag(gram))) + 1e-12
        solved = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xty + lam * w0.T)  # [kept*k, O]
        new_w = solved.T.reshape(self.w.shape[0], self.kept_channels, self.w.shape[2], self.w.shape[3])
        return new_w, b.astype(np.float64) + my - mx @ solved


def _pads(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "pads"), [0, 0, 0, 0])


def _strides(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])


def _dil(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "dilations"), [1, 1])


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


@dataclass
class PrunePlan:
    """What pruning needs that does not depend on the ratio: the prunable groups, scored and costed in the
    budget's measure, and the per-channel statistics the repair's bias correction uses. Plan once, then
    `prune_channels` at as many ratios as the gate asks for."""

    budget: Budget
    groups: list[ChannelGroup]
    blocked: list[str]
    stats: dict[str, _ChannelStats]
    shapes: dict[str, list[int]]
    whole: float  # the budget's measure over every weighted op (microseconds or FLOPs)
    flops: int
    params: int


def plan_pruning(
    model: onnx.ModelProto, feeds: Sequence[Feed], budget: Budget = Budget.LATENCY, say: Progress | None = None
) -> PrunePlan:
    tell: Callable[[str], None] = say or (lambda _m: None)
    flops, params = conv_flops(model)
    groups, blocked = channel_groups(model)
    plan = PrunePlan(budget, groups, blocked, {}, _shapes(model), float(flops), flops, params)
    if not groups:
        return plan
    tell(f"  measuring channel importance on {len(feeds)} frames ({len(groups)} prunable channel groups)")
    plan.stats = channel_stats(model, feeds, set(_consumer_inputs(model, groups).values()))
    importance(model, groups, plan.stats)
    if budget is Budget.LATENCY:
        units = [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
        tell(f"  profiling {len(units)} weighted layers for a latency budget")
        times = layer_times(model, units, feeds[:2], runs=5)
        _group_time(model, groups, times)
        plan.whole = sum(times.values())
    else:
        _group_flops(model, groups)
    return plan


def prune_channels(
    model: onnx.ModelProto,
    feeds: Sequence[Feed],
    options: PruneOptions = PruneOptions(),
    say: Progress | None = None,
    plan: PrunePlan | None = None,
) -> tuple[onnx.ModelProto, PruneReport]:
    """A copy of the prepared `model` with about `options.ratio` of the budget's measure (time or FLOPs) removed,
    and what was done. `plan` (from `plan_pruning` on the same model, feeds and budget) saves re-measuring."""
    tell: Callable[[str], None] = say or (lambda _m: None)
    report = PruneReport(budget=options.budget)
    if plan is None and options.ratio == 0.0:  # nothing to remove: no need to measure anything
        groups0, report.blocked = channel_groups(model)
        report.groups = len(groups0)
        report.flops_before, report.params_before = report.flops_after, report.params_after = conv_flops(model)
        return copy_model(model), report
    if plan is None:
        plan = plan_pruning(model, feeds, options.budget, say)
    elif plan.budget is not options.budget:
        raise ValueError(f"the plan was made for a {plan.budget.value} budget, not {options.budget.value}")
    report.flops_before, report.params_before = plan.flops, plan.params
    report.groups, report.blocked = len(plan.groups), plan.blocked
    if not plan.groups or options.ratio == 0.0:
        report.flops_after, report.params_after = plan.flops, plan.params
        return copy_model(model), report
    groups, stats, shapes = plan.groups, plan.stats, plan.shapes
    if options.budget is Budget.LATENCY:
        report.layer_us_before = round(plan.whole, 1)

    # selection: least score per unit of cost first, within each tensor's cap
    target = options.ratio * plan.whole
    removed_per_tensor: dict[str, int] = defaultdict(int)
    chosen: list[ChannelGroup] = []
    saved = 0.0
    for grp in sorted(groups, key=lambda g: g.score / max(g.cost, 1e-12)):
        if saved >= target:
            break
        tensors = {t for t, _ in grp.members}
        if any(removed_per_tensor[t] + 1 > options.max_layer_ratio * shapes[t][1] for t in tensors):
            continue
        for t in tensors:
            removed_per_tensor[t] += 1
        chosen.append(grp)
        saved += grp.cost
    chosen = _align(chosen, groups, shapes, options)
    report.groups_removed = len(chosen)
    if options.budget is Budget.LATENCY:
        report.layer_us_removed = round(sum(g.cost for g in chosen), 1)

    # per weighted op and role, which indices go
    drops: dict[tuple[str, str], list[int]] = defaultdict(list)
    for grp in chosen:
        for u in grp.uses:
            drops[(u.node, u.role)].append(u.index)
    drop_tensor: dict[str, list[int]] = defaultdict(list)
    for grp in chosen:
        for t, c in grp.members:
            drop_tensor[t].append(c)

    work = copy_model(model)
    g = work.graph
    inits = initializers(g)
    arrays = {name: numpy_helper.to_array(t) for name, t in inits.items()}
    by_name = {n.name: n for n in g.node}
    fits: dict[str, _LeastSquares] = {}
    if options.repair:
        for (name, role), dropped in drops.items():
            node = by_name[name]
            if role == "consumer" and node.op_type == "Conv":
                fits[name] = _LeastSquares(node, arrays[node.input[1]], sorted(dropped), options.positions)
    if fits:
        tell(f"  least-squares repair of {len(fits)} layer(s) on {len(feeds)} frames")
        rng = np.random.default_rng(0)
        wanted = {by_name[n].input[0] for n in fits}
        for values in _frames(model, feeds, wanted):
            for name, fit in fits.items():
                fit.add(values[by_name[name].input[0]], rng)
    for node in g.node:
        name, op = node.name, node.op_type
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in arrays:
            w = arrays[node.input[1]]
            has_b = len(node.input) > 2 and bool(node.input[2]) and node.input[2] in arrays
            b = arrays[node.input[2]].astype(np.float64) if has_b else None
            before = w.shape[0] if op != "ConvTranspose" else w.shape[1]
            consumer_role = next((r for (n, r) in drops if n == name and r.startswith("consumer")), None)
            if consumer_role is not None:
                dropped = sorted(drops[(name, consumer_role)])
                mean = stats[node.input[0]].mean
                if name in fits:
                    w, b = fits[name].solve(b if b is not None else np.zeros(w.shape[0]), options.ridge)
                    report.repaired.append(name)
                else:
                    shift = _bias_correction(w, dropped, mean, consumer_role)
                    w = _slice(w, _removed_axis(node, consumer_role), dropped)
                    b = (b if b is not None else np.zeros(shift.shape[0])) + shift
            if (name, "producer") in drops:
                dropped = sorted(drops[(name, "producer")])
                w = _slice(w, _removed_axis(node, "producer"), dropped)
                if b is not None:
                    b = _slice(b, 0, dropped)
            if (name, "depthwise") in drops:
                dropped = sorted(drops[(name, "depthwise")])
                w = _slice(w, 0, dropped)
                if b is not None:
                    b = _slice(b, 0, dropped)
                for a in node.attribute:
                    if a.name == "group":
                        a.i = w.shape[0]
            if w is not arrays[node.input[1]]:
                dtype = arrays[node.input[1]].dtype
                w_name = f"{name}_pruned_w"
                replace_initializer(g, w_name, np.asarray(w, dtype))
                node.input[1] = w_name
                if b is not None:
                    b_name = f"{name}_pruned_b"
                    replace_initializer(g, b_name, np.asarray(b, dtype))
                    if has_b:
                        node.input[2] = b_name
                    else:
                        node.input.append(b_name)
                after = w.shape[0] if op != "ConvTranspose" else w.shape[1]
                if after != before:
                    report.layers.append(LayerChannels(name, op, before, after))
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
    for v in g.output:
        if v.name in drop_tensor:  # never: graph outputs are blocked
            raise ConversionError(f"pruning would change graph output '{v.name}'")
    used = {i for n in g.node for i in n.input} | graph_output_names(g)
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
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
    "PrunePlan",
    "LayerChannels",
    "PruneOptions",
    "PruneReport",
    "channel_groups",
    "conv_flops",
    "importance",
    "plan_pruning",
    "prune_channels",
]
