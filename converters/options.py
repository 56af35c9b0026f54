"""The options of one conversion, as a frozen dataclass, and their JSON form (a plan records them; `--plan`
reads them back)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from calibration.errors import OptionError
from calibration.kinds import CalibrationMethod, SampleOrder
from converters.kinds import DEFAULT_OPSET, Budget, Precision, PruneMethod, QuantTarget, Saliency
from edge_runtime.backends.base import CpuOptions, Spin
from edge_runtime.backends.sessions import CpuSetup


@dataclass(frozen=True)
class ConvertOptions:
    precision: Precision = Precision.FP32
    data: str | None = None
    samples: int = 32  # calibration frames (INT8 ranges, pruning's importance, sensitivity and refits)
    search_samples: int = 100  # frames every choice is judged on (calibration method, fallbacks, pruning ratio)
    verify_samples: int = 200  # frames used for nothing else, which deliver the verdict
    verify: str | None = None  # the verify split's source (default: --data's, disjoint frames of it)
    min_support: int = 10  # frames (boxes) of a class in the verify split for the class to be judged
    tolerance: float | None = None  # allowed shortfall of the task metric below 1.0; default per task
    target_opset: int = DEFAULT_OPSET
    input_shape: Sequence[int] | None = None  # fix the model input's dims to this shape
    fix_shapes: bool = False  # fix dynamic dims to the card's input shape
    range_margin: float = 2.0
    use_ranges: bool = True  # False: convert every registry op (naive), for comparison and tests
    gate: bool = True
    max_fallback: int | None = None  # fallbacks the gate may add; default max(4, 25% of nodes)
    calib: str | None = None  # INT8 calibration source (default: `data`); evaluation stays on `data`
    calib_method: CalibrationMethod | None = None  # None: try each method and keep the one the gate scores best
    percentile: float = 99.99
    target: QuantTarget = QuantTarget.ONNXRUNTIME
    fallback: Precision = Precision.FP32  # precision of INT8 layers the gate sends back (fp32 or fp16)
    trt_version: str = "10.3.0"  # version written into calibration.cache
    stride: int = 1
    sample_order: SampleOrder = SampleOrder.SPREAD
    seed: int = 0
    latency: bool = True  # onnxruntime target: profile per-layer cost and keep layers out of INT8 that do not pay
    prune: PruneMethod | None = None  # prune before the precision stages
    prune_budget: float = 0.3  # fraction of the layers' time (or FLOPs) to remove; backs off while the gate fails
    prune_repair: bool = True  # least-squares refit of every conv after a pruned channel (else bias correction)
    prune_by: Budget | None = None  # what the budget is a fraction of; None: latency for onnxruntime, else FLOPs
    prune_multiple: int = 0  # kept channel counts are multiples of this (1: any count; 0: this CPU's channel
    # block for a latency budget, 8 for FLOPs, the tensor cores' multiple)
    prune_target_ms: float | None = None  # --prune-budget as a latency: the FP32 model's time per run to reach
    prune_frames: int = 16  # calibration frames that measure sensitivity and refit the layers
    prune_time_budget_s: float | None = 900.0  # refuse a sensitivity pass estimated to take longer (None: no limit)
    sparse_saliency: Saliency = Saliency.OBS  # --prune 2:4: which two of four weights go
    cpu: CpuSetup = CpuSetup()  # how timed sessions use the CPUs: as the cart's daemon runs (--config, --threads)

    def __post_init__(self) -> None:
        if min(self.samples, self.search_samples, self.verify_samples, self.min_support) < 1:
            raise OptionError("--samples, --search-samples, --verify-samples and --min-support must be >= 1")
        if not 0.0 < self.prune_budget < 1.0:
            raise OptionError(f"--prune-budget must be a fraction in (0, 1), got {self.prune_budget}")
        if self.prune_target_ms is not None and not self.prune_target_ms > 0.0:
            raise OptionError(f"--prune-budget as a latency must be > 0 ms, got {self.prune_target_ms}")
        if self.prune_time_budget_s is not None and not self.prune_time_budget_s > 0.0:
            raise OptionError(f"--prune-time-budget must be > 0 s, got {self.prune_time_budget_s}")
        if self.prune_multiple < 0 or self.prune_frames < 1:
            raise OptionError("--prune-multiple must be >= 0 (0: automatic) and the pruning frames >= 1")


_ENUMS: dict[str, type[enum.Enum]] = {
    "precision": Precision, "calib_method": CalibrationMethod, "target": QuantTarget, "fallback": Precision,
    "sample_order": SampleOrder, "prune": PruneMethod, "prune_by": Budget, "sparse_saliency": Saliency,
}  # fmt: skip


def options_to_json(options: ConvertOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, CpuSetup):  # as the report writes it
            value = {"threads": value.threads, "options": {"spin": value.options.spin.value,
                                                           "worker_cpus": list(value.options.worker_cpus)}}  # fmt: skip
        out[f.name] = (
            value.value if isinstance(value, enum.Enum) else list(value) if isinstance(value, tuple | list) else value
        )
    return out


def options_from_json(data: Mapping[str, Any]) -> ConvertOptions:
    """The options a plan recorded; a key this version does not know is an error, a missing one its default."""
    known = {f.name for f in dataclasses.fields(ConvertOptions)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise OptionError(f"options {unknown} are not options of this edgert")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if value is not None and name in _ENUMS:
            value = _ENUMS[name](value)
        elif name == "input_shape" and value is not None:
            value = tuple(int(v) for v in value)
        elif name == "cpu":
            cpu = value.get("options", {})
            cpus = tuple(int(c) for c in cpu.get("worker_cpus", ()))
            value = CpuSetup(int(value.get("threads", 0)), CpuOptions(Spin(cpu.get("spin", "always")), cpus))
        values[name] = value
    return ConvertOptions(**values)


__all__ = ["ConvertOptions", "options_from_json", "options_to_json"]
