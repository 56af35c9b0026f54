"""Calibration's option enums and `Sampling` in one light module (no numpy, no decoders): the CLI takes its choices
and defaults from them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from calibration.errors import SourceError


class SampleOrder(str, enum.Enum):
    SPREAD = "spread"  # a seeded uniform sample over the whole source: diverse frames (default)
    FIRST = "first"  # the first frames in order: fast, but a cine's first second is one scene


class CalibrationMethod(str, enum.Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


@dataclass(frozen=True)
class Sampling:
    """Which frames of a source calibration and evaluation use."""

    count: int = 32
    stride: int = 1  # consider every `stride`-th frame only
    order: SampleOrder = SampleOrder.SPREAD
    seed: int = 0

    def __post_init__(self) -> None:
        if self.count <= 0 or self.stride <= 0:
            raise SourceError(f"the sample count and stride must be positive, got {self.count} and {self.stride}")

    def describe(self) -> str:
        parts = [f"stride {self.stride}"] if self.stride > 1 else []
        if self.order is SampleOrder.SPREAD:
            parts.append(f"spread over the source (seed {self.seed})")
        else:
            parts.append("first frames")
        return ", ".join(parts)
