"""Channel groups and their importance: which channels of a prepared graph must go together (union-find over
(tensor, channel) pairs, `channel_groups`), how each weighted op uses them (`Role`, which owns the weight axis), the
graph's FLOPs, and each group's share of its consumers' input energy (`importance`)."""

from __future__ import annotations

import enum
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from converters.evaluate import Feed
from converters.graph import initializers, real_inputs
from converters.patches import frames

# Ops that apply to each channel independently: channel c of input 0 is channel c of output 0.
_PER_CHANNEL = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Identity", "Dropout",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample",
    "BatchNormalization", "InstanceNormalization", "Cast",
}  # fmt: skip
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"}
_FLATTEN = {"Flatten", "Reshape", "Squeeze"}
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class Role(str, enum.Enum):
    """How a weighted op uses one channel, and so which axis of its weight that channel indexes (`axis`): the one
    rule slicing, importance and bias correction share."""

    PRODUCER = "producer"  # writes output channel c: weight axis 0 (ConvTranspose [C, O, k, k]: axis 1)
    CONSUMER = "consumer"  # Conv reads input channel c: weight [O, C, k, k], axis 1
    CONSUMER_CONVT = "consumer_convt"  # ConvTranspose reads input channel c: weight [C, O, k, k], axis 0
    CONSUMER_T = "consumer_t"  # Gemm with transB reads feature c: weight [O, C], axis 1
    CONSUMER_ROW = "consumer_row"  # MatMul, or Gemm without transB, reads feature c: weight [C, O], axis 0
    DEPTHWISE = "depthwise"  # a depthwise Conv carries channel c through: weight [C, 1, k, k], axis 0

    @property
    def reads(self) -> bool:
        """Whether the op reads the channel as an input (a consumer)."""
        return self in (Role.CONSUMER, Role.CONSUMER_CONVT, Role.CONSUMER_T, Role.CONSUMER_ROW)

    def axis(self, op_type: str) -> int:
        """The weight axis whose entries this use of a channel owns (removing the channel removes them)."""
        if self in (Role.CONSUMER, Role.CONSUMER_T):
            return 1
        return 1 if self is Role.PRODUCER and op_type == "ConvTranspose" else 0


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
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


def int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def conv_flops(model: onnx.ModelProto) -> tuple[int, int]:
    """(multiply-accumulates x 2 of every Conv, ConvTranspose, Gemm and MatMul with a constant weight, their
    parameter count): what pruning reduces."""
    shapes, inits = tensor_shapes(model), initializers(model.graph)
    flops = params = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if node.input[1] not in inits:
            continue
        w = shapes[node.input[1]]
        params += math.prod(w) + (math.prod(shapes[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0)
        if node.output[0] in shapes:
            flops += node_flops(node, shapes)
    return flops, params


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
class Use:
    """A weighted op's use of one channel (the `Role` says how, and which weight axis it indexes)."""

    node: str
    role: Role
    index: int


@dataclass
class ChannelGroup:
    members: list[tuple[str, int]]  # (tensor, channel)
    uses: list[Use]
    score: float = 0.0
    cost: float = 0.0  # what removing it saves in the budget's measure (FLOPs, or microseconds)


def channel_groups(model: onnx.ModelProto) -> tuple[list[ChannelGroup], list[str]]:
    """Prunable channel groups of a prepared model, and why the other channels are not prunable."""
    g = model.graph
    shapes, inits = tensor_shapes(model), initializers(g)
    uf = _UnionFind()
    blocked: set[tuple[str, int]] = set()
    reasons: dict[str, str] = {}
    uses: dict[tuple[str, int], list[Use]] = defaultdict(list)

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
            group = int_attr(node, "group", 1)
            w = shapes[node.input[1]]
            x, y = node.input[0], node.output[0]
            depthwise = op == "Conv" and group > 1 and w[1] == 1 and w[0] == group == channels(x)
            if depthwise:
                tie(x, y)
                for c in range(channels(y)):
                    uses[(y, c)].append(Use(name, Role.DEPTHWISE, c))
            elif group == 1:
                reads = Role.CONSUMER_CONVT if op == "ConvTranspose" else Role.CONSUMER
                for c in range(channels(x)):
                    uses[(x, c)].append(Use(name, reads, c))
                    uf.find((x, c))
                for c in range(channels(y)):
                    uses[(y, c)].append(Use(name, Role.PRODUCER, c))
                    uf.find((y, c))
            else:
                block(x, f"grouped {op} '{name}' (not depthwise)")
                block(y, f"grouped {op} '{name}' (not depthwise)")
        elif op in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            x = node.input[0]
            trans_b = op == "Gemm" and int_attr(node, "transB", 0) == 1
            if len(shapes.get(x, [])) == 2 and not (op == "Gemm" and int_attr(node, "transA", 0)):
                for c in range(channels(x)):
                    uses[(x, c)].append(Use(name, Role.CONSUMER_T if trans_b else Role.CONSUMER_ROW, c))
                    uf.find((x, c))
            else:
                block(x, f"{op} '{name}' reads a tensor that is not [N, features]")
            block(node.output[0], f"{op} outputs keep their features")
        elif op in _PER_CHANNEL and ins:
            tie(ins[0], node.output[0])
            for t in ins[1:]:
                block(t, f"{op} '{name}' reads a second activation")
        elif op in ELEMENTWISE:
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
            axis = int_attr(node, "axis", 1)
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
        if not any(u.role is Role.PRODUCER for u in member_uses):
            continue
        groups.append(ChannelGroup(sorted(members), member_uses))
    why = [f"{cause} (e.g. '{tensor}')" for cause, tensor in reasons.items()]
    return groups, why


def consumer_inputs(model: onnx.ModelProto, groups: Sequence[ChannelGroup]) -> dict[str, str]:
    by_name = {n.name: n for n in model.graph.node}
    return {u.node: by_name[u.node].input[0] for grp in groups for u in grp.uses if u.role.reads}


@dataclass
class ChannelStats:
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


def channel_stats(model: onnx.ModelProto, feeds: Sequence[Feed], tensors: set[str]) -> dict[str, ChannelStats]:
    stats: dict[str, ChannelStats] = {}
    for values in frames(model, feeds, tensors):
        for name, x in values.items():
            if name not in stats:
                stats[name] = ChannelStats(np.zeros(x.shape[1]), np.zeros(x.shape[1]))
            stats[name].add(x)
    return stats


def _column_energy(w: np.ndarray, axis: int) -> np.ndarray:
    """||W[:, c]||^2 for each input channel c of a consumer's weight, the channel on `axis` (`Role.axis`)."""
    squares = np.moveaxis(w.astype(np.float64) ** 2, axis, 0)
    return np.asarray(squares.reshape(squares.shape[0], -1).sum(axis=1), np.float64)


def importance(model: onnx.ModelProto, groups: Sequence[ChannelGroup], stats: Mapping[str, ChannelStats]) -> None:
    """Sets each group's score: the fraction of its consumers' input energy that it carries, summed."""
    inits = initializers(model.graph)
    by_name = {n.name: n for n in model.graph.node}
    energy: dict[str, np.ndarray] = {}  # consumer -> per-input-channel contribution energy
    for grp in groups:
        for u in grp.uses:
            if not u.role.reads or u.node in energy:
                continue
            node = by_name[u.node]
            ex2 = stats[node.input[0]].mean_square
            energy[u.node] = (
                _column_energy(numpy_helper.to_array(inits[node.input[1]]), u.role.axis(node.op_type)) * ex2
            )
    for grp in groups:
        grp.score = sum(
            float(energy[u.node][u.index] / max(energy[u.node].sum(), 1e-30)) for u in grp.uses if u.role.reads
        )


def node_flops(node: onnx.NodeProto, shapes: Mapping[str, list[int]]) -> int:
    w = shapes[node.input[1]]
    out = shapes.get(node.output[0], [1])
    if node.op_type == "ConvTranspose":
        x = shapes.get(node.input[0], out)
        return 2 * math.prod(w) * math.prod(x[2:]) * x[0]
    if node.op_type == "Conv":
        return 2 * math.prod(w) * math.prod(out[2:]) * out[0]
    return 2 * math.prod(w) * math.prod(out[:-1])
