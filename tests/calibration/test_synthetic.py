from __future__ import annotations

import numpy as np
import pytest

from calibration.synthetic import LABELS, SyntheticUltrasound


def test_same_seed_same_images_and_all_classes_appear() -> None:
    a_img, a_mask = SyntheticUltrasound(96, 128, seed=1).batch(12)
    b_img, b_mask = SyntheticUltrasound(96, 128, seed=1).batch(12)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert set(np.unique(a_mask)) == set(range(len(LABELS)))
    assert a_img.dtype == np.uint8 and a_img.shape == (12, 96, 128)


def test_anechoic_classes_are_darker_than_tissue_and_lesions_brighter() -> None:
    imgs, masks = SyntheticUltrasound(128, 160, seed=2).batch(20)
    tissue = imgs[(masks == 0) & (imgs > 0)].mean()
    assert imgs[masks == 1].mean() < 0.5 * tissue  # vessels
    assert imgs[masks == 2].mean() < 0.5 * tissue  # cysts
    assert imgs[masks == 3].mean() > tissue  # hyperechoic lesions


def test_cine_moves_slowly() -> None:
    frames = list(SyntheticUltrasound(64, 64, seed=3).cine(3))
    assert len(frames) == 3
    overlap = ((frames[0][1] > 0) & (frames[1][1] > 0)).sum() / max(1, (frames[0][1] > 0).sum())
    assert overlap > 0.7


def test_too_small() -> None:
    with pytest.raises(ValueError, match="32x32"):
        SyntheticUltrasound(16, 16)
