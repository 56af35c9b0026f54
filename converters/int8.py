"""INT8 by explicit QuantizeLinear/DequantizeLinear, placed for the runtime that will execute the model.

Weights are always per-channel symmetric INT8 (axis 0 for Conv and Gemm with transB, axis 1 for ConvTranspose
and MatMul), stored as INT8 initializers behind a DequantizeLinear. Activation scales come from calibration
(`calibration.calibrators`). The two targets differ in where activations are quantized and how:

- `tensorrt`: TensorRT's explicit-quantization rules. Activations are symmetric INT8 (zero point 0). Q/DQ goes
  on the activation input of each weighted op, not on the outputs of ops that fuse into it (Relu, Concat,
  Reshape, Sigmoid...). Biases stay in float. On a residual Add fed by a quantized conv, the identity branch is
  quantized so that TensorRT can fuse the conv with the add.
- `onnxruntime`: the pattern ONNX Runtime's CPU provider turns into QLinearConv and friends. Activations are UINT8:
  asymmetric over [0, amax] for tensors never negative in calibration (zero point 0, which lets ORT absorb a
  Relu), and symmetric (zero point 128) otherwise. Biases are INT32. Q/DQ goes on the inputs and outputs of
  weighted ops, and through MaxPool/Concat/Resize/Add so that int8 regions stay connected. Symmetric INT8
  activations, as TensorRT wants them, stop ORT from fusing a Conv followed by Relu; measured on this machine's
  CPU, that made INT8 slower than FP32.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.calibrators import Calibrator, CalibratorOptions
from converters.evaluate import Feed, session, with_float_activations_as_outputs
from converters.graph import (
    ConversionError,
    add_nodes,
    all_names,
    consumers,
    copy_model,
    drop_unused_initializers,
    initializers,
    producers,
    unique_name,
)
from converters.kinds import QuantTarget as QuantTarget  # defined with the other option enums, light to import
from converters.progress import Eta, Progress

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops ONNX Runtime's CPU provider runs on uint8 between DQ and Q (its QDQ selector rules), so INT8 regions can
# pass through them without a float round trip:
# - data movement, run on the integers as they are: needs the output's scale and zero point equal to the input's;
_ORT_SAME_SCALE = ("MaxPool", "Resize", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather")
# - an integer kernel (QLinearSigmoid, QLinearAveragePool...) reading the data input;
_ORT_QLINEAR_UNARY = ("AveragePool", "GlobalAveragePool", "LeakyRelu", "Sigmoid", "Softmax")
# - an integer kernel reading every input, each of which must come through a DequantizeLinear (no constants).
_ORT_QLINEAR_NARY = ("Add", "Mul", "Concat")
_ORT_CARRIERS = _ORT_SAME_SCALE + _ORT_QLINEAR_UNARY + _ORT_QLINEAR_NARY


def weight_axis(node: onnx.NodeProto) -> int:
    """Output-channel axis of the weight: per-channel scales run along it."""
    if node.op_type == "ConvTranspose" or node.op_type == "MatMul":
        return 1
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return 0


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Weighted ops whose weight is a float initializer, in graph order."""
    inits = initializers(model.graph)
    return [
        n.name
        for n in model.graph.node
        if n.op_type in WEIGHTED_OPS
        and len(n.input) > 1
        and n.input[1] in inits
        and inits[n.input[1]].data_type == TensorProto.FLOAT
    ]


def range_tensors(model: onnx.ModelProto) -> set[str]:
    """Every tensor either target may quantize: weighted ops' inputs and outputs, the Relu after one, and the
    inputs and outputs of the ops INT8 regions pass through (ORT's carriers, TensorRT's residual Add)."""
    inits = initializers(model.graph)
    uses = consumers(model.graph)
    wanted: set[str] = set()
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS or node.op_type in _ORT_CARRIERS:
            wanted.update(t for t in node.input if t and t not in inits)
            wanted.update(t for t in node.output if t)
            for after in uses.get(node.output[0], []) if node.output else []:
                if after.op_type == "Relu":
                    wanted.update(after.output)
    return wanted


def calibrate(
    model: onnx.ModelProto, feeds: Sequence[Feed], options: CalibratorOptions, say: Progress | None = None
) -> Calibrator:
    """Histograms of the activations INT8 may quantize (`range_tensors`), one pass over the feeds. Memory holds
    one frame's activations at a time: each frame's tensors are folded into fixed-size histograms, then dropped."""
    wanted = range_tensors(model)
    probe = with_float_activations_as_outputs(model, wanted)
    sess = session(probe)
    names = [o.name for o in sess.get_outputs()]
    calibrator = Calibrator(options)
    eta = Eta(say or (lambda _m: None), "calibration frames", len(feeds))
    for i, feed in enumerate(feeds):
        result = dict(zip(names, sess.run(names, feed)))
        observed = {k: v for k, v in result.items() if k in wanted and v.dtype == np.float32}
        calibrator.collect({**{k: v for k, v in feed.items() if k in wanted}, **observed})
        del result, observed
        eta.step(i + 1)
    return calibrator


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = copy_model(model)
        self.g = self.model.graph
        self.taken = all_names(self.g)
        self.new_nodes: list[onnx.NodeProto] = []
        self.qdq_of: dict[str, str] = {}

    def const(self, base: str, value: np.ndarray) -> str:
        name = unique_name(self.taken, base)
        self.g.initializer.append(numpy_helper.from_array(value, name))
        return name

    def qdq(self, tensor: str, scale: float, zero_point: np.ndarray) -> str:
        """Q -> DQ on a tensor (once per tensor); returns the dequantized tensor's name."""
        if tensor not in self.qdq_of:
            s = self.const(f"{tensor}_scale", np.array(scale, np.float32))
            z = self.const(f"{tensor}_zero_point", zero_point)
            q = unique_name(self.taken, f"{tensor}_quantized")
            dq = unique_name(self.taken, f"{tensor}_dequantized")
            self.new_nodes.append(
                helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=unique_name(self.taken, f"Q_{tensor}"))
            )
            self.new_nodes.append(
                helper.make_node("DequantizeLinear", [q, s, z], [dq], name=unique_name(self.taken, f"DQ_{tensor}"))
            )
            self.qdq_of[tensor] = dq
        return self.qdq_of[tensor]

    def weight(self, node: onnx.NodeProto) -> np.ndarray:
        """Replace the node's weight by INT8 + DequantizeLinear; returns the per-channel scales."""
        inits = initializers(self.g)
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        axis = weight_axis(node)
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=reduce)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        wq = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        node.input[1] = self.dequantized_constant(node.input[1], wq, scale, axis)
        return scale

    def dequantized_constant(self, base: str, values: np.ndarray, scale: np.ndarray, axis: int) -> str:
        """Integer initializer + per-channel scale + zero point -> DequantizeLinear; returns its output's name."""
        q = self.const(f"{base}_{values.dtype.name}", values)
        s = self.const(f"{base}_scale", scale)
        z = self.const(f"{base}_zero_point", np.zeros(scale.shape, values.dtype))
        out = unique_name(self.taken, f"{base}_dequantized")
        dq = helper.make_node(
            "DequantizeLinear", [q, s, z], [out], axis=axis, name=unique_name(self.taken, f"DQ_{base}")
        )
        self.new_nodes.append(dq)
        return out

    def bias_int32(self, node: onnx.NodeProto, input_scale: float, weight_scale: np.ndarray) -> None:
        inits = initializers(self.g)
        if len(node.input) < 3 or node.input[2] not in inits or node.op_type != "Conv":
            return
        b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        scale = (input_scale * weight_scale).astype(np.float32)
        bq = np.clip(np.round(b / scale), -(2**31), 2**31 - 1).astype(np.int32)
        node.input[2] = self.dequantized_constant(node.input[2], bq, scale, axis=0)

    def rewire(self, node: onnx.NodeProto, index: int, tensor: str) -> None:
        node.input[index] = self.qdq_of[tensor]

    def finish(self) -> onnx.ModelProto:
        add_nodes(self.g, self.new_nodes)
        drop_unused_initializers(self.g)
        try:
            onnx.checker.check_model(self.model, full_check=True)
        except Exception as exc:
            raise ConversionError(f"INT8 graph is not valid: {exc}") from None
        return self.model


def _symmetric_int8(amax: float) -> tuple[float, np.ndarray]:
    return max(amax, 1e-12) / 127.0, np.array(0, np.int8)


def _uint8(amax: float, non_negative: bool) -> tuple[float, np.ndarray]:
    if non_negative:
        return max(amax, 1e-12) / 255.0, np.array(0, np.uint8)
    return max(amax, 1e-12) / 127.0, np.array(128, np.uint8)


def _share_concat_scale(
    node: onnx.NodeProto,
    amax: dict[str, float],
    positive: set[str],
    uses: Mapping[str, list[onnx.NodeProto]],
    made: Mapping[str, onnx.NodeProto],
    graph_outputs: set[str],
) -> None:
    """Give a Concat's inputs its output's scale and zero point where that costs at most one bit: ORT's
    QLinearConcat then copies bytes instead of requantizing each input. Only inputs that nothing else reads (and
    that no data-movement op has tied to another tensor's scale) are changed."""
    out = node.output[0]
    for t in node.input:
        producer = made.get(t)
        if (
            len(uses.get(t, [])) != 1
            or t in graph_outputs
            or (producer is not None and producer.op_type in _ORT_SAME_SCALE)
            or amax[t] < 0.5 * amax[out]
        ):
            continue
        amax[t] = amax[out]
        if out in positive:
            positive.add(t)
        else:
            positive.discard(t)


def insert_qdq(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    enabled: Iterable[str],
    target: QuantTarget,
    non_negative: set[str] | None = None,
) -> onnx.ModelProto:
    """Quantize the `enabled` weighted ops (by node name) of a prepared FP32 model for `target`."""
    on = set(enabled)
    b = _Builder(model)
    nodes = list(b.g.node)
    uses = consumers(b.g)
    made = producers(b.g)
    positive = non_negative or set()

    def known(t: str) -> bool:
        return t in amax and amax[t] > 0

    if target is QuantTarget.TENSORRT:
        for node in nodes:
            if node.name in on and known(node.input[0]):
                scale, zp = _symmetric_int8(amax[node.input[0]])
                b.qdq(node.input[0], scale, zp)
                b.rewire(node, 0, node.input[0])
                b.weight(node)
        for node in nodes:  # residual Add: quantize the identity branch so the conv feeding the other side fuses it
            if node.op_type != "Add" or len(node.input) != 2:
                continue
            from_conv = [made.get(t) is not None and made[t].name in on for t in node.input]
            if sum(from_conv) == 1:
                identity = node.input[from_conv.index(False)]
                if known(identity) and identity not in initializers(b.g):
                    scale, zp = _symmetric_int8(amax[identity])
                    b.qdq(identity, scale, zp)
                    b.rewire(node, from_conv.index(False), identity)
        return b.finish()

    # ONNX Runtime: decide which tensors carry int8, in graph order, then wrap each in Q -> DQ.
    graph_outputs = {o.name for o in b.g.output}
    quantized: set[str] = set()
    amax = dict(amax)
    positive = set(positive)
    inits = initializers(b.g)
    for node in nodes:
        if node.name in on and known(node.input[0]):
            quantized.add(node.input[0])
            out = node.output[0]
            after = uses.get(out, [])
            if len(after) == 1 and after[0].op_type == "Relu":  # Conv -> Relu -> Q: ORT absorbs the Relu
                out = after[0].output[0]
            if known(out):
                quantized.add(out)
        elif node.op_type in _ORT_CARRIERS and node.output and node.input and node.input[0] in quantized:
            out = node.output[0]
            if node.op_type in _ORT_SAME_SCALE:  # the integers pass through: same scale and zero point
                amax[out] = amax[node.input[0]]
                positive.discard(out)
                if node.input[0] in positive:
                    positive.add(out)
                quantized.add(out)
            elif node.op_type in _ORT_QLINEAR_UNARY:
                if known(out):
                    quantized.add(out)
            elif all(t and t not in inits and t in quantized for t in node.input) and known(out):
                quantized.add(out)
                if node.op_type == "Concat":
                    _share_concat_scale(node, amax, positive, uses, made, graph_outputs)
    for node in nodes:
        activation = node.input[0] if node.input else ""
        for i, t in enumerate(node.input):
            if t in quantized:
                scale, zp = _uint8(amax[t], t in positive)
                b.qdq(t, scale, zp)
                b.rewire(node, i, t)
        if node.name in on:
            weight_scale = b.weight(node)
            if activation in quantized:  # INT32 bias on the input x weight scale, as QLinearConv wants it
                b.bias_int32(node, _uint8(amax[activation], activation in positive)[0], weight_scale)
    for out in b.g.output:  # quantized graph outputs: Q -> DQ in front, keeping the output's name
        if out.name in quantized and out.name in graph_outputs:
            inner = unique_name(b.taken, f"{out.name}_float")
            for node in b.g.node:
                for i, name in enumerate(node.output):
                    if name == out.name:
                        node.output[i] = inner
            for node in b.g.node:
                for i, name in enumerate(node.input):
                    if name == out.name:
                        node.input[i] = inner
            scale, zp = _uint8(amax[out.name], out.name in positive)
            dq = b.qdq(inner, scale, zp)
            b.new_nodes.append(
                helper.make_node("Identity", [dq], [out.name], name=unique_name(b.taken, f"Out_{out.name}"))
            )
    return b.finish()
