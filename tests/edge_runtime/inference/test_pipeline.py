from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.synthetic import SyntheticUltrasound
from edge_runtime.backends import BackendError
from edge_runtime.backends.onnxruntime import OnnxRuntimeRunner
from edge_runtime.core.package import load_package
from edge_runtime.core.protocol import Frame, MaskResolution, PixelFormat, ResultStatus
from edge_runtime.inference.pipeline import InferencePipeline


def _frame(pixels: np.ndarray, fmt: PixelFormat = PixelFormat.GRAY8, spacing: tuple | None = None) -> Frame:
    return Frame(stream_id=1, seq=5, capture_ts_ns=100, send_ts_ns=200, pixel_format=fmt, pixels=pixels,
                 spacing_mm=spacing)  # fmt: skip


def test_tiny_model_segments_dark_and_bright(tiny_models: dict[str, Path]) -> None:
    frame = np.full((32, 48), 128, np.uint8)
    frame[:8, :12] = 0  # dark -> class 1
    frame[-8:, -12:] = 255  # bright -> class 2
    with InferencePipeline(load_package(tiny_models["seg_tiny"])) as pipe:
        r = pipe.run(_frame(frame, spacing=(0.5, 0.5)), recv_ts_ns=150)
    assert r.status is ResultStatus.OK
    mask = r.frame_mask()
    assert r.frame_shape == (32, 48) and mask is not None and mask.shape == (32, 48)
    assert (
        r.areas_px == {"dark": 96, "bright": 96} == {"dark": int((mask == 1).sum()), "bright": int((mask == 2).sum())}
    )
    assert r.areas_mm2 == {"dark": 24.0, "bright": 24.0}
    assert set(r.contours) == {"dark", "bright"}
    xs = [x for x, _ in r.contours["bright"][0]]
    # scaled back to frame pixels (region is columns 36..47): vertices sit at model-pixel centres, 3 px apart here
    assert 36 <= min(xs) <= 38 and 45 <= max(xs) <= 47
    assert (r.stream_id, r.seq, r.capture_ts_ns, r.recv_ts_ns) == (1, 5, 100, 150)
    assert r.recv_ts_ns <= r.infer_start_ns <= r.infer_end_ns


def test_demo_model_segments_held_out_synthetic_frames(demo_model: Path) -> None:
    gen = SyntheticUltrasound(240, 320, seed=4242)
    inter = union = 0
    with InferencePipeline(load_package(demo_model), threads=1) as pipe:
        for _ in range(6):
            img, truth = gen.sample()
            r = pipe.run(_frame(img), recv_ts_ns=0)
            mask = r.frame_mask()
            assert mask is not None
            inter += int(((mask > 0) & (truth > 0)).sum())
            union += int(((mask > 0) | (truth > 0)).sum())
    assert inter / union > 0.75  # foreground IoU: a mismatched or untrained model scores far lower


def test_rgb_frames_are_converted_for_a_gray_model(tiny_models: dict[str, Path]) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    with InferencePipeline(load_package(tiny_models["seg_tiny"])) as pipe:
        r = pipe.run(_frame(rgb, PixelFormat.RGB8), recv_ts_ns=0)
    assert r.status is ResultStatus.OK and r.areas_px["dark"] == 256


@pytest.mark.parametrize("size", [(240, 320), (1080, 1920), (100, 60)])
def test_a_model_resolution_mask_is_the_frame_mask_scaled_down(demo_model: Path, size: tuple[int, int]) -> None:
    """The default mask (the model's resolution) and a frame-resolution one describe the same pixels: scaled to the
    frame by the protocol's rule, they are equal, and the areas are those of the frame mask, exactly."""
    img, _ = SyntheticUltrasound(*size, seed=7).sample()
    package = load_package(demo_model)
    with (
        InferencePipeline(package, threads=1) as small,
        InferencePipeline(package, threads=1, mask=MaskResolution.FRAME) as full,
    ):
        a, b = small.run(_frame(img), 0), full.run(_frame(img), 0)
    assert a.mask is not None and b.mask is not None and b.mask.shape == size
    assert a.mask.size <= b.mask.size  # never larger than the frame's: a small frame gets its own resolution
    np.testing.assert_array_equal(a.frame_mask(), b.mask)
    areas = {name: int((b.mask == k).sum()) for k, name in enumerate(package.card.output.labels) if k}
    assert a.areas_px == b.areas_px == areas and a.contours == b.contours


def test_run_reports_its_stage_times(tiny_models: dict[str, Path]) -> None:
    with InferencePipeline(load_package(tiny_models["seg_tiny"])) as pipe:
        r = pipe.run(_frame(np.zeros((16, 16), np.uint8)), recv_ts_ns=0)
        times = pipe.last_times
        assert times is not None and min(times.preprocess_ns, times.model_ns, times.postprocess_ns) > 0
        assert times.preprocess_ns + times.model_ns + times.postprocess_ns <= r.infer_end_ns - r.infer_start_ns
    with InferencePipeline(load_package(tiny_models["seg_bad_runtime"])) as bad:
        bad.run(_frame(np.zeros((16, 16), np.uint8)), recv_ts_ns=0)
        assert bad.last_times is None  # a failed run has no stages to report


def test_failure_on_a_frame_becomes_an_error_result(tiny_models: dict[str, Path]) -> None:
    with InferencePipeline(load_package(tiny_models["seg_bad_runtime"])) as pipe:
        r = pipe.run(_frame(np.zeros((16, 16), np.uint8)), recv_ts_ns=0)
    assert r.status is ResultStatus.ERROR
    assert r.mask is None and "expected [N, 3, H, W]" in (r.error or "")


def test_runner_interface(tiny_models: dict[str, Path]) -> None:
    runner = OnnxRuntimeRunner(tiny_models["seg_tiny"] / "model.onnx", threads=1)
    with pytest.raises(BackendError, match="before activate"):
        runner.infer({"image": np.zeros((1, 1, 16, 16), np.float32)})
    with runner:
        out = runner.infer({"image": np.zeros((1, 1, 16, 16), np.float32)})
        assert out["logits"].shape == (1, 3, 16, 16)
        with pytest.raises(BackendError, match="inference failed"):
            runner.infer({"image": np.zeros((1, 1, 8, 8), np.float32)})
    assert not runner.is_active
    with pytest.raises(BackendError, match="cannot load"):
        OnnxRuntimeRunner(tiny_models["seg_tiny"] / "model.json").activate()
