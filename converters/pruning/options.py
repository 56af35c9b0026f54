"""Pruning's options and its report: what is asked (`PruneOptions`) and what was done (`PruneReport`, with its
layers, allocation steps and the sensitivity pass's cost)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

from calibration.errors import OptionError
from converters.kinds import Budget
from edge_runtime.backends.sessions import CpuSetup


def cpu_channel_block() -> int:
    """The channel block ONNX Runtime's CPU convolutions work in here (its NCHWc layout): 16 with AVX-512, 8 with
    AVX2, else 1 (no blocked layout: time follows the channel count)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return 1
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return 8 if os.name == "nt" else 1
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = 0.3  # fraction of the budget's measure to remove
    budget: Budget = Budget.LATENCY
    repair: bool = True  # least-squares refits (else bias correction only), in the sensitivity steps too
    max_layer_ratio: float = 0.75  # no family loses more than this fraction of its channels
    ridge: float = 1e-2  # least-squares regularisation towards the current weights, relative to mean diag(X^T X)
    positions: int = 512  # output positions sampled per frame for the least-squares fits
    channel_multiple: int = 16  # kept channel counts are multiples of this (or unchanged): ORT's CPU convs work
    # in blocks of 16 channels on AVX-512 (8 on AVX2) and TensorRT's tensor cores in multiples of 8, so 44 of 48
    # channels run as slowly as 48 (measured: 4.8 ms for 36-48 channels, 3.7 ms for 32, here)
    max_steps: int = 8  # sensitivity is measured at no more than this many kept counts per family
    block: int = 0  # the kernels' channel block in the latency cost model; 0: this CPU's (`cpu_channel_block`)
    anchors: int = 2  # steps per family whose loss the whole model measures; the others are interpolated
    time_budget_s: float | None = 900.0  # refuse (before it starts) a sensitivity pass estimated to take longer
    cpu: CpuSetup = CpuSetup()  # how the layers' time is measured (reported, never allocated on)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise OptionError(f"prune ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise OptionError(f"max layer ratio must be in (0, 1), got {self.max_layer_ratio}")
        if self.channel_multiple < 1 or self.max_steps < 1 or self.block < 0:
            raise OptionError("channel multiple and max steps must be >= 1, block >= 0")
        if self.anchors < 1 or (self.time_budget_s is not None and not self.time_budget_s > 0):
            raise OptionError("anchors must be >= 1 and the sensitivity time budget > 0 s")


@dataclass(frozen=True)
class LayerChannels:
    node: str
    op: str
    before: int  # output channels
    after: int


@dataclass(frozen=True)
class FamilyStep:
    """One step of the allocation: a family's producers, the channels it keeps, what pruning it alone cost."""

    producers: tuple[str, ...]
    before: int  # channels of the family
    after: int
    loss: float  # drop of the task metric with only this family pruned to `after`, on the calibration frames
    cost_left: float  # the budget's modelled measure after this step and every step before it


@dataclass
class SensitivityCost:
    """What the sensitivity pass cost: it grows with the layer families (one activation pass and `anchors`
    whole-model evaluations each), not with families x steps x frames."""

    families: int = 0
    steps: int = 0  # kept counts whose loss is known (measured at anchors, interpolated between them)
    whole_model_runs: int = 0  # candidate evaluations over every sensitivity frame
    activation_passes: int = 0  # passes over the frames for the consumers' normal equations (families share them)
    frames: int = 0
    estimated_s: float = field(default=0.0, compare=False)  # what the budget was checked against, before the pass
    seconds: float = field(default=0.0, compare=False)  # measured: not part of what the pass decided


@dataclass
class PruneReport:
    budget: Budget = Budget.LATENCY
    flops_before: int = 0
    flops_after: int = 0
    layer_us_before: float = 0.0  # profiled time of the weighted ops (latency budget)
    layer_us_removed: float = 0.0  # the share the cost model says the selection removes, of that time
    params_before: int = 0
    params_after: int = 0
    groups: int = 0  # prunable channel groups found
    families: int = 0  # of them, by producing layers
    groups_removed: int = 0
    blocked: list[str] = field(default_factory=list)  # why some channels cannot be removed (one line per cause)
    layers: list[LayerChannels] = field(default_factory=list)  # weighted ops whose output channels changed
    steps: list[FamilyStep] = field(default_factory=list)  # the allocation's steps taken, in order
    repaired: list[str] = field(default_factory=list)  # convs refitted by least squares
    sensitivity: SensitivityCost | None = None  # what measuring each family's loss cost

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / self.flops_before if self.flops_before else 1.0
