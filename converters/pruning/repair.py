"""Removal and repair: the chosen groups sliced out of a copy of the graph (weights, biases, per-channel constants,
shape constants), consumers given the removed channels' mean contribution, and every plain Conv downstream refitted
by ridge least squares on the pruned model's inputs to the unpruned model's outputs (`NormalEquations`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from converters.evaluate import Feed
from converters.graph import ConversionError, copy_model, drop_unused_initializers, initializers, replace_initializer
from converters.patches import frames, im2col, plain_conv, sample_positions
from converters.progress import Eta, Progress
from converters.pruning.groups import ELEMENTWISE, WEIGHTED, ChannelGroup, ChannelStats, Role, tensor_shapes
from converters.pruning.options import LayerChannels, PruneOptions


def slice_channels(a: np.ndarray, axis: int, drop: Sequence[int]) -> np.ndarray:
    keep = np.setdiff1d(np.arange(a.shape[axis]), np.asarray(drop, dtype=np.int64))
    return np.take(a, keep, axis=axis)


class NormalEquations:
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


def kept_columns(channels: int, drop: Sequence[int], k: int) -> np.ndarray:
    """The im2col columns of the kept input channels (channel-major, k = kh * kw per channel)."""
    kept = np.setdiff1d(np.arange(channels), np.asarray(drop, dtype=np.int64))
    return np.asarray((kept[:, None] * k + np.arange(k)[None, :]).reshape(-1), np.int64)


def bias_correction(w: np.ndarray, drop: Sequence[int], mean: np.ndarray, axis: int) -> np.ndarray:
    """What the removed input channels added to each output on average (their mean times their weights); the
    channels are on the weight's `axis` (`Role.axis`), the outputs on the other of the first two."""
    d = np.asarray(drop, dtype=np.int64)
    removed = np.moveaxis(w.astype(np.float64), axis, 0)[d]  # [dropped, O, (kernel)]
    return np.asarray((removed.sum(axis=tuple(range(2, removed.ndim))) * mean[d][:, None]).sum(axis=0), np.float64)


def local_error(eq: NormalEquations, keep: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    """Sum over the sampled positions of ||y - (w x + b)||^2 for weights `w` [O, keep] on the columns `keep`,
    from the accumulated sums (no activations kept): the local error of a candidate consumer."""
    g = eq.gram[np.ix_(keep, keep)]
    return float(
        eq.syy - 2.0 * np.sum(w * eq.xty[keep].T) - 2.0 * b @ eq.sy + np.sum((w @ g) * w)
        + 2.0 * b @ (w @ eq.sx[keep]) + eq.n * b @ b
    )  # fmt: skip


@dataclass
class Removal:
    model: onnx.ModelProto
    drop_tensor: dict[str, list[int]]  # tensor -> channels removed from it
    layers: list[LayerChannels]


def remove_groups(
    model: onnx.ModelProto,
    chosen: Sequence[ChannelGroup],
    stats: Mapping[str, ChannelStats],
    refits: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    shapes: Mapping[str, list[int]] | None = None,
) -> Removal:
    """Slices the chosen groups out of a copy of `model`. A consumer that lost input channels takes its weights
    from `refits` (all output rows, kept input columns, and bias) where given, else keeps its other weights and
    absorbs the removed channels' mean contribution in its bias. `shapes`: the model's, if already inferred."""
    shapes = shapes if shapes is not None else tensor_shapes(model)
    drops: dict[tuple[str, Role], list[int]] = defaultdict(list)
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
        if op in WEIGHTED and len(node.input) > 1 and node.input[1] in arrays:
            w = arrays[node.input[1]]
            has_b = len(node.input) > 2 and bool(node.input[2]) and node.input[2] in arrays
            b = arrays[node.input[2]].astype(np.float64) if has_b else None
            before = w.shape[0] if op != "ConvTranspose" else w.shape[1]
            consumer_role = next((r for (n, r) in drops if n == name and r.reads), None)
            if consumer_role is not None:
                dropped = sorted(drops[(name, consumer_role)])
                if refits is not None and name in refits:
                    flat, b = refits[name]
                    w = flat.reshape(w.shape[0], w.shape[1] - len(dropped), *w.shape[2:])
                else:
                    shift = bias_correction(w, dropped, stats[node.input[0]].mean, consumer_role.axis(op))
                    w = slice_channels(w, consumer_role.axis(op), dropped)
                    b = (b if b is not None else np.zeros(shift.shape[0])) + shift
            for role in (Role.PRODUCER, Role.DEPTHWISE):
                if (name, role) in drops:
                    dropped = sorted(drops[(name, role)])
                    w = slice_channels(w, role.axis(op), dropped)
                    if b is not None:
                        b = slice_channels(b, 0, dropped)
                    if role is Role.DEPTHWISE:
                        for a in node.attribute:
                            if a.name == "group":
                                a.i = w.shape[0]
            if w is not arrays[node.input[1]]:
                set_weights(g, node, np.asarray(w, arrays[node.input[1]].dtype), b, "pruned")
                after = w.shape[0] if op != "ConvTranspose" else w.shape[1]
                if after != before:
                    layers.append(LayerChannels(name, op, before, after))
        elif op in ("BatchNormalization", "InstanceNormalization", "PRelu") or op in ELEMENTWISE:
            y = node.output[0]
            if y not in drop_tensor:
                continue
            rank, n = len(shapes[y]), shapes[y][1]
            for i, t in enumerate(node.input):
                if t not in arrays or (i == 0 and op != "PRelu" and op not in ELEMENTWISE):
                    continue
                a = arrays[t]
                if op in ("BatchNormalization", "InstanceNormalization"):
                    new = slice_channels(a, 0, drop_tensor[y])
                else:  # broadcast against the activation: slice the channel axis if it has one
                    aligned: np.ndarray = a.reshape((1,) * (rank - a.ndim) + a.shape)
                    if aligned.shape[1] != n or n == 1:
                        continue
                    new = slice_channels(aligned, 1, drop_tensor[y])
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
    return Removal(work, dict(drop_tensor), layers)


def set_weights(g: onnx.GraphProto, node: onnx.NodeProto, w: np.ndarray, b: np.ndarray | None, tag: str) -> None:
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


def refit_downstream(
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
    shapes = tensor_shapes(original)
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
            eq = NormalEquations(int(np.prod(w.shape[1:])), w.shape[0])
            for i, values in enumerate(frames(pruned, feeds, {n.input[0]})):
                eq.add(im2col(values[n.input[0]], n, w.shape, picks[n.name][i]), targets[n.name][i])
            prior = w.reshape(w.shape[0], -1).astype(np.float64)
            new_w, new_b = eq.solve(np.arange(prior.shape[1]), prior, options.ridge)
            set_weights(g, n, new_w.reshape(w.shape).astype(w.dtype), new_b, "refit")
            refitted.append(n.name)
            del targets[n.name]
            eta.step(len(refitted))
        start += len(chunk)
    drop_unused_initializers(g)
    return refitted
