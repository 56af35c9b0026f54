"""Small helpers over onnx.GraphProto shared by the conversion stages."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from edge_runtime.core.errors import EdgertError


class ConversionError(EdgertError, RuntimeError):
    """A conversion step that cannot be done; the message names the stage, node or tensor."""


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in graph.node for name in node.output if name}


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def graph_output_names(graph: onnx.GraphProto) -> set[str]:
    return {o.name for o in graph.output}


def drop_unused_initializers(graph: onnx.GraphProto) -> set[str]:
    """Removes initializers no node reads and no graph output names; returns the names that are read or output."""
    used = {name for node in graph.node for name in node.input} | graph_output_names(graph)
    live = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return used


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    inits = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor that shape inference can type."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def replace_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return
    graph.initializer.append(numpy_helper.from_array(value, name))


def rename_input(nodes: Iterable[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def unique_name(taken: set[str], base: str) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        if node.name:
            names.add(node.name)
    return names


def model_size(model: onnx.ModelProto) -> int:
    return int(model.ByteSize())


def ensure_node_names(graph: onnx.GraphProto) -> None:
    """Give every node a unique name, so reports can name them."""
    taken = {n.name for n in graph.node if n.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = unique_name(taken, f"{node.op_type}_{i}")


def topological(nodes: list[onnx.NodeProto], available: Iterable[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before it is read."""
    ready = set(available) | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ConversionError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    return ordered


def add_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Add nodes, restore topological order, and drop value_info that the change made stale."""
    available = [i.name for i in graph.input] + [t.name for t in graph.initializer]
    ordered = topological([*graph.node, *nodes], available)
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.value_info[:]


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ConversionError("model imports no default-domain opset")
