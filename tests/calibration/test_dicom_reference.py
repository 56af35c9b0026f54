"""Every file that ships with pydicom, and every built case, rendered by us and by the independent reference in
`dicom_reference.py` (pydicom's own LUT functions). A file pydicom can show must come out the same from us (to one
grey level); a file it cannot show must be refused by us with a DicomError naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom.data
import pytest

from calibration.dicom import DicomError, iter_dicom_frames
from tests.calibration.dicom_reference import read, reference_frames
from tests.calibration.make_dicom import RENDERED, write

BUNDLED_ROOT = Path(pydicom.data.__file__).parent
BUNDLED = sorted(
    p
    for p in BUNDLED_ROOT.rglob("*")
    if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
)


def _reference(path: Path) -> list[np.ndarray] | None:
    """pydicom's rendering, or None where pydicom itself cannot decode an image from the file."""
    try:
        return reference_frames(read(str(path)))
    except Exception:
        return None


def assert_matches_reference(ours: list[np.ndarray], reference: list[np.ndarray], name: str) -> None:
    assert len(ours) == len(reference), f"{name}: {len(ours)} frames, reference {len(reference)}"
    for i, (frame, ref) in enumerate(zip(ours, reference)):
        where = f"{name} frame {i + 1}"
        assert frame.dtype == np.uint8 and frame.shape == ref.shape, f"{where}: {frame.dtype} {frame.shape}"
        ref8 = ref * 255.0
        ours_f = frame.astype(np.float64)
        # A VOI transform applied twice, or a stretch that clips, pushes pixels to the ends: count them first.
        saturated = float(np.mean((frame == 0) | (frame == 255)))
        ref_saturated = float(np.mean((ref8 <= 0.5) | (ref8 >= 254.5)))
        assert saturated <= ref_saturated + 0.01, f"{where}: {saturated:.1%} at 0/255, reference {ref_saturated:.1%}"
        if ref8.std() > 1e-6 and ours_f.std() > 1e-6:
            corr = float(np.corrcoef(ours_f.ravel(), ref8.ravel())[0, 1])
            assert corr > 0.99, f"{where}: correlation {corr:.4f} with the reference"
        # Both sides decode through the same pydicom decoder, so lossy files match exactly too.
        diff = float(np.abs(ours_f - ref8).max())
        assert diff <= 1.0, f"{where}: differs from the reference by up to {diff:.1f} grey levels"


@pytest.mark.parametrize("path", BUNDLED, ids=[str(p.relative_to(BUNDLED_ROOT)) for p in BUNDLED])
def test_bundled_file_is_rendered_as_the_reference_or_refused(path: Path) -> None:
    reference = _reference(path)
    if reference is None:
        with pytest.raises(DicomError) as refused:
            _, frames = iter_dicom_frames(path)
            list(frames)
        assert str(path) in str(refused.value)
        return
    _, frames = iter_dicom_frames(path)
    assert_matches_reference(list(frames), reference, path.name)


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_built_case_is_rendered_as_the_reference(name: str, tmp_path: Path) -> None:
    path = write(RENDERED[name](), tmp_path / f"{name}.dcm")
    reference = _reference(path)
    assert reference is not None, f"the reference cannot render {name}"
    _, frames = iter_dicom_frames(path)
    assert_matches_reference(list(frames), reference, name)


def test_the_reference_test_catches_a_double_window(tmp_path: Path) -> None:
    """The comparison must fail on the bug it guards against: the window applied a second time on top."""
    path = Path(pydicom.data.get_testdata_file("MR_small.dcm"))
    (ours,) = list(iter_dicom_frames(path)[1])
    ds = read(str(path))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    twice = np.clip((ours.astype(np.float64) - (center - width / 2)) / width * 255, 0, 255).astype(np.uint8)
    with pytest.raises(AssertionError, match="at 0/255|correlation|grey levels"):
        assert_matches_reference([twice], _reference(path) or [], "MR_small twice windowed")
