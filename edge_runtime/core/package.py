"""Model packages: a folder (or .zip/.tar archive of one) holding `model.onnx` and its card, `model.json`.

`load_package` parses the card strictly, checks the ONNX file's sha256 against the card, and checks that the graph
really has the input and output the card describes, so a wrong model is refused at load, never at the first frame.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calibration.preprocessing import Color, DicomOutput, Layout, PreprocessSpec, ResizeMode
from edge_runtime.core.archives import ArchiveError, file_sha256, unpack_to_temp
from edge_runtime.core.errors import EdgertError
from edge_runtime.core.protocol import Limits, ModelId, Task

CARD_SCHEMA = "edgert.model/1"
ONNX_FILE = "model.onnx"
CARD_FILE = "model.json"
MAX_LABELS = 1000  # classes of one model
MAX_LABEL_CHARS = 64  # a label is drawn on the surgeon's screen and copied into every result
MAX_NAME_CHARS = 128  # name, version, tensor names
MAX_DESCRIPTION_CHARS = 4096
MAX_CARD_BYTES = 1 << 20  # model.json


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


class BoxLayout(str, enum.Enum):
    """How a detector's output holds its boxes."""

    YOLO = "yolo"  # one tensor [1, N, 5 + C]: cx, cy, w, h, objectness, C class scores (YOLOv5/v7 exports)
    YOLO_ANCHOR_FREE = "yolo-anchor-free"  # one tensor [1, 4 + C, N]: cx, cy, w, h, C class scores (YOLOv8 exports)
    NMS = "nms"  # already suppressed: boxes [1, K, 4], scores [1, K], classes [1, K], optional count [1] or [1, 1]
    GFL = "gfl"  # generalized focal loss heads (PP-PicoDet, NanoDet): per stride, class scores [1, N, C] and box
    # side distributions [1, N, 4 * (reg_max + 1)] (or one output [1, N, C + 4 * (reg_max + 1)] over every stride)


class BoxFormat(str, enum.Enum):
    CXCYWH = "cxcywh"  # centre and size
    XYXY = "xyxy"  # corners


@dataclass(frozen=True)
class TrackerSpec:
    """Hysteresis for boxes: a track shows once matched in `min_hits` of its last `window` frames, and keeps showing
    its last box for at most `max_missed` frames without a match (bounded, so a box never outlives its object by
    more than that)."""

    min_hits: int = 3
    window: int = 5
    max_missed: int = 2
    iou: float = 0.3  # the least overlap that continues a track (same class)


@dataclass(frozen=True)
class DetectionSpec:
    layout: BoxLayout
    box_format: BoxFormat
    normalized: bool = False  # coordinates in 0..1 of the model input instead of input pixels
    score_threshold: float = 0.25
    iou_threshold: float = 0.45  # class-aware NMS (yolo layouts)
    max_detections: int = 100
    candidates: int = 1000  # the highest-scoring boxes that enter NMS
    scores: str | None = None  # nms layout: the other outputs (the boxes are `OutputSpec.name`)
    classes: str | None = None
    count: str | None = None
    tracker: TrackerSpec | None = None
    strides: tuple[int, ...] = ()  # gfl: the feature strides, in the order the outputs hold them
    reg_max: int = 7  # gfl: each box side is a distribution over 0..reg_max cells
    cell_offset: float = 0.5  # gfl: anchor centre (x + offset) * stride (PicoDet 0.5, NanoDet 0)
    score_outputs: tuple[str, ...] = ()  # gfl: one per stride; empty: `OutputSpec.name` holds all, concatenated
    box_outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassificationSpec:
    multi_label: bool = False  # independent sigmoid per class instead of one softmax
    top_k: int = 5
    saliency: str | None = None  # CAM: the graph output holding the feature map that the linear head pools
    no_saliency_reason: str = ""  # said in the card when the head cannot give a CAM


@dataclass(frozen=True)
class OutputSpec:
    name: str
    labels: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    activation: Activation = Activation.SOFTMAX
    decode: Decode = Decode.ARGMAX
    threshold: float = 0.5  # a probability after a sigmoid, else a raw score
    detection: DetectionSpec | None = None  # detection cards only
    classification: ClassificationSpec | None = None  # classification cards only

    @property
    def names(self) -> tuple[str, ...]:
        """Every graph output the task reads."""
        extra: tuple[str | None, ...] = ()
        if self.detection is not None:
            d = self.detection
            extra = (d.scores, d.classes, d.count, *d.score_outputs, *d.box_outputs)
            if d.score_outputs:  # the per-stride outputs, `name` (the first score output) among them once
                return tuple(dict.fromkeys(n for n in extra if n))
        if self.classification is not None:
            extra = (self.classification.saliency,)
        return (self.name, *(n for n in extra if n))


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
    data_source: str | None = None  # frames like the model's own (a calibration.sources name), for conversion


RAW_TASK = "raw"  # a card's task for a model edgert has no decoder for: its input only, for conversion


@dataclass(frozen=True)
class InputCard:
    """What frames become for a model: its input tensor and the preprocessing. Every card has one; a `raw` card
    (a model edgert has no decoder for) is only this, so `convert` can still feed it real frames and judge its
    outputs as numbers."""

    name: str
    version: str
    input_name: str
    preprocess: PreprocessSpec
    dicom_output: DicomOutput = DicomOutput.DISPLAY8
    data_source: str | None = None


@dataclass(frozen=True)
class CamWeights:
    """The linear head after global average pooling, read from the graph: logits = weights @ mean(features) + bias,
    so the class activation map of class k is weights[k] . features at each position (no gradients)."""

    weights: np.ndarray  # [classes, channels] float32
    bias: np.ndarray  # [classes]


@dataclass(frozen=True)
class ModelPackage:
    root: Path
    card: ModelCard
    sha256: str
    cam: CamWeights | None = None  # classification cards naming a saliency feature map

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


def _text(section: Mapping[str, Any], key: str, where: str, default: Any = ..., limit: int = MAX_NAME_CHARS) -> Any:
    """A string field: printable (no newline or control character to forge a log line) and at most `limit` long."""
    value = _get(section, key, str, where, default)
    if isinstance(value, str):
        _check_text(value, f"{where}.{key}", limit)
    return value


def _check_text(value: str, where: str, limit: int) -> None:
    if len(value) > limit:
        raise PackageError(f"{where}: {len(value)} characters, at most {limit}")
    if not value.isprintable():
        raise PackageError(f"{where}: holds a control character (newline, tab, escape...); only printable text")


def _enum(enum_type: Any, value: str, where: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        raise PackageError(f"{where}: {str(value)[:40]!r} is not one of {[e.value for e in enum_type]}") from None


def parse_input_card(data: Mapping[str, Any], where: str = CARD_FILE, limits: Limits = Limits()) -> InputCard:
    """The input half of a card (any task, `raw` included), naming the first bad field; the input is at most
    `limits`' largest frame (an input tensor is allocated for it at load)."""
    if not isinstance(data, Mapping):
        raise PackageError(f"{where}: must be a JSON object")
    schema = data.get("schema")
    if schema != CARD_SCHEMA:
        raise PackageError(f"{where}: schema is {schema!r}, expected '{CARD_SCHEMA}'")
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
    if width > limits.max_width or height > limits.max_height:
        raise PackageError(
            f"{where}.input.shape: {width}x{height} is over the limit of {limits.max_width}x{limits.max_height}"
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
    return InputCard(
        name=_text(data, "name", where),
        version=_text(data, "version", where),
        input_name=_text(inp, "name", f"{where}.input"),
        preprocess=spec,
        dicom_output=_enum(
            DicomOutput, _get(pre, "dicom", str, f"{where}.preprocessing", "display8"), f"{where}.preprocessing.dicom"
        ),
        data_source=_text(data, "data_source", where, None),
    )


def parse_card(data: Mapping[str, Any], where: str = CARD_FILE, limits: Limits = Limits()) -> ModelCard:
    """Build a ModelCard from parsed JSON, naming the first bad field. Every text is bounded and printable."""
    inputs = parse_input_card(data, where, limits)
    task_name = _get(data, "task", str, where)
    if task_name == RAW_TASK:
        raise PackageError(
            f"{where}.task: a '{RAW_TASK}' card describes the input only, for `edgert convert --card`; a package the "
            "daemon serves needs a task whose outputs it decodes (segmentation, classification, detection)"
        )
    try:
        task = Task.from_name(task_name)
    except ValueError as exc:
        raise PackageError(f"{where}.task: {exc}") from None
    out = _get(data, "output", dict, where)
    labels_raw = _get(out, "labels", list, f"{where}.output")
    if len(labels_raw) > MAX_LABELS:
        raise PackageError(f"{where}.output.labels: {len(labels_raw)} labels, at most {MAX_LABELS}")
    if not all(isinstance(x, str) for x in labels_raw):
        raise PackageError(f"{where}.output.labels: every label must be a string")
    labels = tuple(labels_raw)
    for i, label in enumerate(labels):
        _check_text(label, f"{where}.output.labels[{i}]", MAX_LABEL_CHARS)
    colors_raw = _get(out, "colors", list, f"{where}.output")
    multi_label = bool(_get(out, "multi_label", bool, f"{where}.output", False))
    fewest = 1 if task is Task.DETECTION or (task is Task.CLASSIFICATION and multi_label) else 2
    if len(labels) < fewest or len(colors_raw) != len(labels):
        raise PackageError(
            f"{where}.output: need >= {fewest} labels for {task.label} and one color per label "
            f"({len(labels)} labels, {len(colors_raw)} colors)"
        )
    if len(set(labels)) != len(labels):
        raise PackageError(f"{where}.output.labels: duplicate names in {labels}")
    try:
        colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in colors_raw)
    except (TypeError, ValueError, IndexError):
        raise PackageError(f"{where}.output.colors: each color must be [r, g, b]") from None
    if any(not 0 <= v <= 255 for c in colors for v in c):
        raise PackageError(f"{where}.output.colors: values must be 0..255")
    default_activation = "sigmoid" if task is Task.DETECTION or multi_label else "softmax"
    activation = _enum(
        Activation, _get(out, "activation", str, f"{where}.output", default_activation), f"{where}.output.activation"
    )
    if task is Task.DETECTION and activation is Activation.SOFTMAX:
        raise PackageError(f"{where}.output.activation: detection scores are 'sigmoid' (probabilities) or 'none'")
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
        name=inputs.name,
        version=inputs.version,
        task=task,
        input_name=inputs.input_name,
        preprocess=inputs.preprocess,
        output=OutputSpec(
            name=_text(out, "name", f"{where}.output"),
            labels=labels,
            colors=colors,
            activation=activation,
            decode=decode,
            threshold=threshold,
            detection=_detection(out, f"{where}.output") if task is Task.DETECTION else None,
            classification=(
                _classification(out, multi_label, len(labels), f"{where}.output")
                if task is Task.CLASSIFICATION
                else None
            ),
        ),
        onnx_sha256=sha,
        dicom_output=inputs.dicom_output,
        description=_text(data, "description", where, "", MAX_DESCRIPTION_CHARS),
        metrics=data.get("metrics", {}) or {},
        data_source=inputs.data_source,
    )


def _fraction(section: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = float(_get(section, key, (int, float), where, default))
    if not 0.0 <= value <= 1.0:
        raise PackageError(f"{where}.{key}: must be within [0, 1], got {value}")
    return value


def _count(section: Mapping[str, Any], key: str, where: str, default: int, least: int = 1) -> int:
    value = int(_get(section, key, int, where, default))
    if value < least:
        raise PackageError(f"{where}.{key}: must be at least {least}, got {value}")
    return value


def _detection(out: Mapping[str, Any], where: str) -> DetectionSpec:
    layout = _enum(BoxLayout, _get(out, "layout", str, where), f"{where}.layout")
    default_format = "xyxy" if layout is BoxLayout.NMS else "cxcywh"
    names: dict[str, str | None] = {key: _text(out, key, where, None) for key in ("scores", "classes", "count")}
    if layout is BoxLayout.NMS and not (names["scores"] and names["classes"]):
        raise PackageError(f"{where}: layout 'nms' names its 'scores' and 'classes' outputs ('count' is optional)")
    if layout is not BoxLayout.NMS and any(names.values()):
        raise PackageError(f"{where}: 'scores', 'classes' and 'count' belong to layout 'nms', not '{layout.value}'")
    gfl: dict[str, Any] = {}
    if layout is BoxLayout.GFL:
        strides = _get(out, "strides", list, where)
        if not strides or not all(isinstance(v, int) and 0 < v <= 1024 for v in strides):
            raise PackageError(f"{where}.strides: layout 'gfl' needs its feature strides, e.g. [8, 16, 32, 64]")
        reg_max = int(_get(out, "reg_max", int, where, 7))
        if not 1 <= reg_max <= 64:
            raise PackageError(f"{where}.reg_max: must be within 1..64, got {reg_max}")
        score_outputs = tuple(_get(out, "score_outputs", list, where, []))
        box_outputs = tuple(_get(out, "box_outputs", list, where, []))
        if (score_outputs or box_outputs) and not (len(score_outputs) == len(box_outputs) == len(strides)):
            raise PackageError(f"{where}: layout 'gfl' names one score and one box output per stride ({len(strides)})")
        if not all(isinstance(n, str) for n in (*score_outputs, *box_outputs)):
            raise PackageError(f"{where}: gfl output names must be strings")
        if score_outputs and _get(out, "name", str, where) != score_outputs[0]:
            raise PackageError(
                f"{where}.name: with per-stride outputs, name the first score output ('{score_outputs[0]}')"
            )
        offset = float(_get(out, "cell_offset", (int, float), where, 0.5))
        if offset not in (0.0, 0.5):
            raise PackageError(f"{where}.cell_offset: 0.5 (cell centres, PicoDet) or 0 (cell corners, NanoDet)")
        gfl = {"strides": tuple(strides), "reg_max": reg_max, "cell_offset": offset,
               "score_outputs": score_outputs, "box_outputs": box_outputs}  # fmt: skip
    else:
        stray = [k for k in ("strides", "reg_max", "cell_offset", "score_outputs", "box_outputs") if k in out]
        if stray:
            raise PackageError(f"{where}: {stray} belong to layout 'gfl', not '{layout.value}'")
    tracker = None
    if "tracker" in out:
        t = _get(out, "tracker", dict, where)
        tw = f"{where}.tracker"
        window = _count(t, "window", tw, TrackerSpec.window)
        min_hits = _count(t, "min_hits", tw, min(TrackerSpec.min_hits, window))
        if min_hits > window:
            raise PackageError(f"{tw}: min_hits {min_hits} is more than the window of {window} frames")
        tracker = TrackerSpec(min_hits, window, _count(t, "max_missed", tw, TrackerSpec.max_missed, least=0),
                              _fraction(t, "iou", tw, TrackerSpec.iou))  # fmt: skip
    return DetectionSpec(
        layout=layout,
        box_format=_enum(BoxFormat, _get(out, "box_format", str, where, default_format), f"{where}.box_format"),
        normalized=bool(_get(out, "normalized", bool, where, False)),
        score_threshold=_fraction(out, "score_threshold", where, DetectionSpec.score_threshold),
        iou_threshold=_fraction(out, "iou_threshold", where, DetectionSpec.iou_threshold),
        max_detections=_count(out, "max_detections", where, DetectionSpec.max_detections),
        candidates=_count(out, "candidates", where, DetectionSpec.candidates),
        tracker=tracker,
        scores=names["scores"],
        classes=names["classes"],
        count=names["count"],
        **gfl,
    )


def _classification(out: Mapping[str, Any], multi_label: bool, n_labels: int, where: str) -> ClassificationSpec:
    saliency = _get(out, "saliency", (str, dict), where, None)
    reason = ""
    if isinstance(saliency, dict):
        if _get(saliency, "method", str, f"{where}.saliency") != "cam":
            raise PackageError(f"{where}.saliency.method: only 'cam' (class activation map) is supported")
        features = _text(saliency, "features", f"{where}.saliency")
    elif saliency is None:
        features = None
        reason = "the card names no feature map for a class activation map"
    else:
        features, reason = None, str(saliency)  # a string says why there is none
    return ClassificationSpec(multi_label, min(_count(out, "top_k", where, 5), n_labels), features, reason)


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
        raise ValueError(f"'{name}' is not a constant the head can be read from")

    def only_consumer(name: str) -> onnx.NodeProto:
        users = [n for n in consumers.get(name, []) if n.op_type != "QuantizeLinear"] or consumers.get(name, [])
        if len(users) != 1:
            raise ValueError(f"'{name}' feeds {len(users)} nodes; a CAM needs one pooling path to the logits")
        node = users[0]
        if node.op_type == "QuantizeLinear":  # an INT8 graph: skip the Q/DQ pair
            dq = only_consumer(node.output[0])
            return only_consumer(dq.output[0]) if dq.op_type == "DequantizeLinear" else dq
        return node

    pool = only_consumer(features)
    if pool.op_type not in ("GlobalAveragePool", "ReduceMean"):
        raise ValueError(f"'{features}' goes to {pool.op_type}, not to global average pooling")
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
        raise ValueError(f"pooled features go to {node.op_type}, not to a linear head (Gemm or MatMul)")
    after = consumers.get(out, [])
    if out != logits and not (
        len(after) == 1 and after[0].op_type in ("Softmax", "Sigmoid") and after[0].output[0] == logits
    ):
        raise ValueError(f"the linear head's output '{out}' is not the card's output '{logits}'")
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
