"""Fusions that make a prepared graph smaller and faster without changing what it computes: BatchNormalization
folded into the Conv before it, hard-swish written as elementwise ops fused into one HardSwish (opset >= 14), and
Mul/Add/Sub/Div by a per-channel constant folded into the adjacent Conv's weights and bias. Each counts what it did
in a `FusionCounts` (`prepare.PrepareReport` is one) and leaves the graph valid."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters.graph import (
    all_names,
    consumers,
    graph_output_names,
    initializers,
    opset_of,
    producers,
    replace_initializer,
    unique_name,
)
from converters.kinds import DEFAULT_OPSET as DEFAULT_OPSET

log = logging.getLogger("edgert.convert")


class FusionCounts(Protocol):
    """Where the fusions count what they did (`converters.prepare.PrepareReport` has these fields)."""

    batchnorms_folded: int
    hardswish_fused: int
    affine_folded: int


def _bn_factors(bn: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> tuple[np.ndarray, np.ndarray] | None:
    if len(bn.input) != 5 or not all(n in inits for n in bn.input[1:]):
        return None
    scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    factor = scale / np.sqrt(var + eps)
    return factor, bias - mean * factor


def fold_batchnorm(model: onnx.ModelProto, report: FusionCounts) -> onnx.ModelProto:
    """Conv/ConvTranspose -> BatchNormalization (inference) becomes one Conv/ConvTranspose with new weights."""
    g = model.graph
    inits = initializers(g)
    users = consumers(g)
    outputs = graph_output_names(g)
    removed: set[int] = set()
    for node in g.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        out = node.output[0]
        next_nodes = users.get(out, [])
        if len(next_nodes) != 1 or out in outputs:
            continue
        bn = next_nodes[0]
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        factors = _bn_factors(bn, inits)
        if factors is None:
            continue
        factor, shift = factors
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv":
            w = w * factor.reshape(-1, *([1] * (w.ndim - 1)))
        else:  # ConvTranspose weight is [C_in, C_out / group, k...]: output channels sit on axis 1, per group
            c_in, c_out_g = w.shape[0], w.shape[1]
            w = (
                w.reshape(group, c_in // group, c_out_g, *w.shape[2:])
                * factor.reshape(group, 1, c_out_g, *([1] * (w.ndim - 2)))
            ).reshape(w.shape)
        b = (
            numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2]
            else 0.0
        )
        b = b * factor + shift
        dtype = numpy_helper.to_array(inits[node.input[1]]).dtype
        w_name, b_name = f"{node.name}_bnfold_w", f"{node.name}_bnfold_b"
        replace_initializer(g, w_name, w.astype(dtype))
        replace_initializer(g, b_name, np.asarray(b, dtype))
        node.input[1] = w_name
        if len(node.input) > 2:
            node.input[2] = b_name
        else:
            node.input.append(b_name)
        node.output[0] = bn.output[0]
        removed.add(id(bn))
        report.batchnorms_folded += 1
    keep = [n for n in g.node if id(n) not in removed]
    del g.node[:]
    g.node.extend(keep)
    return model


def _scalar_const(inits: Mapping[str, onnx.TensorProto], name: str) -> float | None:
    if name not in inits:
        return None
    a = numpy_helper.to_array(inits[name])
    return float(a.reshape(-1)[0]) if a.size == 1 and a.dtype.kind == "f" else None


def _clip_bounds(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> tuple[float, float] | None:
    """(min, max) of a Clip whose bounds are constants (opset >= 11 inputs or older attributes)."""
    lo = _scalar_const(inits, node.input[1]) if len(node.input) > 1 and node.input[1] else None
    hi = _scalar_const(inits, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    for a in node.attribute:
        lo = a.f if a.name == "min" else lo
        hi = a.f if a.name == "max" else hi
    return None if lo is None or hi is None else (lo, hi)


def _other_input(node: onnx.NodeProto, tensor: str) -> str | None:
    if len(node.input) != 2 or tensor not in node.input:
        return None
    return str(node.input[1] if node.input[0] == tensor else node.input[0])


def fuse_hardswish(model: onnx.ModelProto, report: FusionCounts) -> onnx.ModelProto:
    """x * clip(x + 3, 0, 6) / 6, in any of its exported spellings, becomes HardSwish(x).

    Spellings: Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(., 6) or Mul(., 1/6); or the division first,
    Clip -> Div 6 (or Mul 1/6) -> Mul(x, .). Intermediate tensors must have no other reader. Needs opset 14.
    """
    g = model.graph
    if opset_of(model) < 14:
        return model
    inits = initializers(g)
    users = consumers(g)
    outputs = graph_output_names(g)
    taken = all_names(g)

    def only(tensor: str) -> onnx.NodeProto | None:
        after = users.get(tensor, [])
        return after[0] if len(after) == 1 and tensor not in outputs else None

    def is_sixth(node: onnx.NodeProto | None, tensor: str) -> bool:
        if node is None:
            return False
        c = _other_input(node, tensor)
        v = None if c is None else _scalar_const(inits, c)
        if v is None or (node.op_type == "Div" and node.input[0] != tensor):
            return False
        return bool(
            (node.op_type == "Div" and abs(v - 6.0) < 1e-6) or (node.op_type == "Mul" and abs(v - 1 / 6) < 1e-6)
        )

    removed: set[int] = set()
    for add in list(g.node):
        if add.op_type != "Add" or id(add) in removed:
            continue
        x = next((t for t in add.input if t not in inits), None)
        c = _other_input(add, x) if x else None
        if x is None or c is None or _scalar_const(inits, c) != 3.0:
            continue
        clip = only(add.output[0])
        if clip is None or clip.op_type != "Clip" or clip.input[0] != add.output[0]:
            continue
        if _clip_bounds(clip, inits) != (0.0, 6.0):
            continue
        step = only(clip.output[0])
        if step is None:
            continue
        if step.op_type == "Mul" and _other_input(step, clip.output[0]) == x:  # x * clip, then / 6
            last = only(step.output[0])
            if not is_sixth(last, step.output[0]):
                continue
            chain = [add, clip, step, last]
        elif is_sixth(step, clip.output[0]):  # clip / 6, then x *
            last = only(step.output[0])
            if last is None or last.op_type != "Mul" or _other_input(last, step.output[0]) != x:
                continue
            chain = [add, clip, step, last]
        else:
            continue
        assert last is not None
        name = unique_name(taken, f"{add.name or x}_hardswish")
        hs = helper.make_node("HardSwish", [x], [last.output[0]], name=name)
        last.CopyFrom(hs)
        removed.update(id(n) for n in chain[:-1])
        report.hardswish_fused += 1
    if removed:
        keep = [n for n in g.node if id(n) not in removed]
        del g.node[:]
        g.node.extend(keep)
    return model


def _channel_vector(inits: Mapping[str, onnx.TensorProto], name: str, channels: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts along the channel axis only (scalar, [C,1,1], [1,C,1,1]...) as a length-C vector."""
    if name not in inits:
        return None
    a = numpy_helper.to_array(inits[name])
    if a.dtype.kind != "f" or a.ndim > rank:
        return None
    if a.size == 1:
        return np.full(channels, float(a.reshape(-1)[0]))
    shape = (1,) * (rank - a.ndim) + a.shape
    if len(shape) < 2 or shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return a.reshape(-1).astype(np.float64)


def _affine_step(
    node: onnx.NodeProto, tensor: str, inits: Mapping[str, onnx.TensorProto], channels: int, rank: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel of an elementwise op applied to `tensor` with a constant, or None."""
    c = _other_input(node, tensor)
    v = None if c is None else _channel_vector(inits, c, channels, rank)
    if v is None:
        return None
    one, zero = np.ones(channels), np.zeros(channels)
    if node.op_type == "Mul":
        return v, zero
    if node.op_type == "Add":
        return one, v
    if node.op_type == "Sub":
        return (one, -v) if node.input[0] == tensor else (-one, v)
    if node.op_type == "Div" and node.input[0] == tensor and np.all(v != 0):
        return 1.0 / v, zero
    return None


def _conv_info(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> tuple[np.ndarray, int] | None:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
        return None
    w = numpy_helper.to_array(inits[node.input[1]])
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return w.astype(np.float64), group


def _set_conv_params(g: onnx.GraphProto, conv: onnx.NodeProto, w: np.ndarray, b: np.ndarray, dtype: np.dtype) -> None:
    w_name, b_name = f"{conv.name}_affine_w", f"{conv.name}_affine_b"
    replace_initializer(g, w_name, w.astype(dtype))
    replace_initializer(g, b_name, b.astype(dtype))
    conv.input[1] = w_name
    if len(conv.input) > 2:
        conv.input[2] = b_name
    else:
        conv.input.append(b_name)


def _unpadded(node: onnx.NodeProto) -> bool:
    attrs = {a.name: a for a in node.attribute}
    if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"NOTSET", b"VALID"):
        return False
    return "pads" not in attrs or all(p == 0 for p in attrs["pads"].ints)


def fold_affine(model: onnx.ModelProto, report: FusionCounts) -> onnx.ModelProto:
    """Fold per-channel Mul/Add/Sub/Div by constants into an adjacent Conv (exact up to float rounding).

    After a Conv: y = s * conv(x) + t scales the output channels' weights and bias. Before an unpadded Conv:
    conv(s * x + t) = conv'(x) with the input channels' weights scaled and t pushed through the weights into the
    bias. A padded Conv is left alone there: its zero padding would become t after folding, which is not exact.
    Every folded intermediate tensor must have no other reader.
    """
    g = model.graph
    outputs = graph_output_names(g)
    changed = True
    while changed:  # one fold per pass: each changes the graph the next one reads
        changed = False
        inits = initializers(g)
        users = consumers(g)
        made = producers(g)
        removed: onnx.NodeProto | None = None
        for conv in g.node:
            if conv.op_type != "Conv":
                continue
            out = conv.output[0]
            after = users.get(out, [])
            follower = after[0] if len(after) == 1 and out not in outputs else None
            if follower is not None and follower.op_type not in ("Mul", "Add", "Sub", "Div"):
                follower = None
            src = made.get(conv.input[0])
            leader = (
                src
                if src is not None
                and src.op_type in ("Mul", "Add", "Sub", "Div")
                and _unpadded(conv)
                and len(users.get(conv.input[0], [])) == 1
                and conv.input[0] not in outputs
                else None
            )
            if follower is None and leader is None:
                continue
            info = _conv_info(conv, inits)
            if info is None:
                continue
            w, group = info
            dtype = numpy_helper.to_array(inits[conv.input[1]]).dtype
            c_out, rank = w.shape[0], w.ndim
            b = (
                numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                if len(conv.input) > 2 and conv.input[2]
                else np.zeros(c_out)
            )
            step = None if follower is None else _affine_step(follower, out, inits, c_out, rank)
            if follower is not None and step is not None:  # y = s * conv(x) + t
                s, t = step
                _set_conv_params(g, conv, w * s.reshape(-1, *([1] * (rank - 1))), b * s + t, dtype)
                conv.output[0] = follower.output[0]
                removed = follower
                report.affine_folded += 1
                changed = True
                break
            if leader is None:
                continue
            x = next((t for t in leader.input if t not in inits), None)
            per_group = w.shape[1]
            step = None if x is None else _affine_step(leader, x, inits, per_group * group, rank)
            if x is None or step is None:
                continue
            s, t = step  # conv(s * x + t): scale the input channels' weights, push t through them into the bias
            # output channel o reads input channels (o // (c_out / group)) * per_group + i
            idx = (np.arange(c_out) // (c_out // group))[:, None] * per_group + np.arange(per_group)[None, :]
            shape = (c_out, per_group) + (1,) * (rank - 2)
            new_b = b + (w * t[idx].reshape(shape)).reshape(c_out, -1).sum(axis=1)
            _set_conv_params(g, conv, w * s[idx].reshape(shape), new_b, dtype)
            conv.input[0] = x
            removed = leader
            report.affine_folded += 1
            changed = True
            break
        if removed is not None:
            g.node.remove(removed)
    return model
