"""Model packages: a folder (or .zip/.tar archive of one) holding `model.onnx` and its card, `model.json`.

`load_package` parses the card strictly, checks the ONNX file's sha256 against the card, and checks that the graph
really has the input and output the card describes, so a wrong model is refused at load, never at the first frame.
"""

from __future__ import annotations

import enum
import hashlib
import json
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from calibration.preprocessing import Color, DicomOutput, Layout, PreprocessSpec, ResizeMode
from edge_runtime.errors import EdgertError
from edge_runtime.protocol import ModelId, Task

CARD_SCHEMA = "edgert.model/1"
ONNX_FILE = "model.onnx"
CARD_FILE = "model.json"


class PackageError(EdgertError, ValueError):
    """A model package that cannot be used; the message names the package and the field."""


class Activation(str, enum.Enum):
    """What the model applies to its scores before the output (decoding compares scores accordingly)."""

    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    NONE = "none"


class Decode(str, enum.Enum):
    ARGMAX = "argmax"  # one channel per label, the highest wins
    THRESHOLD = "threshold"  # one foreground channel compared with `threshold` (2 labels)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    labels: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    activation: Activation = Activation.SOFTMAX
    decode: Decode = Decode.ARGMAX
    threshold: float = 0.5  # a probability after a sigmoid, else a raw score


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    task: Task
    input_name: str
    preprocess: PreprocessSpec
    output: OutputSpec
    onnx_sha256: str | None = None
    description: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    dicom_output: DicomOutput = DicomOutput.DISPLAY8  # how DICOM training images were rendered (preprocessing.dicom)


@dataclass(frozen=True)
class ModelPackage:
    root: Path
    card: ModelCard
    sha256: str

    @property
    def onnx_path(self) -> Path:
        return self.root / ONNX_FILE

    @property
    def model_id(self) -> ModelId:
        return ModelId(self.card.name, self.card.version, self.sha256)


def _get(section: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in section:
        if default is ...:
            raise PackageError(f"{where}: missing '{key}'")
        return default
    value = section[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):  # bool is an int subclass
        raise PackageError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _enum(enum_type: Any, value: str, where: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        raise PackageError(f"{where}: '{value}' is not one of {[e.value for e in enum_type]}") from None


def parse_card(data: Mapping[str, Any], where: str = CARD_FILE) -> ModelCard:
    """Build a ModelCard from parsed JSON, naming the first bad field."""
    if not isinstance(data, Mapping):
        raise PackageError(f"{where}: must be a JSON object")
    schema = data.get("schema")
    if schema != CARD_SCHEMA:
        raise PackageError(f"{where}: schema is {schema!r}, expected '{CARD_SCHEMA}'")
    try:
        task = Task.from_name(_get(data, "task", str, where))
    except ValueError as exc:
        raise PackageError(f"{where}.task: {exc}") from None
    inp = _get(data, "input", dict, where)
    shape = _get(inp, "shape", list, f"{where}.input")
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape) or shape[0] != 1:
        raise PackageError(f"{where}.input.shape: expected [1, C, H, W] or [1, H, W, C] of positive ints, got {shape}")
    if _get(inp, "dtype", str, f"{where}.input", "float32") != "float32":
        raise PackageError(f"{where}.input.dtype: only float32 inputs are supported")
    layout = _enum(Layout, _get(inp, "layout", str, f"{where}.input", "NCHW"), f"{where}.input.layout")
    pre = _get(data, "preprocessing", dict, where, {})
    color = _enum(Color, _get(pre, "color", str, f"{where}.preprocessing", "gray"), f"{where}.preprocessing.color")
    channels, height, width = (
        (shape[1], shape[2], shape[3]) if layout is Layout.NCHW else (shape[3], shape[1], shape[2])
    )
    if channels != color.channels:
        raise PackageError(
            f"{where}: input.shape has {channels} channel(s) but preprocessing.color '{color.value}' has {color.channels}"
        )
    try:
        spec = PreprocessSpec(
            height=height,
            width=width,
            color=color,
            layout=layout,
            resize=_enum(
                ResizeMode,
                _get(pre, "resize", str, f"{where}.preprocessing", "stretch"),
                f"{where}.preprocessing.resize",
            ),
            mean=tuple(float(v) for v in _get(pre, "mean", list, f"{where}.preprocessing", [0.0])),
            std=tuple(float(v) for v in _get(pre, "std", list, f"{where}.preprocessing", [1.0])),
        )
    except (ValueError, TypeError) as exc:
        raise PackageError(f"{where}.preprocessing: {exc}") from None
    out = _get(data, "output", dict, where)
    labels = tuple(str(x) for x in _get(out, "labels", list, f"{where}.output"))
    colors_raw = _get(out, "colors", list, f"{where}.output")
    if len(labels) < 2 or len(colors_raw) != len(labels):
        raise PackageError(
            f"{where}.output: need >= 2 labels and one color per label ({len(labels)} labels, {len(colors_raw)} colors)"
        )
    if len(set(labels)) != len(labels):
        raise PackageError(f"{where}.output.labels: duplicate names in {labels}")
    try:
        colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in colors_raw)
    except (TypeError, ValueError, IndexError):
        raise PackageError(f"{where}.output.colors: each color must be [r, g, b]") from None
    if any(not 0 <= v <= 255 for c in colors for v in c):
        raise PackageError(f"{where}.output.colors: values must be 0..255")
    activation = _enum(
        Activation, _get(out, "activation", str, f"{where}.output", "softmax"), f"{where}.output.activation"
    )
    decode = _enum(Decode, _get(out, "decode", str, f"{where}.output", "argmax"), f"{where}.output.decode")
    if decode is Decode.THRESHOLD and len(labels) != 2:
        raise PackageError(f"{where}.output: decode 'threshold' is for one foreground class (2 labels)")
    threshold = float(_get(out, "threshold", (int, float), f"{where}.output", 0.5))
    if activation is Activation.SIGMOID and not 0.0 < threshold < 1.0:
        raise PackageError(
            f"{where}.output.threshold: a probability after a sigmoid must be in (0, 1), got {threshold}"
        )
    sha = data.get("onnx_sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise PackageError(f"{where}.onnx_sha256: expected a 64-character hex digest")
    return ModelCard(
        name=_get(data, "name", str, where),
        version=_get(data, "version", str, where),
        task=task,
        input_name=_get(inp, "name", str, f"{where}.input"),
        preprocess=spec,
        output=OutputSpec(
            name=_get(out, "name", str, f"{where}.output"),
            labels=labels,
            colors=colors,
            activation=activation,
            decode=decode,
            threshold=threshold,
        ),
        onnx_sha256=sha,
        dicom_output=_enum(
            DicomOutput, _get(pre, "dicom", str, f"{where}.preprocessing", "display8"), f"{where}.preprocessing.dicom"
        ),
        description=str(data.get("description", "")),
        metrics=data.get("metrics", {}) or {},
    )


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
    if card.output.name not in outputs:
        raise PackageError(
            f"{where}: card output '{card.output.name}' is not a graph output; the graph has {sorted(outputs)}"
        )
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
    # Detection outputs are raw head tensors in many layouts: the card names them, the shape is not checked.


def _extract(archive: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="edgert-pkg-"))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(target, filter="data")
        else:
            raise PackageError(f"{archive}: not a folder, .zip or .tar model package")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise PackageError(f"{archive}: cannot unpack ({exc})") from None
    found = [p.parent for p in target.rglob(CARD_FILE)]
    if len(found) != 1:
        raise PackageError(f"{archive}: expected one {CARD_FILE} inside, found {len(found)}")
    return found[0]


def load_package(path: str | Path) -> ModelPackage:
    """Load and validate a model package; raises PackageError with the package path in the message."""
    path = Path(path)
    if not path.exists():
        raise PackageError(f"{path}: no such model package")
    root = path if path.is_dir() else _extract(path)
    card_path, onnx_path = root / CARD_FILE, root / ONNX_FILE
    for required in (card_path, onnx_path):
        if not required.is_file():
            raise PackageError(f"{path}: missing {required.name}")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{card_path}: not valid JSON ({exc})") from None
    card = parse_card(data, where=str(card_path))
    blob = onnx_path.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    if card.onnx_sha256 and card.onnx_sha256.lower() != sha:
        raise PackageError(f"{onnx_path}: sha256 {sha[:16]}... does not match the card's {card.onnx_sha256[:16]}...")
    try:
        model = onnx.load_from_string(blob)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types for a broken file
        raise PackageError(
            f"{onnx_path}: not a valid ONNX model ({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from None
    _check_graph(model, card, str(onnx_path))
    return ModelPackage(root=root, card=card, sha256=sha)


def demo_package_path() -> Path:
    """The bundled demo model package (installed with edge_runtime)."""
    return Path(__file__).resolve().parent / "models" / "us_seg_demo"
