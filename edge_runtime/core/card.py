"""The model card, `model.json`: its types and its strict parser. Every field is checked for type, range and size
where it enters (labels bounded in count and length, printable text only, the input within `[limits]`), so a card
that would mislead the surgeon's display is refused at load. `package.py` checks the card against the graph.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.preprocessing import Color, DicomOutput, Layout, PreprocessSpec, ResizeMode
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


PRECISIONS = ("fp32", "fp16", "int8")  # what a converted graph computes in (mixed INT8 and FP16 counts as int8)


@dataclass(frozen=True)
class ConversionInfo:
    """What `edgert convert` wrote into a converted package's card (`conversion`): the artifact's identity beyond
    its sha256, so every screen that names the model can say which one runs. Its version carries the same tags
    (`1.0.0+int8`), and that version travels in every result."""

    precision: str  # one of PRECISIONS
    from_sha256: str = ""  # the original model's graph
    gate: str = "not recorded"  # the accuracy gate's verdict in words, on frames used for nothing else
    tool: str = ""  # the edgert that converted it


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
    conversion: ConversionInfo | None = None  # a package `edgert convert` wrote

    @property
    def precision(self) -> str:
        """The converted precision, else "fp32" (a model as exported, which edgert has not converted)."""
        return self.conversion.precision if self.conversion is not None else "fp32"

    @property
    def identity(self) -> str:
        """`name version (precision)`: how every command names the artifact."""
        return f"{self.name} {self.version} ({self.precision})"


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
        conversion=_conversion(data, where),
    )


def _conversion(data: Mapping[str, Any], where: str) -> ConversionInfo | None:
    note = _get(data, "conversion", dict, where, None)
    if note is None:
        return None
    where = f"{where}.conversion"
    precision = _text(note, "precision", where)
    if precision not in PRECISIONS:
        raise PackageError(f"{where}.precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    sha = _text(note, "from_sha256", where, "")
    if sha and len(sha) != 64:
        raise PackageError(f"{where}.from_sha256: expected a 64-character hex digest")
    gate = _text(note, "gate", where, "not recorded", MAX_DESCRIPTION_CHARS)
    return ConversionInfo(precision, sha, gate, _text(note, "tool", where, ""))


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
