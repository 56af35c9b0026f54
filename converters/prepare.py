"""Graph preparation: small stages that leave the model's inputs, outputs and results unchanged.

`prepare` runs them in order: drop initializers listed as inputs, upgrade the opset, fix dynamic input dims when
asked, infer shapes, turn Constant nodes into initializers, fold constant subgraphs (including Shape of a
statically shaped tensor), fold BatchNormalization into the preceding Conv/ConvTranspose, fuse hard-swish written
out as elementwise ops into one HardSwish, fold per-channel affine ops (Mul/Add/Sub/Div by a constant) into the
Conv before them or the unpadded Conv after them, remove Identity and inference-mode Dropout, then remove dead
nodes and initializers. Each stage is also usable on its own.

The hard-swish and affine stages matter for speed, not only tidiness: exporters (Paddle2ONNX, older PyTorch
opsets) write hard-swish as Add, Clip, Mul, Div and "learnable affine" layers as Mul, Add. ONNX Runtime fuses a
HardSwish into the convolution before it but not the four-op spelling, and each elementwise op is a full pass
over the activation: on PP-OCRv4's detector they were a third of FP32's run time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from calibration.errors import OptionError
from converters.fusions import fold_affine, fold_batchnorm, fuse_hardswish
from converters.graph import (
    ConversionError,
    consumers,
    copy_model,
    drop_unused_initializers,
    ensure_node_names,
    graph_output_names,
    initializers,
    opset_of,
    real_inputs,
    rename_input,
    replace_initializer,
)
from converters.kinds import DEFAULT_OPSET as DEFAULT_OPSET

log = logging.getLogger("edgert.convert")

MIN_OPSET = 13  # per-channel DequantizeLinear and modern Resize/Split/Squeeze signatures need it
_NOT_FOLDABLE = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "QuantizeLinear", "DequantizeLinear",  # weight Q/DQ pairs must stay visible to TensorRT
}  # fmt: skip
_MAX_FOLDED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PrepareOptions:
    target_opset: int = DEFAULT_OPSET
    input_shapes: Mapping[str, Sequence[int]] | None = None  # fix these inputs' dims (dynamic ones included)
    fold_constants: bool = True
    fold_batchnorm: bool = True
    fuse_activations: bool = True  # hard-swish written as elementwise ops -> HardSwish (opset >= 14)
    fold_affine: bool = True  # Mul/Add/Sub/Div by a per-channel constant -> the adjacent Conv's weights

    def __post_init__(self) -> None:
        if self.target_opset < MIN_OPSET:
            raise OptionError(f"target opset {self.target_opset} is below the minimum {MIN_OPSET}")


@dataclass
class PrepareReport:
    opset_before: int = 0
    opset_after: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    initializer_inputs_dropped: int = 0
    constants_moved: int = 0  # Constant nodes made initializers
    constants_folded: int = 0
    batchnorms_folded: int = 0
    hardswish_fused: int = 0
    affine_folded: int = 0  # elementwise ops folded into a Conv's weights and bias
    identities_removed: int = 0  # Identity, inference Dropout and no-op reshapes
    dead_nodes_removed: int = 0
    shapes_fixed: dict[str, list[int]] = field(default_factory=dict)


def drop_initializer_inputs(model: onnx.ModelProto, report: PrepareReport) -> onnx.ModelProto:
    """Old exporters list weights as graph inputs; as inputs they cannot be folded or converted."""
    inits = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    report.initializer_inputs_dropped = len(model.graph.input) - len(keep)
    if report.initializer_inputs_dropped:
        del model.graph.input[:]
        model.graph.input.extend(keep)
    return model


def upgrade_opset(model: onnx.ModelProto, target: int, report: PrepareReport) -> onnx.ModelProto:
    current = opset_of(model)
    report.opset_before = current
    if current >= target:
        report.opset_after = current
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises bare RuntimeErrors naming the op it cannot adapt
        raise ConversionError(f"opset upgrade {current} -> {target} failed: {exc}") from None
    report.opset_after = target
    return upgraded


def fix_input_shapes(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], report: PrepareReport
) -> onnx.ModelProto:
    inputs = {i.name: i for i in real_inputs(model.graph)}
    for name, shape in shapes.items():
        if name not in inputs:
            raise ConversionError(f"cannot fix the shape of '{name}': the graph inputs are {sorted(inputs)}")
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ConversionError(
                f"input '{name}' has rank {len(dims)}, the requested shape {list(shape)} has {len(shape)}"
            )
        for dim, value in zip(dims, shape):
            if (
                dim.HasField("dim_value") and dim.dim_value >= 0 and dim.dim_value != value
            ):  # -1: an exporter's "dynamic"
                raise ConversionError(f"input '{name}' has a fixed dimension {dim.dim_value}, requested {value}")
            dim.Clear()
            dim.dim_value = int(value)
        report.shapes_fixed[name] = [int(v) for v in shape]
    del model.graph.value_info[:]  # stale dims from before; inference recomputes them
    return model


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    # Some exporters (Paddle2ONNX) write -1 for a dynamic dim; ONNX has no such value and strict inference then
    # fails on the output ("1 vs -1"). A negative dim is an unknown dim.
    g = model.graph
    for v in [*g.input, *g.value_info, *g.output]:
        for dim in v.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError and friends
        raise ConversionError(f"shape inference failed: {exc}") from None


def constants_to_initializers(model: onnx.ModelProto, report: PrepareReport) -> onnx.ModelProto:
    """Constant nodes become initializers, which folding and conversion see as weights."""
    g = model.graph
    keep = []
    for node in g.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            g.initializer.append(tensor)
        else:
            keep.append(node)
    report.constants_moved += len(g.node) - len(keep)
    del g.node[:]
    g.node.extend(keep)
    return model


def _static_shape(model: onnx.ModelProto, name: str) -> list[int] | None:
    g = model.graph
    for v in [*g.input, *g.value_info, *g.output]:
        if v.name == name and v.type.HasField("tensor_type"):
            dims = v.type.tensor_type.shape.dim
            if v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                return [d.dim_value for d in dims]
    return None


def _eval_node(node: onnx.NodeProto, values: list[np.ndarray], opset: int) -> list[np.ndarray]:
    names = [f"in{i}" for i in range(len(values))]
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    idx = 0
    for i, name in enumerate(node.input):
        if name:
            copy.input[i] = names[idx]
            idx += 1
    evaluator = ReferenceEvaluator(
        helper.make_model(
            helper.make_graph(
                [copy],
                "fold",
                [
                    helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                    for n, v in zip(names, values)
                ],
                [helper.make_empty_tensor_value_info(o) for o in node.output],
            ),
            opset_imports=[helper.make_opsetid("", opset)],
        )
    )
    return list(evaluator.run(None, dict(zip(names, values))))


def fold_constants(model: onnx.ModelProto, report: PrepareReport) -> onnx.ModelProto:
    """Replace nodes whose inputs are all constant by initializers holding their outputs."""
    g = model.graph
    opset = opset_of(model)
    consts = {name: numpy_helper.to_array(t) for name, t in initializers(g).items()}
    outputs = graph_output_names(g)
    keep = []
    for node in g.node:
        foldable = (
            node.domain in ("", "ai.onnx") and node.op_type not in _NOT_FOLDABLE and not set(node.output) & outputs
        )
        value: list[np.ndarray] | None = None
        if foldable and node.op_type == "Shape":
            shape = _static_shape(model, node.input[0])
            if shape is not None:
                attrs = {a.name: a.i for a in node.attribute}
                value = [np.array(shape[attrs.get("start", 0) : attrs.get("end", len(shape))], np.int64)]
        elif foldable and node.input and all(not n or n in consts for n in node.input):
            try:
                value = _eval_node(node, [consts[n] for n in node.input if n], opset)
            except Exception as exc:  # an op the reference evaluator lacks: leave it to the runtime
                log.debug("not folding %s: %s", node.name, exc)
        if value is None or sum(v.nbytes for v in value) > _MAX_FOLDED_BYTES:
            keep.append(node)
            continue
        for name, v in zip(node.output, value):
            consts[name] = np.asarray(v)
            replace_initializer(g, name, np.asarray(v))
        report.constants_folded += 1
    del g.node[:]
    g.node.extend(keep)
    return model


def _is_noop_reshape(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """A Reshape/Flatten/Squeeze/Unsqueeze whose static output shape equals its input's (opset upgrades add these)."""
    if node.op_type not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") or not node.input:
        return False
    before, after = _static_shape(model, node.input[0]), _static_shape(model, node.output[0])
    return before is not None and before == after


def remove_identities(model: onnx.ModelProto, report: PrepareReport) -> onnx.ModelProto:
    """Identity, Dropout whose mask is unused (inference) and no-op reshapes pass their input through: bypass them."""
    g = model.graph
    outputs = graph_output_names(g)
    inputs = {i.name for i in g.input} | {t.name for t in g.initializer}
    users = consumers(g)
    keep = []
    for node in g.node:
        passthrough = (
            node.op_type == "Identity"
            or (
                node.op_type == "Dropout"
                and (len(node.output) < 2 or not node.output[1] or not users.get(node.output[1]))
            )
            or _is_noop_reshape(model, node)
        )
        src, dst = node.input[0] if node.input else "", node.output[0]
        if not passthrough or not src:
            keep.append(node)
            continue
        if dst in outputs:
            if src in inputs or src in outputs:
                keep.append(node)  # a graph output cannot simply be renamed onto an input or another output
                continue
            for other in g.node:  # the producer of src now writes the graph output directly
                for i, name in enumerate(other.output):
                    if name == src:
                        other.output[i] = dst
            rename_input(g.node, src, dst)
        else:
            rename_input(g.node, dst, src)
        report.identities_removed += 1
    del g.node[:]
    g.node.extend(keep)
    return model


def remove_dead(model: onnx.ModelProto, report: PrepareReport) -> onnx.ModelProto:
    """Drop nodes whose outputs nobody uses, then unused initializers."""
    g = model.graph
    while True:
        needed = graph_output_names(g) | {name for node in g.node for name in node.input}
        keep = [n for n in g.node if any(o in needed for o in n.output if o)]
        if len(keep) == len(g.node):
            break
        report.dead_nodes_removed += len(g.node) - len(keep)
        del g.node[:]
        g.node.extend(keep)
    used = drop_unused_initializers(g)
    known = used | {o for n in g.node for o in n.output}
    vi = [v for v in g.value_info if v.name in known]
    del g.value_info[:]
    g.value_info.extend(vi)
    return model


Stage = Callable[[onnx.ModelProto], onnx.ModelProto]


def prepare(
    model: onnx.ModelProto, options: PrepareOptions = PrepareOptions(), progress: Callable[[str], None] | None = None
) -> tuple[onnx.ModelProto, PrepareReport]:
    """Run every preparation stage; returns a new model and what each stage did."""
    report = PrepareReport(nodes_before=len(model.graph.node))
    work = copy_model(model)
    stages: list[tuple[str, Stage]] = [
        ("drop initializer inputs", lambda m: drop_initializer_inputs(m, report)),
        ("upgrade opset", lambda m: upgrade_opset(m, options.target_opset, report)),
    ]
    if options.input_shapes:
        stages.append(("fix input shapes", lambda m: fix_input_shapes(m, options.input_shapes or {}, report)))
    stages += [
        ("infer shapes", infer_shapes),
        ("constants to initializers", lambda m: constants_to_initializers(m, report)),
    ]
    if options.fold_constants:
        stages.append(("fold constants", lambda m: fold_constants(m, report)))
    if options.fold_batchnorm:
        stages.append(("fold batchnorm", lambda m: fold_batchnorm(m, report)))
    if options.fuse_activations:
        stages.append(("fuse hard-swish", lambda m: fuse_hardswish(m, report)))
    if options.fold_affine:
        stages.append(("fold affine into conv", lambda m: fold_affine(m, report)))
    stages += [
        ("remove identities", lambda m: remove_identities(m, report)),
        ("remove dead nodes", lambda m: remove_dead(m, report)),
        ("infer shapes", infer_shapes),
    ]
    for name, stage in stages:
        if progress:
            progress(name)
        work = stage(work)
    ensure_node_names(work.graph)
    try:
        onnx.checker.check_model(work)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"prepared model is invalid: {exc}") from None
    report.nodes_after = len(work.graph.node)
    return work, report
