"""The per-layer precision report of a built engine, from TensorRT's engine inspector JSON or trtexec's
--exportLayerInfo."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from converters.kinds import Builder as Builder  # defined with the other option enums, light to import
from converters.kinds import HardwareCompat as HardwareCompat  # defined with the other option enums, light to import
from converters.kinds import Int8Path as Int8Path  # defined with the other option enums, light to import
from converters.kinds import Sparse as Sparse  # defined with the other option enums, light to import
from converters.trt.plan import BuildError

_TYPE_WORDS = (
    ("int8", "int8"),
    ("fp8", "fp8"),
    ("half", "fp16"),
    ("fp16", "fp16"),
    ("bf16", "bf16"),
    ("int32", "int32"),
    ("int64", "int64"),
    ("bool", "bool"),
    ("float", "fp32"),
    ("fp32", "fp32"),
)


def _type_of(io: Mapping[str, Any]) -> str:
    """A tensor's precision in IEngineInspector JSON: 'DataType' (TensorRT 11) or 'Format/DataType' (8.x, 10.x,
    e.g. 'Row major linear FP16 format')."""
    text = str(io.get("DataType") or io.get("Format/DataType") or "").lower()
    for word, name in _TYPE_WORDS:
        if word in text:
            return name
    return "unknown"


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    precision: str  # of the layer's first output


@dataclass(frozen=True)
class LayerReport:
    layers: tuple[LayerInfo, ...]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(layer.precision for layer in self.layers).most_common())

    def summary(self) -> str:
        return ", ".join(f"{n} {p.upper()}" for p, n in self.counts.items()) or "no layer information"


def parse_layer_info(text: str) -> LayerReport:
    """Layers and their precisions from `get_engine_information(LayerInformationFormat.JSON)` or trtexec's
    --exportLayerInfo (both need profiling verbosity DETAILED; with less, layers are bare names)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BuildError(f"layer information is not JSON ({exc})") from None
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    out: list[LayerInfo] = []
    for layer in layers:
        if isinstance(layer, str):  # verbosity below DETAILED: names only
            out.append(LayerInfo(layer, "unknown", "unknown"))
            continue
        outputs = layer.get("Outputs") or []
        precision = _type_of(outputs[0]) if outputs else "unknown"
        out.append(LayerInfo(str(layer.get("Name", "")), str(layer.get("LayerType", "unknown")), precision))
    return LayerReport(tuple(out))
