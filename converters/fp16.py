"""FP16 conversion, typed end to end, with FP32 kept where FP16 would overflow.

`plan_fp16` decides per node from an op-type registry (ops not in it stay FP32) and from activation ranges
measured on data: a node stays FP32 if any float tensor it reads or writes exceeds the FP16 range divided by a
safety margin. Nothing is clamped. `convert_fp16` writes the typed graph that TensorRT 11 builds strongly typed
networks from: FP16 initializers and tensors, a Cast wherever precisions meet, and FP32 graph inputs and outputs
by default. Resize scales and other shape-like inputs keep their types.

ONNX Runtime's CPU provider computes most FP16 ops in FP32 and drops the casts around them, so it cannot show FP16
error. `emulate_fp16` therefore derives from the typed model an FP32 graph that rounds every FP16 tensor through a
Cast pair and uses the FP16 weights exactly. The accuracy gate judges that graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.errors import OptionError
from converters.graph import ConversionError, add_nodes, all_names, copy_model, elem_types, unique_name

FP16_MAX = 65504.0


@dataclass(frozen=True)
class OpRule:
    """Which float inputs follow the node's precision; None means all of them. The others keep their type."""

    data_inputs: tuple[int, ...] | None = None


_ALL = OpRule()
FP16_OPS: dict[str, OpRule] = {
    **{
        op: _ALL
        for op in (
            "Conv",
            "ConvTranspose",
            "BatchNormalization",
            "Gemm",
            "MatMul",
            "Relu",
            "LeakyRelu",
            "PRelu",
            "Sigmoid",
            "Tanh",
            "HardSigmoid",
            "HardSwish",
            "Clip",
            "Softmax",
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Max",
            "Min",
            "Neg",
            "Abs",
            "MaxPool",
            "AveragePool",
            "GlobalAveragePool",
            "GlobalMaxPool",
            "Concat",
            "Split",
            "Slice",
            "Transpose",
            "Reshape",
            "Flatten",
            "Squeeze",
            "Unsqueeze",
            "Pad",
            "Identity",
            "Gather",
            "Expand",
            "Tile",
            "DepthToSpace",
            "SpaceToDepth",
            "ReduceMax",
            "ReduceMean",
        )
    },  # fmt: skip
    "Resize": OpRule(data_inputs=(0,)),  # roi and scales stay FP32, sizes stay int64
    "Upsample": OpRule(data_inputs=(0,)),
}


@dataclass(frozen=True)
class Fp16Options:
    keep_io_types: bool = True  # graph inputs and outputs stay FP32, with casts inside the graph
    range_margin: float = 2.0  # a tensor whose max |x| exceeds 65504 / margin keeps its nodes in FP32
    force_fp32: frozenset[str] = frozenset()  # node names kept FP32 (the accuracy gate adds to this)

    def __post_init__(self) -> None:
        if self.range_margin < 1.0:
            raise OptionError(f"range_margin must be >= 1, got {self.range_margin}")


@dataclass
class Fp16Plan:
    fp16_nodes: list[str]  # in graph order
    fp32_nodes: dict[str, str] = field(default_factory=dict)  # node name -> why it stays FP32


def plan_fp16(
    model: onnx.ModelProto, ranges: Mapping[str, float] | None, options: Fp16Options = Fp16Options()
) -> Fp16Plan:
    """Decide each node's precision. `ranges` maps tensor names to max |x| measured on data."""
    types = elem_types(model)
    limit = FP16_MAX / options.range_margin
    plan = Fp16Plan(fp16_nodes=[])
    for node in model.graph.node:
        floats = [t for t in [*node.input, *node.output] if t and types.get(t) == TensorProto.FLOAT]
        if node.name in options.force_fp32:
            plan.fp32_nodes[node.name] = "kept FP32 on request"
        elif node.op_type not in FP16_OPS or node.domain not in ("", "ai.onnx"):
            plan.fp32_nodes[node.name] = f"{node.op_type} is not in the FP16 op registry"
        elif not floats:
            plan.fp32_nodes[node.name] = "no float tensors"
        elif any(t not in types for t in [*node.input, *node.output] if t):
            plan.fp32_nodes[node.name] = "some tensor types could not be inferred"
        else:
            over = [(t, ranges[t]) for t in floats if ranges and not (ranges.get(t, 0.0) <= limit)]
            if over:
                name, value = max(over, key=lambda tv: tv[1] if np.isfinite(tv[1]) else np.inf)
                plan.fp32_nodes[node.name] = (
                    f"range: max |{name}| = {value:.4g} exceeds {limit:.4g} (FP16 max {FP16_MAX:g} / margin "
                    f"{options.range_margin:g})"
                )
            else:
                plan.fp16_nodes.append(node.name)
    return plan


def _to_half(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # weights beyond 65504 become inf, as FP16 has them; the gate reports it
        return values.astype(np.float16)


def _wants_fp16(node: onnx.NodeProto, index: int, fp16: set[str]) -> bool:
    if node.name not in fp16:
        return False
    rule = FP16_OPS[node.op_type]
    return rule.data_inputs is None or index in rule.data_inputs


def convert_fp16(model: onnx.ModelProto, fp16_nodes: Iterable[str], keep_io_types: bool = True) -> onnx.ModelProto:
    """The typed FP16 model for a set of nodes; every other node stays FP32, with casts where they meet."""
    fp16 = set(fp16_nodes)
    types = elem_types(model)
    m = copy_model(model)
    g = m.graph
    taken = all_names(g)
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16

    actual: dict[str, int] = {}  # element type each float tensor has after conversion
    for node in g.node:
        for out in node.output:
            if out and types.get(out) == FLOAT:
                actual[out] = HALF if node.name in fp16 else FLOAT
    for inp in g.input:
        if inp.type.tensor_type.elem_type == FLOAT:
            actual[inp.name] = FLOAT if keep_io_types else HALF
            if not keep_io_types:
                inp.type.tensor_type.elem_type = HALF

    # Initializers: converted in place when every reader wants FP16, copied when readers disagree.
    readers: dict[str, set[bool]] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name and types.get(name) == FLOAT:
                readers.setdefault(name, set()).add(_wants_fp16(node, i, fp16))
    half_copy: dict[str, str] = {}
    for t in list(g.initializer):
        if t.data_type != FLOAT or t.name not in readers:
            continue
        wants = readers[t.name]
        if wants == {True}:
            t.CopyFrom(numpy_helper.from_array(_to_half(numpy_helper.to_array(t)), t.name))
            actual[t.name] = HALF
        else:
            actual[t.name] = FLOAT
            if True in wants:
                copy = unique_name(taken, f"{t.name}__fp16")
                g.initializer.append(numpy_helper.from_array(_to_half(numpy_helper.to_array(t)), copy))
                half_copy[t.name] = copy

    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}

    def cast_of(name: str, to: int) -> str:
        if (name, to) not in casts:
            out = unique_name(taken, f"{name}__to{'16' if to == HALF else '32'}")
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=unique_name(taken, f"Cast_{out}")))
            casts[(name, to)] = out
        return casts[(name, to)]

    # Graph outputs keep their FP32 type: the producer writes a renamed FP16 tensor, a final Cast restores it.
    renamed: dict[str, str] = {}
    for out in g.output:
        if actual.get(out.name) == HALF:
            if keep_io_types:
                inner = unique_name(taken, f"{out.name}__fp16")
                renamed[out.name] = inner
                actual[inner] = HALF
            else:
                out.type.tensor_type.elem_type = HALF
    for node in g.node:
        for i, name in enumerate(node.output):
            if name in renamed:
                node.output[i] = renamed[name]
    for node in g.node:
        for i, name in enumerate(node.input):
            if not name:
                continue
            source = renamed.get(name, name)
            if source not in actual:
                node.input[i] = source
                continue
            want = HALF if _wants_fp16(node, i, fp16) else FLOAT
            if want == HALF and source in half_copy:
                node.input[i] = half_copy[source]
            elif actual[source] != want:
                node.input[i] = cast_of(source, want)
            else:
                node.input[i] = source
    for original, inner in renamed.items():
        new_nodes.append(
            helper.make_node("Cast", [inner], [original], to=FLOAT, name=unique_name(taken, f"Cast_{original}"))
        )

    add_nodes(g, new_nodes)
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        onnx.checker.check_model(m, full_check=True)
    except Exception as exc:  # type errors name the node that got mixed precisions
        raise ConversionError(f"FP16 graph is not valid: {exc}") from None
    return m


def emulate_fp16(typed: onnx.ModelProto) -> onnx.ModelProto:
    """An FP32 graph with the FP16 model's rounding: FP16 weights as exact FP32 values, and every FP16 tensor
    rounded through Cast(FP16) -> Cast(FP32), so overflow becomes inf and precision is lost where FP16 loses it."""
    types = elem_types(typed)
    m = copy_model(typed)
    g = m.graph
    taken = all_names(g)
    HALF, FLOAT = TensorProto.FLOAT16, TensorProto.FLOAT
    for t in g.initializer:
        if t.data_type == HALF:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for v in [*g.input, *g.output]:
        if v.type.tensor_type.elem_type == HALF:
            v.type.tensor_type.elem_type = FLOAT
    rounded: list[onnx.NodeProto] = []
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == HALF:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
        for i, out in enumerate(node.output):
            if out and types.get(out) == HALF:
                raw = unique_name(taken, f"{out}__raw")
                half = unique_name(taken, f"{out}__half")
                node.output[i] = raw
                rounded.append(
                    helper.make_node("Cast", [raw], [half], to=HALF, name=unique_name(taken, f"Round16_{out}"))
                )
                rounded.append(
                    helper.make_node("Cast", [half], [out], to=FLOAT, name=unique_name(taken, f"Round32_{out}"))
                )
    add_nodes(g, rounded)
    return m
