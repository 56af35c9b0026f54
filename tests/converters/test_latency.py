"""Latency-aware INT8 placement: per-layer cost from ORT's profiler, fusion check, end-to-end verification.

Timing assertions here only use differences of several times (a 32-channel 3x3 conv against a 1-to-32-channel one
that pays a layout change and a quantize around a trivial kernel), never absolute figures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

from calibration.calibrators import CalibrationMethod, CalibratorOptions
from converters.convert import ConvertOptions, Precision, convert_model, summary_text
from converters.int8 import QuantTarget, calibrate, insert_qdq, quantizable_nodes
from converters.latency import layer_costs, place_for_latency
from converters.timing import Outcome, time_models

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from make_models import int8_slow_layer  # noqa: E402

DATA = "synthetic:frames=16,size=64x64,seed=3"


def _int8(model: onnx.ModelProto, units: list[str]) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.uniform(-1, 1, (1, 1, 96, 96)).astype(np.float32)} for _ in range(4)]
    calibrator = calibrate(model, feeds, CalibratorOptions())
    return insert_qdq(model, calibrator.amax(), units, QuantTarget.ONNXRUNTIME, calibrator.non_negative()), feeds


def test_profiling_finds_the_layer_that_is_slower_in_int8() -> None:
    model = int8_slow_layer()
    units = quantizable_nodes(model)
    int8, feeds = _int8(model, units)
    costs = {c.node: c for c in layer_costs(model, int8, units, feeds, runs=10)}
    assert set(costs) == {"tiny", "conv_a", "conv_b", "conv_c", "head"}
    assert all(c.fused and c.fp32_us and c.int8_us for c in costs.values())
    assert costs["conv_a"].pays is False  # 1 -> 32 channels: the Q, NHWC transposes and DQ cost more than the conv
    assert costs["conv_b"].pays is True and costs["conv_c"].pays is True  # 32 -> 32 3x3: integer kernels win


def test_proposed_layers_leave_int8_only_if_the_whole_model_gets_faster() -> None:
    model = int8_slow_layer()
    units = quantizable_nodes(model)
    _, feeds = _int8(model, units)
    keep, report = place_for_latency(model, lambda on: _int8(model, list(on))[0], units, feeds, rounds=5)
    slow = next(c for c in report.layers if c.node == "conv_a")
    # the slow layer is proposed, or (on a machine too loaded to tell) undecided: never counted faster in INT8
    assert ("conv_a" in report.proposed or slow.pays is None) and "conv_b" not in report.proposed
    assert report.int8_ms < report.fp32_ms
    # nested candidates, most INT8 first, FP32 last; a step to fewer INT8 layers, and INT8 over FP32, is taken only
    # when the whole interval of the time ratio clears the gain (a tie keeps the safer side)
    counts = [t.int8_layers for t in report.trials]
    assert counts[0] == len(units) and counts[-1] == 0 and counts == sorted(counts, reverse=True)
    chosen = next(t for t in report.trials if t.int8_layers == len(keep))
    assert report.chosen_ms == chosen.ms
    steps = [d for d in report.decisions if d.against_layers > 0]
    taken = [d.int8_layers for d in steps if d.outcome is Outcome.FASTER]
    assert len(keep) == (taken[-1] if taken else len(units)) or not keep
    against_fp32 = [d for d in report.decisions if d.against_layers == 0]
    assert len(against_fp32) == 1
    if keep:  # INT8 ships only if the whole interval says it is faster than FP32 by the gain
        assert against_fp32[0].outcome is Outcome.FASTER and against_fp32[0].speed.high < 1 - against_fp32[0].speed.gain
    else:
        assert against_fp32[0].outcome is not Outcome.FASTER
    assert set(report.kept_fp32_for_speed) == set(units) - set(keep)
    unknown = {c.node for c in report.layers if c.pays is None}
    if keep and len(keep) < len(units):
        assert set(keep) in (set(units) - set(report.proposed), set(units) - set(report.proposed) - unknown)
    assert report.int8_ms == report.trials[0].ms and report.fp32_ms == report.trials[-1].ms


def test_time_models_interleaves_and_tells_a_heavier_model_apart() -> None:
    light, heavy = int8_slow_layer(size=32), int8_slow_layer(size=160)
    feeds_light = [{"image": np.zeros((1, 1, 32, 32), np.float32)}]
    (t_light,) = time_models([light], feeds_light, rounds=3, runs=5)
    (t_heavy,) = time_models([heavy], [{"image": np.zeros((1, 1, 160, 160), np.float32)}], rounds=3, runs=5)
    assert t_heavy > 5 * t_light  # 25x the pixels


def test_convert_reports_an_op_onnx_runtime_does_not_fuse(tiny_models: dict[str, Path]) -> None:
    options = ConvertOptions(precision=Precision.INT8, calib=DATA, samples=8, calib_method=CalibrationMethod.MINMAX,
                             tolerance=0.5)  # fmt: skip
    result = convert_model(tiny_models["unet_bn"], options)
    lat, q = result.report.latency, result.report.int8
    assert result.passed and lat is not None and q is not None
    up = next(c for c in lat.layers if c.node == "up")
    assert not up.fused and "no integer kernel for ConvTranspose" in up.reason and "up" in lat.proposed
    assert "ConvTranspose 'up' not fused by ONNX Runtime" in summary_text(result.report)
    speed = {k.node for k in q.kept_higher_precision if k.reason.startswith("speed:")}
    assert speed == set(lat.kept_fp32_for_speed) and q.int8_ops == q.quantizable_ops - len(speed)
    quantized_weights = {i.name for i in result.model.graph.initializer if i.name.endswith("_int8")}
    assert len(quantized_weights) == q.int8_ops
    assert result.report.to_json()["latency"]["layers"][0].keys() >= {"node", "fp32_us", "int8_us", "fused"}
    # speed first: the accuracy search only ranks the layers that stay INT8, and what ships is timed
    assert not {s.node for s in result.report.accuracy.sensitivity} & speed
    assert lat.final_ms is not None and "shipped" in summary_text(result.report)


def test_latency_stage_can_be_switched_off_and_is_skipped_for_tensorrt(tiny_models: dict[str, Path]) -> None:
    base = dict(precision=Precision.INT8, calib=DATA, samples=8, calib_method=CalibrationMethod.MINMAX, tolerance=0.5)
    assert convert_model(tiny_models["unet_bn"], ConvertOptions(**base, latency=False)).report.latency is None
    trt = ConvertOptions(**base, target=QuantTarget.TENSORRT)
    assert convert_model(tiny_models["unet_bn"], trt).report.latency is None
