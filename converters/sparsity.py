"""2:4 semi-structured sparsity: in every group of four consecutive input channels of a weight (at each output
channel and kernel tap), two weights are zero. TensorRT runs such layers on sparse tensor cores (Ampere GPUs, Jetson
Orin) when the engine is built with sparse weights allowed; ONNX Runtime's CPU kernels are dense, so on a CPU
2:4 changes accuracy only, never speed.

Which two go, per group:

- `Saliency.MAGNITUDE`: the two smallest |w|; the other two are kept as they are.
- `Saliency.OBS` (default): optimal brain surgeon on calibration data, column by column as in SparseGPT (Frantar
  and Alistarh, 2023): with H = X^T X of the layer's inputs, the pair whose removal costs least, w^2 / [H^-1]_jj^2,
  goes, and each removal is compensated on the weights not yet visited (a least-squares update per output
  channel), so that the layer's output on the calibration inputs changes as little as possible.

`check_2_4` verifies the pattern on the layers a model claims, in FP32, FP16 (Cast) or INT8 (DequantizeLinear) form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from converters.evaluate import Feed
from converters.graph import drop_unused_initializers, initializers, producers, replace_initializer
from converters.kinds import Saliency as Saliency  # defined with the other option enums, light to import
from converters.patches import conv_out_hw, frames, im2col, plain_conv, sample_positions
from converters.progress import Eta, Progress

GROUP = 4  # weights per group along the input-channel axis
KEEP = 2  # of them nonzero
_GRAM_BYTES = 512 << 20  # most memory the layers' X^T X may hold at once


@dataclass(frozen=True)
class SparsityOptions:
    saliency: Saliency = Saliency.OBS
    damp: float = 1e-2  # added to X^T X's diagonal, relative to its mean, before inverting
    positions: int = 512  # output positions sampled per frame for X^T X


@dataclass(frozen=True)
class SparseLayer:
    node: str
    op: str
    weights: int  # in the layer
    loss: float | None = None  # drop of the task metric with only this layer made 2:4 (None: not measured)


@dataclass
class SparsityReport:
    eligible: list[SparseLayer] = field(default_factory=list)  # layers whose weights can take the pattern
    applied: list[str] = field(default_factory=list)  # of them, the ones made 2:4 (node names)
    skipped: dict[str, str] = field(default_factory=dict)  # weighted layers that cannot, and why
    weights_total: int = 0  # in every weighted layer of the model
    verified: bool = False  # check_2_4 found the pattern on every applied layer of the final model

    @property
    def weights_2_4(self) -> int:
        """Weights in the applied layers (half of them are zero)."""
        return sum(e.weights for e in self.eligible if e.node in self.applied)

    @property
    def fraction(self) -> float:
        return self.weights_2_4 / self.weights_total if self.weights_total else 0.0


def _input_axis(node: onnx.NodeProto) -> int | None:
    """The weight axis along which the groups of four run (the reduction axis), or None if not supported."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 0
    if node.op_type == "MatMul":
        return 0
    return None


def eligible_layers(model: onnx.ModelProto) -> tuple[list[SparseLayer], dict[str, str]]:
    """Layers whose weights can be made 2:4 here, and the weighted layers that cannot, with why."""
    inits = initializers(model.graph)
    ok: list[SparseLayer] = []
    skipped: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose") or len(node.input) < 2:
            continue
        if node.input[1] not in inits:
            skipped[node.name] = "its weight is not a constant"
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        axis = _input_axis(node)
        if axis is None or w.ndim < 2:
            skipped[node.name] = f"{node.op_type} has no 2:4 kernels"
        elif node.op_type == "Conv" and not plain_conv(node, w):
            skipped[node.name] = "grouped, depthwise or auto-padded convolutions are not made 2:4"
        elif w.shape[axis] % GROUP:
            skipped[node.name] = f"{w.shape[axis]} input channels are not a multiple of {GROUP}"
        else:
            ok.append(SparseLayer(node.name, node.op_type, int(w.size)))
    return ok, skipped


def _grouped(w: np.ndarray, axis: int) -> np.ndarray:
    """The weight as [rows, columns] with the input-channel axis innermost, so that each run of four columns is
    one group: Conv [O, C, kh, kw] -> [O, kh * kw * C]; Gemm/MatMul -> [O, K]."""
    if w.ndim == 4:
        return np.transpose(w, (0, 2, 3, 1)).reshape(w.shape[0], -1)
    return w if axis == 1 else w.T


def _ungrouped(m: np.ndarray, like: np.ndarray, axis: int) -> np.ndarray:
    if like.ndim == 4:
        o, c, kh, kw = like.shape
        return np.transpose(m.reshape(o, kh, kw, c), (0, 3, 1, 2))
    return m if axis == 1 else m.T


def prune_2_4(w: np.ndarray, hessian: np.ndarray | None, damp: float = 1e-2) -> np.ndarray:
    """`w` as [rows, columns] (groups of four consecutive columns) made 2:4. Without `hessian` (X^T X over the
    same columns), by magnitude; with it, by optimal brain surgeon with compensation (SparseGPT's column order)."""
    w = w.astype(np.float64).copy()
    rows, cols = w.shape
    if hessian is None:
        groups = np.abs(w).reshape(rows, cols // GROUP, GROUP)
        drop = np.argsort(groups, axis=2)[:, :, : GROUP - KEEP]
        mask = np.ones_like(groups, dtype=bool)
        np.put_along_axis(mask, drop, False, axis=2)
        return np.asarray(w * mask.reshape(rows, cols))
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0  # inputs that were always zero: their weights cost nothing
    h[dead, dead] = 1.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(cols)
    upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U: row j of U updates the columns after j
    for start in range(0, cols, GROUP):
        d = np.diag(upper)[start : start + GROUP]
        score = w[:, start : start + GROUP] ** 2 / d**2
        drop = np.argsort(score, axis=1)[:, : GROUP - KEEP]
        keep = np.ones((rows, GROUP), dtype=bool)
        np.put_along_axis(keep, drop, False, axis=1)
        for j in range(start, start + GROUP):
            q = w[:, j] * keep[:, j - start]
            err = (w[:, j] - q) / upper[j, j]
            w[:, j] = q
            w[:, j + 1 :] -= np.outer(err, upper[j, j + 1 :])
    return w


def _hessians(
    model: onnx.ModelProto, layers: Sequence[str], feeds: Sequence[Feed], options: SparsityOptions
) -> dict[str, np.ndarray]:
    """X^T X of each layer's inputs over the grouped columns (kernel taps outer, channels inner)."""
    by_name = {n.name: n for n in model.graph.node}
    inits = initializers(model.graph)
    shapes = {n: numpy_helper.to_array(inits[by_name[n].input[1]]).shape for n in layers}
    out: dict[str, np.ndarray] = {}
    pending = list(layers)
    rng = np.random.default_rng(0)
    while pending:
        chunk: list[str] = []
        size = 0
        for name in pending:
            shape = shapes[name]
            cols = int(np.prod(shape[1:])) if len(shape) == 4 else shape[_input_axis(by_name[name]) or 0]
            size += 8 * cols * cols
            if chunk and size > _GRAM_BYTES:
                break
            chunk.append(name)
        pending = pending[len(chunk) :]
        for values in frames(model, feeds, {by_name[n].input[0] for n in chunk}):
            for name in chunk:
                node, shape = by_name[name], shapes[name]
                x = values[node.input[0]]
                if len(shape) == 4:
                    out_hw = conv_out_hw(x.shape, node, shape)
                    patches = im2col(x, node, shape, sample_positions(out_hw, options.positions, rng))
                    o, c, kh, kw = shape
                    patches = np.transpose(patches.reshape(-1, c, kh, kw), (0, 2, 3, 1)).reshape(len(patches), -1)
                else:
                    patches = x.reshape(-1, x.shape[-1]).astype(np.float64)
                g = patches.T @ patches
                out[name] = out[name] + g if name in out else g
    return out


def sparse_weights(
    model: onnx.ModelProto,
    layers: Sequence[str],
    feeds: Sequence[Feed],
    options: SparsityOptions = SparsityOptions(),
    say: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Each layer's weight made 2:4 (in its own layout), computed once so that any subset can be applied."""
    tell: Progress = say or (lambda _m: None)
    by_name = {n.name: n for n in model.graph.node}
    inits = initializers(model.graph)
    hessians: Mapping[str, np.ndarray] = {}
    if options.saliency is Saliency.OBS:
        tell(f"  measuring the inputs of {len(layers)} layer(s) on {len(feeds)} frames")
        hessians = _hessians(model, layers, feeds, options)
    out = {}
    eta = Eta(tell, "2:4 weights", len(layers))
    for i, name in enumerate(layers):
        node = by_name[name]
        w = numpy_helper.to_array(inits[node.input[1]])
        axis = _input_axis(node) or 0
        sparse = prune_2_4(_grouped(w, axis), hessians.get(name), options.damp)
        out[name] = _ungrouped(sparse, w, axis).astype(w.dtype)
        eta.step(i + 1)
    return out


def apply_sparse(model: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose listed layers take the given (2:4) weights, each under its own initializer."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for node in work.graph.node:
        if node.name in weights:
            replace_initializer(work.graph, f"{node.name}_2to4_w", weights[node.name])
            node.input[1] = f"{node.name}_2to4_w"
    drop_unused_initializers(work.graph)
    return work


def _weight_of(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray | None:
    """A layer's weight as stored: a constant, or the constant behind a DequantizeLinear (INT8) or Cast (FP16)."""
    inits = initializers(model.graph)
    made_by = producers(model.graph)
    name = node.input[1]
    for _ in range(3):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        src = made_by.get(name)
        if src is None or src.op_type not in ("DequantizeLinear", "Cast", "Identity"):
            return None
        name = src.input[0]
    return None


def check_2_4(model: onnx.ModelProto, layers: Sequence[str]) -> list[str]:
    """Problems with the 2:4 pattern on the claimed `layers` (empty: every one has at most two nonzero weights in
    every group of four input channels)."""
    by_name = {n.name: n for n in model.graph.node}
    problems = []
    for name in layers:
        node = by_name.get(name)
        if node is None:
            problems.append(f"'{name}': no such node")
            continue
        w = _weight_of(model, node)
        axis = _input_axis(node)
        if w is None or axis is None:
            problems.append(f"'{name}': its weight cannot be read as a constant")
            continue
        if w.shape[axis] % GROUP:
            problems.append(f"'{name}': {w.shape[axis]} input channels are not a multiple of {GROUP}")
            continue
        grouped = _grouped(w, axis)
        nonzero = (grouped.reshape(grouped.shape[0], -1, GROUP) != 0).sum(axis=2)
        bad = int((nonzero > KEEP).sum())
        if bad:
            problems.append(
                f"'{name}': {bad} of {nonzero.size} groups of {GROUP} have more than {KEEP} nonzero weights"
            )
    return problems


__all__ = [
    "GROUP",
    "KEEP",
    "Saliency",
    "SparseLayer",
    "SparsityOptions",
    "SparsityReport",
    "apply_sparse",
    "check_2_4",
    "eligible_layers",
    "prune_2_4",
    "sparse_weights",
]
