"""Calibration/evaluation inputs and the daemon's inputs are bit-identical for the same frame.

The daemon side goes through the real path: wire encoding and decoding, then `InferencePipeline.run`, with the
backend's `infer` wrapped to capture exactly what the model receives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from pydicom.data import get_testdata_file

from calibration.preprocessing import Color, DicomOutput
from calibration.sources import SampleOrder, Sampling, open_source
from converters.data import load_feeds
from edge_runtime.core.package import load_package
from edge_runtime.core.protocol import PixelFormat, decode_frame, encode_frame
from edge_runtime.inference.pipeline import InferencePipeline

FORMAT = {Color.GRAY: PixelFormat.GRAY8, Color.RGB: PixelFormat.RGB8}


def _daemon_inputs(
    package_path: Path, source: str, n: int, dicom: DicomOutput = DicomOutput.DISPLAY8
) -> list[np.ndarray]:
    captured: list[np.ndarray] = []
    with InferencePipeline(load_package(package_path)) as pipe:
        original = pipe.runner.infer

        def capture(feed):  # type: ignore[no-untyped-def]
            captured.append(next(iter(feed.values())).copy())
            return original(feed)

        pipe.runner.infer = capture  # type: ignore[method-assign]
        for seq, frame in enumerate(open_source(source, dicom)):
            if seq == n:
                break
            parts = encode_frame(frame.pixels, stream_id=0, seq=seq, capture_ts_ns=0, send_ts_ns=0,
                                 pixel_format=FORMAT[frame.color] if frame.pixels.dtype == np.uint8 else None)  # fmt: skip
            pipe.run(decode_frame([bytes(p) for p in parts]), recv_ts_ns=0)
    return captured


@pytest.mark.parametrize(
    "source",
    [get_testdata_file("examples_ybr_color.dcm"), get_testdata_file("CT_small.dcm"), "synthetic:frames=4,clip=1"],
    ids=["us-cine-rgb", "ct-gray", "synthetic"],
)
def test_calibration_and_daemon_inputs_are_bit_identical(demo_model: Path, source: str) -> None:
    pkg = load_package(demo_model)
    feeds = load_feeds(source, onnx.load(str(pkg.onnx_path)), pkg.card, Sampling(4, order=SampleOrder.FIRST)).feeds
    daemon = _daemon_inputs(demo_model, source, len(feeds))
    assert len(daemon) == len(feeds) > 0
    for feed, seen in zip(feeds, daemon):
        x = feed[pkg.card.input_name]
        assert x.dtype == seen.dtype == np.float32 and x.shape == seen.shape
        assert x.tobytes() == seen.tobytes()  # bit for bit, not merely close


def test_card_dicom_display16_feeds_match_the_daemons_gray16_inputs(demo_model: Path, tmp_path: Path) -> None:
    """A card saying preprocessing.dicom = display16: calibration renders 16-bit, the daemon gets GRAY16 frames,
    and the model sees the same bits on both sides (and not the 8-bit rendering)."""
    import json
    import shutil

    pkg_dir = tmp_path / "pkg16"
    shutil.copytree(demo_model, pkg_dir)
    card = json.loads((pkg_dir / "model.json").read_text())
    card["preprocessing"]["dicom"] = "display16"
    (pkg_dir / "model.json").write_text(json.dumps(card))
    pkg = load_package(pkg_dir)
    assert pkg.card.dicom_output is DicomOutput.DISPLAY16
    source = get_testdata_file("MR_small.dcm")
    feeds = load_feeds(source, onnx.load(str(pkg.onnx_path)), pkg.card, Sampling(1, order=SampleOrder.FIRST)).feeds
    (daemon16,) = _daemon_inputs(pkg_dir, source, 1, DicomOutput.DISPLAY16)
    (daemon8,) = _daemon_inputs(pkg_dir, source, 1, DicomOutput.DISPLAY8)
    assert feeds[0][pkg.card.input_name].tobytes() == daemon16.tobytes()
    assert daemon16.tobytes() != daemon8.tobytes() and np.abs(daemon16 - daemon8).max() < 0.05  # same picture
