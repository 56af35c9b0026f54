"""Activations for least-squares fits: a model's tensors frame by frame, and a Conv's input patches (im2col) at
sampled output positions. Shared by channel pruning and 2:4 sparsity."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx

from converters.evaluate import Feed, session, with_float_activations_as_outputs


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def upto(model: onnx.ModelProto, tensors: set[str]) -> onnx.ModelProto:
    """A copy whose outputs are `tensors`, without the nodes they do not need (ONNX Runtime would run them)."""
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return with_float_activations_as_outputs(model, tensors)  # subgraphs may read outer tensors: keep it all
    need, keep = set(tensors), []
    for node in reversed(g.node):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.node[:], probe.graph.output[:], probe.graph.value_info[:]
    probe.graph.node.extend(reversed(keep))
    inputs = {i.name for i in g.input}
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in sorted(tensors) if t not in inputs
    )
    live = [t for t in probe.graph.initializer if t.name in need]
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(live)
    return probe


def frames(model: onnx.ModelProto, feeds: Sequence[Feed], tensors: set[str]) -> Iterator[dict[str, np.ndarray]]:
    """Each frame's values of `tensors`, one frame at a time (memory holds one frame's activations)."""
    probe = upto(model, tensors)
    names = [o.name for o in probe.graph.output if o.name in tensors]
    sess = session(probe) if names else None
    for feed in feeds:
        values = dict(zip(names, sess.run(names, feed))) if sess is not None else {}
        values.update({n: v for n, v in feed.items() if n in tensors})
        yield values


def conv_pads(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "pads"), [0, 0, 0, 0])


def conv_strides(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])


def conv_dilations(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "dilations"), [1, 1])


def plain_conv(node: onnx.NodeProto, w: np.ndarray) -> bool:
    """A plain 2-D Conv (group 1, explicit pads): what the least-squares refit knows how to unfold."""
    auto_pad = next((a.s for a in node.attribute if a.name == "auto_pad"), b"NOTSET")
    return node.op_type == "Conv" and w.ndim == 4 and _attr(node, "group", 1) == 1 and auto_pad in (b"NOTSET", b"")


def sample_positions(out_hw: Sequence[int], positions: int, rng: np.random.Generator) -> np.ndarray:
    n = int(out_hw[0] * out_hw[1])
    return np.sort(rng.choice(n, size=min(n, positions), replace=False))


def im2col(x: np.ndarray, node: onnx.NodeProto, w_shape: Sequence[int], picks: np.ndarray) -> np.ndarray:
    """Patches [positions, C * kh * kw] of a Conv's input at the sampled output positions `picks` (flat)."""
    kh, kw = w_shape[2], w_shape[3]
    strides, dil, pads = conv_strides(node), conv_dilations(node), conv_pads(node)
    xp = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    out_w = (xp.shape[2] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    rows, cols = picks // out_w, picks % out_w
    patches = np.empty((len(picks), x.shape[1], kh, kw), np.float64)
    for i in range(kh):
        for j in range(kw):
            patches[:, :, i, j] = xp[:, rows * strides[0] + i * dil[0], cols * strides[1] + j * dil[1]].T
    return patches.reshape(len(picks), -1)


def conv_out_hw(x_shape: Sequence[int], node: onnx.NodeProto, w_shape: Sequence[int]) -> tuple[int, int]:
    """A 2-D Conv's output height and width for an input of `x_shape`."""
    pads, strides, dil = conv_pads(node), conv_strides(node), conv_dilations(node)
    kh, kw = w_shape[2], w_shape[3]
    return (
        (x_shape[2] + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1,
        (x_shape[3] + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1,
    )
