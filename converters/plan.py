"""A conversion's decisions, recorded so that `edgert convert --plan report.json` rebuilds the same model without
measuring anything again.

Every choice a conversion makes from measurements (timings, sensitivities, gate scores) lands here: the channels
pruning removed, the layers made 2:4 sparse, the nodes in FP16, the INT8 calibration method, every tensor's range
and the ops quantized, the mixed-precision nodes. What is computed from data without a choice (least-squares
refits, 2:4 compensation, channel statistics) is computed again on the same calibration frames, which the recorded
options name. Replaying checks the input's sha256, rebuilds, compares the result's sha256 with the recorded one,
and runs the verify gate. Reviewing the plan is reviewing the artifact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from converters.graph import ConversionError

PLAN_SCHEMA = "edgert-plan/1"


@dataclass
class Int8Plan:
    method: str  # the calibration method chosen
    amax: dict[str, float]  # every calibrated tensor's range (|x| max the scale is taken from)
    nodes: list[str]  # the ops quantized
    non_negative: list[str]  # tensors quantized as unsigned-range (all values >= 0)
    fp16_nodes: list[str] = field(default_factory=list)  # --fallback fp16: the rest in FP16


@dataclass
class Plan:
    edgert_version: str
    input_sha256: str
    options: dict[str, Any]  # `converters.options.options_to_json`
    pruned: list[tuple[str, int]] = field(default_factory=list)  # one (tensor, channel) per removed channel group
    sparse_layers: list[str] = field(default_factory=list)
    fp16_nodes: list[str] | None = None  # --precision fp16
    int8: Int8Plan | None = None
    output_sha256: str | None = None  # the model the plan built, to check a replay against
    schema: str = PLAN_SCHEMA

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["pruned"] = [list(p) for p in self.pruned]
        return out


def plan_from_json(data: Any, where: str) -> Plan:
    if isinstance(data, dict) and "plan" in data and isinstance(data["plan"], dict):
        data = data["plan"]  # a report.json: its plan
    if not isinstance(data, dict) or data.get("schema") != PLAN_SCHEMA:
        raise ConversionError(f"{where}: not an edgert plan (a report.json whose 'plan' has schema '{PLAN_SCHEMA}')")
    try:
        int8 = Int8Plan(**data["int8"]) if data.get("int8") else None
        if int8 is not None:
            int8.amax = {str(k): float(v) for k, v in int8.amax.items()}
        return Plan(
            edgert_version=str(data["edgert_version"]),
            input_sha256=str(data["input_sha256"]),
            options=dict(data["options"]),
            pruned=[(str(t), int(c)) for t, c in data.get("pruned", [])],
            sparse_layers=[str(n) for n in data.get("sparse_layers", [])],
            fp16_nodes=None if data.get("fp16_nodes") is None else [str(n) for n in data["fp16_nodes"]],
            int8=int8,
            output_sha256=data.get("output_sha256"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"{where}: malformed plan ({exc.__class__.__name__}: {exc})") from None


def load_plan(path: str | Path) -> Plan:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read the plan ({exc.__class__.__name__})") from None
    return plan_from_json(data, str(path))


__all__ = ["PLAN_SCHEMA", "Int8Plan", "Plan", "load_plan", "plan_from_json"]
