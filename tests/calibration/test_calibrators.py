from __future__ import annotations

import numpy as np
import pytest

from calibration.calibrators import CalibrationMethod, Calibrator, CalibratorOptions, TensorHistogram


def _amax(data: list[np.ndarray], method: CalibrationMethod, **kw: float) -> float:
    cal = Calibrator(CalibratorOptions(method=method, **kw))  # type: ignore[arg-type]
    for batch in data:
        cal.collect({"t": batch})
    return cal.amax()["t"]


RNG = np.random.default_rng(0)
GAUSS = [RNG.standard_normal(20_000).astype(np.float32) for _ in range(5)]
WITH_OUTLIER = [*GAUSS, np.array([40.0], np.float32)]


def test_minmax_is_the_exact_peak() -> None:
    assert _amax(WITH_OUTLIER, CalibrationMethod.MINMAX) == 40.0


def test_percentile_matches_numpy_within_a_bin() -> None:
    flat = np.abs(np.concatenate(GAUSS))
    amax = _amax(GAUSS, CalibrationMethod.PERCENTILE, percentile=99.0)
    assert amax == pytest.approx(np.percentile(flat, 99.0), abs=float(flat.max()) / 2048 * 2)


@pytest.mark.parametrize("method", [CalibrationMethod.ENTROPY, CalibrationMethod.PERCENTILE])
def test_clipping_methods_ignore_a_single_outlier(method: CalibrationMethod) -> None:
    amax = _amax(WITH_OUTLIER, method)
    assert 2.0 < amax < 6.0  # a Gaussian's useful range, not the lone 40.0


def _quantization_mse(x: np.ndarray, amax: float) -> float:
    scale = amax / 127.0
    q = np.clip(np.round(x / scale), -127, 127) * scale
    return float(((x - q) ** 2).mean())


def test_mse_method_finds_the_error_minimizing_range() -> None:
    laplace = [RNG.laplace(0, 1, 50_000).astype(np.float32) for _ in range(2)]
    data = np.concatenate(laplace)
    chosen = _amax(laplace, CalibrationMethod.MSE)
    peak = float(np.abs(data).max())
    best = min(_quantization_mse(data, a) for a in np.linspace(0.05 * peak, peak, 200))  # brute force
    assert chosen < peak
    assert _quantization_mse(data, chosen) <= 1.05 * best
    assert _quantization_mse(data, chosen) < 0.9 * _quantization_mse(data, peak)


def test_entropy_keeps_the_full_range_of_a_uniform_distribution() -> None:
    uniform = [RNG.uniform(-1, 1, 50_000).astype(np.float32)]
    assert _amax(uniform, CalibrationMethod.ENTROPY) == pytest.approx(1.0, abs=0.02)


def test_growing_range_rebins_without_losing_counts() -> None:
    hist = TensorHistogram(bins=256)
    hist.update(np.linspace(-1, 1, 1000, dtype=np.float32))
    hist.update(np.array([37.0], np.float32))  # edge must grow by 64x
    assert hist.edge == 64.0 and hist.counts.sum() == hist.total == 1001
    assert hist.counts.size == 256  # memory does not grow with the data
    assert hist.counts[-1] == 0 and hist.counts[int(37.0 / hist.width)] == 1


def test_one_pass_equals_all_at_once_for_minmax_and_is_close_for_entropy() -> None:
    batches = [RNG.standard_normal(5000).astype(np.float32) * s for s in (0.5, 1.0, 2.0)]
    for method in (CalibrationMethod.MINMAX, CalibrationMethod.ENTROPY):
        incremental = _amax(batches, method)
        together = _amax([np.concatenate(batches)], method)
        assert incremental == pytest.approx(together, rel=0.1)  # re-binning coarsens the early batches


def test_errors() -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        Calibrator().collect({"bad": np.array([1.0, np.nan])})
    with pytest.raises(ValueError, match="no calibration data"):
        Calibrator().amax()
    with pytest.raises(ValueError, match="percentile"):
        CalibratorOptions(percentile=10)
    with pytest.raises(ValueError, match="power of two"):
        CalibratorOptions(bins=1000)


def test_all_zero_tensor() -> None:
    assert _amax([np.zeros(10, np.float32)], CalibrationMethod.ENTROPY) == 0.0
