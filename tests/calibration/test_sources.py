from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from calibration.dicom import DicomError
from calibration.preprocessing import Color
from calibration.sources import SourceError, SyntheticSource, open_source


def test_synthetic_source_with_options() -> None:
    src = open_source("synthetic:frames=5,size=64x96,seed=3,fps=15")
    assert isinstance(src, SyntheticSource)
    frames = list(src)
    assert len(frames) == 5
    assert frames[0].pixels.shape == (64, 96) and frames[0].color is Color.GRAY
    assert frames[0].frame_interval_s == pytest.approx(1 / 15)
    assert [f.meta["frame"] for f in frames] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "spec", ["synthetic:frames=x", "synthetic:colour=red", "synthetic:frames=0", "synthetic:size=8x8"]
)
def test_bad_synthetic_options(spec: str) -> None:
    with pytest.raises(SourceError):
        list(open_source(spec))


def test_dicom_file_source_metadata_has_no_identifiers() -> None:
    src = open_source(get_testdata_file("examples_ybr_color.dcm"))
    first = next(iter(src))
    assert first.frame_interval_s == pytest.approx(0.033333)
    assert set(first.meta) == {"source", "modality", "frames", "frame"}


def test_folder_skips_unreadable_files_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copy(get_testdata_file("examples_rgb_color.dcm"), tmp_path / "1.dcm")
    shutil.copy(get_testdata_file("ExplVR_BigEnd.dcm"), tmp_path / "2.dcm")
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        frames = list(open_source(str(tmp_path)))
    assert [f.pixels.shape for f in frames] == [(240, 320, 3), (60, 80, 3)]
    assert "notes.txt" in caplog.text


def test_missing_and_unusable_sources(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "missing.dcm"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty"):
        open_source(str(tmp_path / "empty"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.bin").write_bytes(b"\0" * 10)
    with pytest.raises(SourceError, match="no readable frames"):
        list(open_source(str(tmp_path / "junk")))
    bad = tmp_path / "bad.dcm"
    bad.write_text("garbage")
    with pytest.raises(DicomError, match="bad.dcm"):
        open_source(str(bad))


def test_image_folder_with_gray_rgb_16bit_and_a_corrupt_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((8, 10), 7, np.uint8)).save(tmp_path / "a_gray.png")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "b_rgb.jpg")
    Image.fromarray(np.full((8, 10), 40000, np.uint16)).save(tmp_path / "c_16bit.png")
    (tmp_path / "d_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with caplog.at_level(logging.WARNING):
        frames = list(open_source(str(tmp_path)))
    assert [(f.pixels.dtype.name, f.color) for f in frames] == [
        ("uint8", Color.GRAY), ("uint8", Color.RGB), ("uint16", Color.GRAY),
    ]  # fmt: skip
    assert int(frames[2].pixels[0, 0]) == 40000
    assert "d_broken.png" in caplog.text


def test_numpy_sources(tmp_path: Path) -> None:
    import numpy as np

    np.save(tmp_path / "stack.npy", np.zeros((4, 6, 8), np.uint8))
    np.savez(tmp_path / "mixed.npz", one=np.zeros((6, 8, 3), np.uint8), many=np.ones((2, 6, 8), np.uint16))
    assert len(list(open_source(str(tmp_path / "stack.npy")))) == 4
    frames = list(open_source(str(tmp_path / "mixed.npz")))
    assert [f.color for f in frames] == [Color.GRAY, Color.GRAY, Color.RGB]  # keys in name order: many, one
    np.save(tmp_path / "bad.npy", np.zeros((2, 2), np.int64))
    with pytest.raises(SourceError, match="uint8, uint16 or float32"):
        list(open_source(str(tmp_path / "bad.npy")))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match="not object"):  # refused by its header: never unpickled
        list(open_source(str(tmp_path / "objects.npy")))


def test_video_source(tmp_path: Path) -> None:
    av = pytest.importorskip("av", reason="video sources need the optional 'av' package")
    import numpy as np

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(6):
            img = np.full((48, 64, 3), i * 40, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    frames = list(open_source(str(path)))
    assert len(frames) == 6 and frames[0].pixels.shape == (48, 64, 3) and frames[0].color is Color.RGB
    assert frames[0].frame_interval_s == pytest.approx(0.04)
    assert frames[5].pixels.mean() > frames[0].pixels.mean() + 100


def test_sampling_first_stride_and_seeded_spread() -> None:
    from calibration.sources import SampleOrder, Sampling, sample_frames

    def frames():
        return open_source("synthetic:frames=40,size=32x32,clip=1")

    first = Sampling(4, stride=3, order=SampleOrder.FIRST)
    assert [f.meta["frame"] for f in sample_frames(frames(), first)] == [0, 3, 6, 9]
    a = [f.meta["frame"] for f in sample_frames(frames(), Sampling(5, seed=7))]
    b = [f.meta["frame"] for f in sample_frames(frames(), Sampling(5, seed=7))]
    c = [f.meta["frame"] for f in sample_frames(frames(), Sampling(5, seed=8))]
    assert a == b != c and len(set(a)) == 5 and max(a) > 4  # the default draws from the whole source
    with pytest.raises(SourceError, match="positive"):
        Sampling(0)


def test_a_sampled_synthetic_source_gives_independent_scenes_and_a_cine_does_not() -> None:
    """Bug 4: `synthetic` for calibration used to mean the first frames of one cine clip, nearly one image.
    Sampled without its own clip, it is independent scenes, as many as asked for."""
    from calibration.sources import SampleOrder, Sampling, sample_source

    def spread(frames: list) -> float:  # scene change between consecutive samples: 16x16 block means (no speckle)
        px = [f.pixels.astype(np.float32).reshape(4, 16, 4, 16).mean(axis=(1, 3)) for f in frames]
        return float(np.mean([np.abs(a - b).mean() for a, b in zip(px, px[1:])]))

    sampled, description = sample_source("synthetic:size=64x64", Sampling(6))
    cine = sample_frames_first(open_source("synthetic:size=64x64"), 6)
    assert len(sampled) == 6 and "independent scenes" in description
    assert spread(sampled) > 3 * spread(cine)
    again, _ = sample_source("synthetic:size=64x64", Sampling(6))
    other, _ = sample_source("synthetic:size=64x64", Sampling(6, seed=1))
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(sampled, again))
    assert not np.array_equal(sampled[0].pixels, other[0].pixels)  # the seed picks other scenes
    clip, _ = sample_source("synthetic:size=64x64,clip=60", Sampling(6, order=SampleOrder.FIRST))
    assert spread(clip) == pytest.approx(spread(cine))  # an explicit clip is respected


def sample_frames_first(source, count: int):  # type: ignore[no-untyped-def]
    from calibration.sources import SampleOrder, Sampling, sample_frames

    return sample_frames(source, Sampling(count, order=SampleOrder.FIRST))
