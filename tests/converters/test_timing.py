"""Timing decisions that noise cannot flip: order-statistic intervals, paired rounds, ties."""

from __future__ import annotations

import pytest

from converters.timing import Outcome, compare_samples, median_interval


def test_the_median_interval_brackets_the_median_by_order_statistics() -> None:
    assert median_interval([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)  # too few values: the whole range
    mid, low, high = median_interval([float(v) for v in range(1, 10)])
    assert (mid, low, high) == (5.0, 2.0, 8.0)  # n = 9: the 2nd and 8th order statistics (98% coverage)
    with pytest.raises(ValueError):
        median_interval([])


def test_a_real_gain_is_faster_a_small_one_is_a_tie_and_noise_never_decides() -> None:
    b = [10.0, 10.4, 9.8, 10.1, 10.6, 9.9, 10.2, 10.0, 10.3]
    faster = compare_samples([x * 0.8 for x in b], b, gain=0.03)
    assert faster.outcome is Outcome.FASTER and faster.ratio == pytest.approx(0.8)
    slower = compare_samples([x * 1.1 for x in b], b, gain=0.03)
    assert slower.outcome is Outcome.NOT_FASTER
    noisy = [x * f for x, f in zip(b, (0.9, 1.08, 0.95, 1.1, 0.92, 1.04, 0.97, 1.06, 0.99))]
    assert compare_samples(noisy, b, gain=0.03).outcome is Outcome.TIE  # 3% inside +-10% of noise: no decision
    same = compare_samples(b, b, gain=0.03)
    assert same.outcome is Outcome.NOT_FASTER and "interval" in same.describe()
