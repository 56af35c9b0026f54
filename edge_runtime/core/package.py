"""Model packages: a folder (or .zip/.tar archive of one) holding `model.onnx` and its card, `model.json`.

`load_package` parses the card strictly, checks the ONNX file's sha256 against the card, and checks that the graph
really has the input and output the card describes, so a wrong model is refused at load, never at the first frame.
The card's types and parser are in `card.py` (re-exported here); this module checks the card against the graph,
reads the CAM weights for saliency, and opens packages (archives through `archives.py`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from edge_runtime.core.archives import ArchiveError, file_sha256, unpack_to_temp
from edge_runtime.core.card import (
    CARD_FILE,
    CARD_SCHEMA,
    MAX_CARD_BYTES,
    MAX_DESCRIPTION_CHARS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    MAX_NAME_CHARS,
    ONNX_FILE,
    RAW_TASK,
    Activation,
    BoxFormat,
    BoxLayout,
    CamWeights,
    ClassificationSpec,
    Decode,
    DetectionSpec,
    InputCard,
    ModelCard,
    ModelPackage,
    OutputSpec,
    PackageError,
    TrackerSpec,
    parse_card,
    parse_input_card,
)
from edge_runtime.core.protocol import Limits, Task


def graph_precisions(model: onnx.ModelProto) -> tuple[bool, bool]:
    """(carries FP16: weights or casts to FP16, carries INT8: Q/DQ pairs) of a converted graph, for the backends
    and the engine builder that must enable what the converter wrote."""
    ops = {n.op_type for n in model.graph.node}
    fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in model.graph.node
    )
    return fp16, "QuantizeLinear" in ops and "DequantizeLinear" in ops


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return dims


def _check_graph(model: onnx.ModelProto, card: ModelCard, where: str) -> None:
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in initializers}
    outputs = {o.name: o for o in graph.output}
    if card.input_name not in inputs:
        raise PackageError(
            f"{where}: card input '{card.input_name}' is not a graph input; the graph has {sorted(inputs)}"
        )
    if len(inputs) != 1:
        raise PackageError(
            f"{where}: the graph has {len(inputs)} inputs {sorted(inputs)}; one image input is supported"
        )
    for name in card.output.names:
        if name not in outputs:
            raise PackageError(f"{where}: card output '{name}' is not a graph output; the graph has {sorted(outputs)}")
    inp = inputs[card.input_name]
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise PackageError(
            f"{where}: input '{card.input_name}' is {onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type)}, card says float32"
        )
    want = card.preprocess.input_shape
    have = _dims(inp)
    if len(have) != 4 or any(isinstance(h, int) and h != w for h, w in zip(have, want)):
        raise PackageError(f"{where}: input '{card.input_name}' has shape {have}, card says {list(want)}")
    out_dims = _dims(outputs[card.output.name])
    classes = len(card.output.labels) if card.output.decode is Decode.ARGMAX else 1
    if card.task is Task.SEGMENTATION and (
        len(out_dims) != 4 or (isinstance(out_dims[1], int) and out_dims[1] != classes)
    ):
        raise PackageError(
            f"{where}: output '{card.output.name}' has shape {out_dims}; a segmentation output must be "
            f"[1, {classes}, H, W] for {len(card.output.labels)} labels decoded by {card.output.decode}"
        )
    if card.task is Task.CLASSIFICATION and (
        len(out_dims) not in (2, 4)
        or (isinstance(out_dims[1], int) and out_dims[1] != len(card.output.labels))
        or any(isinstance(d, int) and d != 1 for d in out_dims[2:])
    ):
        raise PackageError(
            f"{where}: output '{card.output.name}' has shape {out_dims}; a classification output must be "
            f"[1, {len(card.output.labels)}] (or [1, {len(card.output.labels)}, 1, 1]) for its labels"
        )
    det = card.output.detection
    if det is not None and det.layout is BoxLayout.GFL:
        _check_gfl(outputs, card, det, where)
    elif det is not None and det.layout is not BoxLayout.NMS:
        n = len(card.output.labels)
        extra, axis = (5, 2) if det.layout is BoxLayout.YOLO else (4, 1)
        if len(out_dims) != 3 or (isinstance(out_dims[axis], int) and out_dims[axis] != extra + n):
            needed = f"[1, N, {5 + n}]" if det.layout is BoxLayout.YOLO else f"[1, {4 + n}, N]"
            raise PackageError(
                f"{where}: output '{card.output.name}' has shape {out_dims}; layout '{det.layout.value}' with "
                f"{n} label(s) needs {needed}"
            )


def gfl_cells(det: DetectionSpec, height: int, width: int) -> list[int]:
    """Anchors per stride of a GFL head on an input of this size (a feature map of ceil(size / stride))."""
    return [-(-height // s) * -(-width // s) for s in det.strides]


def _check_gfl(outputs: Mapping[str, onnx.ValueInfoProto], card: ModelCard, det: DetectionSpec, where: str) -> None:
    n, bins = len(card.output.labels), 4 * (det.reg_max + 1)
    cells = gfl_cells(det, card.preprocess.height, card.preprocess.width)
    pairs = list(zip(det.score_outputs, det.box_outputs, cells)) or [(card.output.name, "", sum(cells))]
    for scores, boxes, count in pairs:
        for name, width in ((scores, n if boxes else n + bins), (boxes, bins)):
            if not name:
                continue
            dims = _dims(outputs[name])
            ok = len(dims) == 3 and all(not isinstance(d, int) or d == w for d, w in zip(dims[1:], (count, width)))
            if not ok:
                raise PackageError(
                    f"{where}: output '{name}' has shape {dims}; layout 'gfl' (strides {list(det.strides)}, reg_max "
                    f"{det.reg_max}, {n} label(s)) needs [1, {count}, {width}]"
                )


def cam_weights(model: onnx.ModelProto, features: str, logits: str) -> CamWeights:
    """The linear head that turns `features` ([1, C, h, w]) into `logits`, for a class activation map: global
    average pooling (GlobalAveragePool, or ReduceMean over H and W), then Flatten/Reshape/Squeeze, then Gemm or
    MatMul (+ Add), then optionally Softmax/Sigmoid. Weights held as initializers, FP16 casts or INT8
    DequantizeLinear are all read. Raises ValueError naming what does not fit."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def const(name: str) -> np.ndarray:
        if name in consts:
            return np.asarray(consts[name], np.float32)
        node = producers.get(name)
        if node is not None and node.op_type in ("Cast", "Identity"):
            return const(node.input[0])
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in consts:
            q = consts[node.input[0]].astype(np.float32)
            scale = const(node.input[1])
            zero = const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * q.ndim
                shape[axis] = scale.size
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            return np.asarray((q - zero) * scale, np.float32)
        if node is not None and node.op_type == "Constant":
            return np.asarray(onnx.numpy_helper.to_array(node.attribute[0].t), np.float32)
        raise PackageError(f"'{name}' is not a constant the head can be read from")

    def only_consumer(name: str) -> onnx.NodeProto:
        users = [n for n in consumers.get(name, []) if n.op_type != "QuantizeLinear"] or consumers.get(name, [])
        if len(users) != 1:
            raise PackageError(f"'{name}' feeds {len(users)} nodes; a CAM needs one pooling path to the logits")
        node = users[0]
        if node.op_type == "QuantizeLinear":  # an INT8 graph: skip the Q/DQ pair
            dq = only_consumer(node.output[0])
            return only_consumer(dq.output[0]) if dq.op_type == "DequantizeLinear" else dq
        return node

    pool = only_consumer(features)
    if pool.op_type not in ("GlobalAveragePool", "ReduceMean"):
        raise PackageError(f"'{features}' goes to {pool.op_type}, not to global average pooling")
    node = only_consumer(pool.output[0])
    while node.op_type in ("Flatten", "Reshape", "Squeeze"):
        node = only_consumer(node.output[0])
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        w = const(node.input[1]) * (attrs["alpha"].f if "alpha" in attrs else 1.0)
        w = w if "transB" in attrs and attrs["transB"].i else w.T
        bias = const(node.input[2]) * (attrs["beta"].f if "beta" in attrs else 1.0) if len(node.input) > 2 else None
        out = node.output[0]
    elif node.op_type == "MatMul":
        w, bias, out = const(node.input[1]).T, None, node.output[0]
        add = consumers.get(out, [])
        if len(add) == 1 and add[0].op_type == "Add":
            other = [i for i in add[0].input if i != out][0]
            bias, out = const(other), add[0].output[0]
    else:
        raise PackageError(f"pooled features go to {node.op_type}, not to a linear head (Gemm or MatMul)")
    after = consumers.get(out, [])
    if out != logits and not (
        len(after) == 1 and after[0].op_type in ("Softmax", "Sigmoid") and after[0].output[0] == logits
    ):
        raise PackageError(f"the linear head's output '{out}' is not the card's output '{logits}'")
    weights = np.ascontiguousarray(w, np.float32)
    bias_v = np.zeros(weights.shape[0], np.float32) if bias is None else np.broadcast_to(bias, weights.shape[:1])
    return CamWeights(weights, np.asarray(bias_v, np.float32))


def expose_cam_features(model: onnx.ModelProto, logits: str) -> str | None:
    """Add to `model`'s outputs the feature map that its linear head pools (in place), for a package whose card
    then names it as the saliency source; returns its name, or None when the head is not pooling + linear."""
    for node in model.graph.node:
        if node.op_type == "GlobalAveragePool":
            features = str(node.input[0])
            try:
                cam_weights(model, features, logits)
            except ValueError:
                continue
            if features not in {o.name for o in model.graph.output}:
                inferred = onnx.shape_inference.infer_shapes(model)
                known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
                shape = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in known[features].type.tensor_type.shape.dim
                ] if features in known else ["N", "C", "H", "W"]  # fmt: skip
                model.graph.output.append(onnx.helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT, shape))
            return features
    return None


def _unpacked(path: Path, limits: Limits) -> tuple[Path | None, Path]:
    """(the temporary folder to remove, or None for a folder package; the package folder). A temporary folder is
    removed here on any failure."""
    if not path.exists():
        raise PackageError(f"{path}: no such model package")
    if path.is_dir():
        return None, path
    try:
        target = unpack_to_temp(path, limits)
    except ArchiveError as exc:
        raise PackageError(str(exc)) from None
    found = [p.parent for p in target.rglob(CARD_FILE)]
    if len(found) != 1:
        shutil.rmtree(target, ignore_errors=True)
        raise PackageError(f"{path}: expected one {CARD_FILE} inside, found {len(found)}")
    return target, found[0]


@contextlib.contextmanager
def open_package(path: str | Path, limits: Limits = Limits()) -> Iterator[ModelPackage]:
    """A package to use inside a `with` block. An archive is unpacked (within `limits`) into a temporary folder
    that is removed when the block ends, whatever happens: a runner activated inside it keeps its model in memory.
    A folder is used where it is."""
    temp, root = _unpacked(Path(path), limits)
    try:
        yield _load(Path(path), root, limits)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


_LEFT_FOR_EXIT: list[Path] = []  # archives unpacked by load_package, which cannot know when they are done with


@atexit.register
def _remove_left_for_exit() -> None:
    for temp in _LEFT_FOR_EXIT:
        shutil.rmtree(temp, ignore_errors=True)


def load_package(path: str | Path, limits: Limits = Limits()) -> ModelPackage:
    """Load and validate a model package; raises PackageError with the package path in the message. An archive's
    temporary folder lasts until the process exits: a long-running caller (the daemon) uses `open_package`."""
    temp, root = _unpacked(Path(path), limits)
    try:
        package = _load(Path(path), root, limits)
    except BaseException:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    if temp is not None:
        _LEFT_FOR_EXIT.append(temp)
    return package


def _load(path: Path, root: Path, limits: Limits) -> ModelPackage:
    card_path, onnx_path = root / CARD_FILE, root / ONNX_FILE
    for required in (card_path, onnx_path):
        if not required.is_file():
            raise PackageError(f"{path}: missing {required.name}")
    if card_path.stat().st_size > MAX_CARD_BYTES:
        raise PackageError(f"{card_path}: {card_path.stat().st_size} bytes, a card is at most {MAX_CARD_BYTES}")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{card_path}: not valid JSON ({exc})") from None
    card = parse_card(data, where=str(card_path), limits=limits)
    sha = file_sha256(onnx_path)  # streamed: a model that is not the card's is refused before it is read into memory
    if card.onnx_sha256 and card.onnx_sha256.lower() != sha:
        raise PackageError(f"{onnx_path}: sha256 {sha[:16]}... does not match the card's {card.onnx_sha256[:16]}...")
    try:
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types for a broken file
        raise PackageError(
            f"{onnx_path}: not a valid ONNX model ({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from None
    _check_graph(model, card, str(onnx_path))
    cam = None
    spec = card.output.classification
    if spec is not None and spec.saliency:
        try:
            cam = cam_weights(model, spec.saliency, card.output.name)
        except ValueError as exc:
            raise PackageError(f"{onnx_path}: output.saliency names '{spec.saliency}' but {exc}") from None
        if cam.weights.shape[0] != len(card.output.labels):
            raise PackageError(
                f"{onnx_path}: the linear head has {cam.weights.shape[0]} classes, the card {len(card.output.labels)}"
            )
    return ModelPackage(root=root, card=card, sha256=sha, cam=cam)


DEMO_PACKAGES = {
    Task.SEGMENTATION: "us_seg_demo",  # ultrasound: vessel, cyst, lesion
    Task.DETECTION: "polyp_det_demo",  # colonoscopy: polyps
    Task.CLASSIFICATION: "endo_quality_demo",  # colonoscopy frame quality, with saliency
}


def demo_package_path(task: Task = Task.SEGMENTATION) -> Path:
    """A bundled demo model package (installed with edge_runtime): one per task."""
    return Path(__file__).resolve().parents[1] / "models" / DEMO_PACKAGES[task]


__all__ = [  # the card's names too: importers of `package` keep working
    "Activation",
    "BoxFormat",
    "BoxLayout",
    "CARD_FILE",
    "CARD_SCHEMA",
    "CamWeights",
    "ClassificationSpec",
    "DEMO_PACKAGES",
    "Decode",
    "DetectionSpec",
    "InputCard",
    "MAX_CARD_BYTES",
    "MAX_DESCRIPTION_CHARS",
    "MAX_LABELS",
    "MAX_LABEL_CHARS",
    "MAX_NAME_CHARS",
    "ModelCard",
    "ModelPackage",
    "ONNX_FILE",
    "OutputSpec",
    "PackageError",
    "RAW_TASK",
    "TrackerSpec",
    "cam_weights",
    "demo_package_path",
    "expose_cam_features",
    "gfl_cells",
    "graph_precisions",
    "load_package",
    "open_package",
    "parse_card",
    "parse_input_card",
]
