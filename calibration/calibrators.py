"""Activation calibrators: per-tensor amax (the symmetric INT8 range) from data seen once.

Each tensor gets a histogram of |x| with a fixed number of bins over [0, edge]. When a batch exceeds the edge, the
edge doubles (as often as needed) and neighbouring bins merge. One pass over the data, memory independent of how
much data there is. From the histogram:
- minmax: the largest |x| seen (exact, tracked beside the histogram);
- percentile: the given percentile of |x|;
- entropy: the clipping threshold whose 128-level quantized distribution is closest to the original in KL
  divergence, as TensorRT's entropy calibrator chooses it;
- mse: the threshold that minimizes the expected squared error of rounding inside it and clipping beyond it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from calibration.errors import EdgertError, OptionError
from calibration.kinds import (
    CalibrationMethod as CalibrationMethod,  # defined with the other option enums, light to import
)


@dataclass(frozen=True)
class CalibratorOptions:
    method: CalibrationMethod = CalibrationMethod.ENTROPY
    percentile: float = 99.99
    bins: int = 2048
    quantized_bins: int = 128  # levels on one side of zero for symmetric INT8

    def __post_init__(self) -> None:
        if not 50.0 <= self.percentile <= 100.0:
            raise OptionError(f"percentile must be within 50..100, got {self.percentile}")
        if self.bins < 2 * self.quantized_bins or self.bins & (self.bins - 1):
            raise OptionError(f"bins must be a power of two and at least {2 * self.quantized_bins}, got {self.bins}")


class CalibrationError(EdgertError, ValueError):
    """Calibration data that cannot give ranges: NaN or inf in a tensor, or no data at all."""


class TensorHistogram:
    """|x| histogram over [0, edge] with a fixed bin count; the edge doubles to take larger values."""

    def __init__(self, bins: int = 2048) -> None:
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.edge = 0.0
        self.max = 0.0
        self.min = math.inf  # signed minimum: tells non-negative tensors (ReLU outputs) from signed ones
        self.total = 0

    def update(self, values: np.ndarray) -> None:
        raw = np.asarray(values, np.float32).ravel()
        if raw.size == 0:
            return
        if not np.isfinite(raw).all():
            raise CalibrationError("calibration data produced NaN or inf in this tensor")
        self.min = min(self.min, float(raw.min()))
        a = np.abs(raw)
        peak = float(a.max())
        self.max = max(self.max, peak)
        if self.edge == 0.0:
            if peak == 0.0:
                self.counts[0] += a.size  # all zeros so far: any positive edge will do later
                self.total += a.size
                return
            self.edge = peak
        if peak > self.edge:
            factor = 2 ** math.ceil(math.log2(peak / self.edge))
            merged = np.zeros_like(self.counts)
            np.add.at(merged, np.arange(self.bins) // min(factor, self.bins), self.counts)
            self.counts, self.edge = merged, self.edge * factor
        index = np.minimum((a * (self.bins / self.edge)).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)
        self.total += a.size

    @property
    def width(self) -> float:
        return self.edge / self.bins

    def amax(self, options: CalibratorOptions) -> float:
        if self.max == 0.0:
            return 0.0
        method = options.method
        if method is CalibrationMethod.MINMAX:
            return self.max
        if method is CalibrationMethod.PERCENTILE:
            cdf = np.cumsum(self.counts) / self.total
            index = int(np.searchsorted(cdf, options.percentile / 100.0))
            return min(self.max, (index + 1) * self.width)
        if method is CalibrationMethod.ENTROPY:
            return min(self.max, _entropy_threshold(self.counts, options.quantized_bins) * self.width)
        return min(self.max, _mse_threshold(self.counts, self.width, options.quantized_bins))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _entropy_threshold(counts: np.ndarray, levels: int) -> float:
    """Threshold in bins: TensorRT's entropy calibration (clip, quantize to `levels` bins, minimize KL)."""
    hist = counts.astype(np.float64)
    nonzero = np.flatnonzero(hist)
    last = int(nonzero[-1]) + 1 if nonzero.size else levels
    if last <= levels:
        return float(last)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])

    def kl_at(i: int) -> float:
        p = hist[:i].copy()
        p[i - 1] += tail[i]  # outliers are clipped into the last bin
        present = p > 0
        chunk = (np.arange(i) * levels) // i
        sums = np.bincount(chunk, weights=hist[:i], minlength=levels)
        filled = np.bincount(chunk, weights=present, minlength=levels)
        q = np.where(present, sums[chunk] / np.maximum(filled[chunk], 1), 0.0)
        q = np.where(present & (q == 0), 1e-12, q)  # a clipped bin whose chunk held nothing unclipped
        return _kl(p, q)

    # A coarse pass over at most 256 thresholds, then every bin around the best one: the same minimum as trying
    # every bin where the KL curve is smooth at that scale, at a tenth of the cost on 2048-bin histograms.
    step = max(1, (last - levels) // 256)
    coarse = range(levels, last + 1, step)
    best_i: int = min(coarse, key=kl_at)
    fine = range(max(levels, best_i - step + 1), min(last, best_i + step - 1) + 1)
    best_i = min([best_i, *fine], key=kl_at)
    return float(best_i) + 0.5


def _mse_threshold(counts: np.ndarray, width: float, levels: int) -> float:
    centers = (np.arange(counts.size) + 0.5) * width
    weights = counts.astype(np.float64)
    candidates = np.linspace(width, counts.size * width, 256)
    errors = []
    for amax in candidates:
        step = amax / (levels - 1)
        inside = centers <= amax
        err = np.where(inside, step * step / 12.0, (centers - amax) ** 2)
        errors.append(float((weights * err).sum()))
    return float(candidates[int(np.argmin(errors))])


class Calibrator:
    """Collects histograms for named tensors over any number of batches, then gives each one's amax."""

    def __init__(self, options: CalibratorOptions = CalibratorOptions()) -> None:
        self.options = options
        self.histograms: dict[str, TensorHistogram] = {}
        self.batches = 0

    def collect(self, tensors: Mapping[str, np.ndarray]) -> None:
        for name, values in tensors.items():
            hist = self.histograms.setdefault(name, TensorHistogram(self.options.bins))
            try:
                hist.update(values)
            except CalibrationError as exc:
                raise CalibrationError(f"tensor '{name}': {exc}") from None
        self.batches += 1

    def amax(self, method: CalibrationMethod | None = None) -> dict[str, float]:
        """Per-tensor amax by the configured method, or by `method` from the same histograms."""
        if not self.batches:
            raise CalibrationError("no calibration data was collected")
        options = self.options if method is None else replace(self.options, method=method)
        return {name: hist.amax(options) for name, hist in self.histograms.items()}

    def non_negative(self) -> set[str]:
        """Tensors never seen below zero (ReLU outputs and the like)."""
        return {name for name, hist in self.histograms.items() if hist.min >= 0.0}
