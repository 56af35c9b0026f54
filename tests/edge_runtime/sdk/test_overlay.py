from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.core.protocol import ModelId, PixelFormat, Result, ResultStatus, Task
from edge_runtime.sdk.overlay import draw_overlay, to_display_rgb


def _result(mask: np.ndarray | None, status: ResultStatus = ResultStatus.OK, contours: dict | None = None) -> Result:
    return Result(
        stream_id=0, seq=1, capture_ts_ns=0, recv_ts_ns=0, infer_start_ns=0, infer_end_ns=0, publish_ts_ns=0,
        task=Task.SEGMENTATION, status=status, model=ModelId("m", "1", "00" * 32), labels=("background", "cyst"),
        colors=((0, 0, 0), (0, 200, 0)), mask=mask, contours=contours or {},
    )  # fmt: skip


def test_mask_is_blended_only_where_classes_are() -> None:
    frame = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = 1
    out = draw_overlay(frame, _result(mask), alpha=0.5, contours=False)
    assert tuple(out[0, 0]) == (50, 150, 50)
    assert (out[1:, :] == 100).all()
    assert (frame == 100).all()  # the input frame is not modified


def test_contours_are_drawn_in_the_class_color() -> None:
    frame = np.zeros((10, 10, 3), np.uint8)
    mask = np.zeros((10, 10), np.uint8)
    poly = [(2, 2), (7, 2), (7, 7), (2, 7)]
    out = draw_overlay(frame, _result(mask, contours={"cyst": [poly]}), line_width=1)
    assert tuple(out[2, 5]) == (0, 200, 0) and tuple(out[5, 7]) == (0, 200, 0)
    assert tuple(out[5, 5]) == (0, 0, 0)


def test_refuses_results_that_do_not_fit_the_frame() -> None:
    with pytest.raises(ValueError, match="does not match frame"):
        draw_overlay(np.zeros((4, 4, 3), np.uint8), _result(np.zeros((4, 5), np.uint8)))
    with pytest.raises(ValueError, match="not among the result's labels"):
        draw_overlay(
            np.zeros((4, 4, 3), np.uint8), _result(np.zeros((4, 4), np.uint8), contours={"tumour": [[(0, 0), (1, 1)]]})
        )


def test_error_result_draws_nothing() -> None:
    frame = np.full((3, 3, 3), 7, np.uint8)
    assert (draw_overlay(frame, _result(None, ResultStatus.ERROR)) == 7).all()


def test_display_conversion_of_every_format() -> None:
    assert to_display_rgb(np.full((2, 2), 65535, np.uint16), PixelFormat.GRAY16)[0, 0].tolist() == [255] * 3
    assert to_display_rgb(np.full((2, 2), 0.5, np.float32), PixelFormat.GRAY32F)[0, 0].tolist() == [128] * 3
    bgr = np.zeros((1, 1, 3), np.uint8)
    bgr[..., 0] = 255
    assert to_display_rgb(bgr, PixelFormat.BGR8)[0, 0].tolist() == [0, 0, 255]


def _task_result(task: Task, **kw: object) -> Result:
    from dataclasses import replace

    return replace(_result(None), task=task, **kw)  # type: ignore[arg-type]


def test_boxes_are_drawn_in_their_class_color_with_a_label() -> None:
    from edge_runtime.core.protocol import Box

    frame = np.zeros((120, 160, 3), np.uint8)
    r = _task_result(Task.DETECTION, boxes=(Box(40.0, 50.0, 100.0, 110.0, 1, 0.87, 4),))
    out = draw_overlay(frame, r, line_width=2)
    assert tuple(out[80, 40]) == (0, 200, 0) and tuple(out[109, 70]) == (0, 200, 0)  # left and bottom edges
    assert tuple(out[80, 70]) == (0, 0, 0)  # inside stays the frame
    assert (out[30:50, 40:100] == (0, 200, 0)).all(axis=2).sum() > 100  # the label's box above it
    with pytest.raises(ValueError, match="outside the 160x120 frame"):
        draw_overlay(frame, _task_result(Task.DETECTION, boxes=(Box(0.0, 0.0, 300.0, 10.0, 1, 0.5),)))


def test_classification_banner_and_saliency() -> None:
    from edge_runtime.core.protocol import ClassScore, Heatmap

    frame = np.full((60, 80, 3), 100, np.uint8)
    heat = np.zeros((3, 4), np.uint8)
    heat[:, :2] = 255  # the model looked at the left half
    r = _task_result(Task.CLASSIFICATION, classes=(ClassScore(1, 0.9),), saliency=Heatmap(1, heat))
    out = draw_overlay(frame, r, alpha=0.5)
    assert (out[40:, :20].astype(int) - 100).__abs__().sum() > 0 and (out[40:, 65:] == 100).all()
    assert (out[:20, :60] == (0, 200, 0)).all(axis=2).any()  # the banner in the top class's color
    plain = draw_overlay(frame, r, saliency=False)
    assert (plain[40:] == 100).all()
