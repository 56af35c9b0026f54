from __future__ import annotations

import numpy as np
import pytest

from calibration.preprocessing import Color, Layout, Preprocessor, PreprocessSpec, ResizeMode, resize_labels


def test_gray_uint8_to_nchw_with_normalization() -> None:
    pre = Preprocessor(PreprocessSpec(height=4, width=4, mean=(0.5,), std=(0.5,)))
    frame = np.full((4, 4), 255, np.uint8)
    x, place = pre(frame, Color.GRAY)
    assert x.shape == (1, 1, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0)  # (1 - 0.5) / 0.5
    assert (place.top, place.left, place.height, place.width) == (0, 0, 4, 4)


def test_uint16_and_float_frames_map_to_unit_range() -> None:
    pre = Preprocessor(PreprocessSpec(height=2, width=2))
    np.testing.assert_allclose(pre(np.full((2, 2), 65535, np.uint16), Color.GRAY)[0], 1.0)
    np.testing.assert_allclose(pre(np.full((2, 2), 0.25, np.float32), Color.GRAY)[0], 0.25)
    with pytest.raises(TypeError, match="int32"):
        pre(np.zeros((2, 2), np.int32), Color.GRAY)


def test_color_conversions() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    gray = Preprocessor(PreprocessSpec(height=2, width=2, color=Color.GRAY))
    np.testing.assert_allclose(gray(rgb, Color.RGB)[0], 0.299, atol=1e-6)
    np.testing.assert_allclose(gray(rgb[..., ::-1].copy(), Color.BGR)[0], 0.299, atol=1e-6)
    to_bgr = Preprocessor(PreprocessSpec(height=2, width=2, color=Color.BGR, layout=Layout.NHWC, mean=(0,), std=(1,)))
    x, _ = to_bgr(rgb, Color.RGB)
    assert x.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(x[0, 0, 0], [0, 0, 1])
    with pytest.raises(ValueError, match="does not match color"):
        gray(rgb, Color.GRAY)


def test_letterbox_keeps_aspect_and_labels_map_back() -> None:
    pre = Preprocessor(PreprocessSpec(height=8, width=8, resize=ResizeMode.LETTERBOX, pad_value=-9.0))
    frame = np.zeros((4, 8), np.uint8)
    x, place = pre(frame, Color.GRAY)
    assert (place.top, place.height, place.left, place.width) == (2, 4, 0, 8)
    assert (x[0, 0, :2] == -9.0).all() and (x[0, 0, 6:] == -9.0).all() and (x[0, 0, 2:6] == 0.0).all()
    labels = np.zeros((8, 8), np.uint8)
    labels[2:6, 4:] = 1  # right half of the image area
    back = resize_labels(labels, place)
    assert back.shape == (4, 8)
    assert (back[:, 4:] == 1).all() and (back[:, :4] == 0).all()


def test_resize_downscale_is_antialiased() -> None:
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    x, _ = Preprocessor(PreprocessSpec(height=8, width=8))(checker, Color.GRAY)
    np.testing.assert_allclose(x, 0.5, atol=0.05)  # a fine checkerboard averages to mid-gray, not aliasing


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="positive"):
        PreprocessSpec(height=0, width=4)
    with pytest.raises(ValueError, match="mean must have 1 or 3"):
        PreprocessSpec(height=4, width=4, color=Color.RGB, mean=(0.1, 0.2))
