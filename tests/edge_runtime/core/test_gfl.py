"""The GFL/DFL detection layout (PP-PicoDet, NanoDet): card, decoding, and a conversion judged by its boxes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.convert import ConvertOptions, Precision, convert_model
from edge_runtime.core.package import PackageError, load_package, parse_card
from edge_runtime.core.tasks import card_head
from tests.models.make_models import onnx_model

STRIDES, REG_MAX, LABELS = (8, 16), 3, ("polyp", "tool")


def _card(**output: object) -> dict[str, object]:
    base = {"name": "scores_8", "layout": "gfl", "strides": list(STRIDES), "reg_max": REG_MAX,
            "score_outputs": ["scores_8", "scores_16"], "box_outputs": ["boxes_8", "boxes_16"],
            "labels": list(LABELS), "colors": [[255, 0, 0], [0, 255, 0]], "score_threshold": 0.3}  # fmt: skip
    return {
        "schema": "edgert.model/1", "name": "gfl-tiny", "version": "0.0.1", "task": "detection",
        "input": {"name": "image", "layout": "NCHW", "shape": [1, 3, 32, 32], "dtype": "float32"},
        "preprocessing": {"resize": "stretch", "color": "rgb", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "output": {**base, **output},
    }  # fmt: skip


def _gfl_model() -> onnx.ModelProto:
    """Per stride, a strided conv to class scores (sigmoid) and one to side distributions, [1, N, C] / [1, N, 16]."""
    rng = np.random.default_rng(7)
    bins = 4 * (REG_MAX + 1)
    nodes, inits, outs = [], [], []
    for s in STRIDES:
        for kind, width in (("scores", len(LABELS)), ("boxes", bins)):
            w = rng.normal(0, 0.4, (width, 3, s, s)).astype(np.float32) / s
            inits += [numpy_helper.from_array(w, f"w_{kind}_{s}"),
                      numpy_helper.from_array(np.array([1, width, -1], np.int64), f"shape_{kind}_{s}")]  # fmt: skip
            nodes += [helper.make_node("Conv", ["image", f"w_{kind}_{s}"], [f"c_{kind}_{s}"], name=f"conv_{kind}_{s}",
                                       kernel_shape=[s, s], strides=[s, s]),
                      helper.make_node("Reshape", [f"c_{kind}_{s}", f"shape_{kind}_{s}"], [f"r_{kind}_{s}"]),
                      helper.make_node("Transpose", [f"r_{kind}_{s}"],
                                       [f"t_{kind}_{s}" if kind == "scores" else f"boxes_{s}"], perm=[0, 2, 1])]  # fmt: skip
            if kind == "scores":
                nodes.append(helper.make_node("Sigmoid", [f"t_scores_{s}"], [f"scores_{s}"]))
            n = (32 // s) ** 2
            outs.append(helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [1, n, width]))
    graph = helper.make_graph(nodes, "gfl", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              outs, inits)  # fmt: skip
    return onnx_model(graph)


def _package(root: Path) -> Path:
    blob = _gfl_model().SerializeToString()
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(blob)
    (root / "model.json").write_text(json.dumps({**_card(), "onnx_sha256": hashlib.sha256(blob).hexdigest()}))
    return root


def test_a_gfl_head_decodes_the_expected_box() -> None:
    head = card_head(parse_card(_card()))
    bins = REG_MAX + 1
    scores = {8: np.zeros((1, 16, 2), np.float32), 16: np.zeros((1, 4, 2), np.float32)}
    boxes = {8: np.zeros((1, 16, 4 * bins), np.float32), 16: np.zeros((1, 4, 4 * bins), np.float32)}
    scores[16][0, 3, 1] = 0.9  # stride 16, cell (x 1, y 1): centre (24, 24); class "tool"
    sides = np.full((4, bins), -50.0, np.float32)
    sides[0, 1] = sides[1, 2] = sides[2, 0] = sides[3, 1] = 50.0  # l 1, t 2, r 0, b 1 cells of 16 px
    boxes[16][0, 3] = sides.ravel()
    outputs = {f"scores_{s}": scores[s] for s in STRIDES} | {f"boxes_{s}": boxes[s] for s in STRIDES}
    found = head.detect(outputs)  # type: ignore[attr-defined]
    assert found.classes.tolist() == [1] and found.scores.tolist() == pytest.approx([0.9])
    assert found.boxes.tolist() == [pytest.approx([8.0, -8.0, 24.0, 40.0], abs=1e-3)]


def test_a_concatenated_gfl_output_decodes_the_same() -> None:
    per_stride = card_head(parse_card(_card()))
    joined = card_head(parse_card(_card(name="all", score_outputs=[], box_outputs=[], cell_offset=0.5)))
    rng = np.random.default_rng(1)
    outputs = {f"scores_{s}": rng.random((1, n, 2)).astype(np.float32) for s, n in zip(STRIDES, (16, 4))}
    outputs |= {f"boxes_{s}": rng.normal(0, 2, (1, n, 16)).astype(np.float32) for s, n in zip(STRIDES, (16, 4))}
    cat = np.concatenate(
        [np.concatenate([outputs[f"scores_{s}"], outputs[f"boxes_{s}"]], axis=2) for s in STRIDES], axis=1
    )
    a, b = per_stride.detect(outputs), joined.detect({"all": cat})  # type: ignore[attr-defined]
    assert np.array_equal(a.classes, b.classes) and np.allclose(a.boxes, b.boxes) and len(a.boxes) > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strides": []}, "needs its feature strides"),
        ({"box_outputs": ["boxes_8"]}, "one score and one box output per stride"),
        ({"reg_max": 0}, "reg_max: must be within 1..64"),
        ({"name": "boxes_8"}, "name the first score output"),
        ({"cell_offset": 0.25}, "cell_offset"),
    ],
)
def test_a_bad_gfl_card_names_its_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(PackageError, match=message):
        parse_card(_card(**change))


def test_a_card_whose_gfl_outputs_do_not_match_the_graph_is_refused(tmp_path: Path) -> None:
    root = _package(tmp_path / "pkg")
    card = json.loads((root / "model.json").read_text())
    card["output"]["reg_max"] = 7
    (root / "model.json").write_text(json.dumps(card))
    with pytest.raises(PackageError, match=r"needs \[1, 16, 2\]|needs \[1, 16, 32\]"):
        load_package(root)


def test_a_gfl_detector_converts_and_is_judged_by_its_boxes(tmp_path: Path) -> None:
    root = _package(tmp_path / "pkg")
    load_package(root)
    options = ConvertOptions(precision=Precision.INT8, data="synthetic-endoscopy:size=32x32", samples=8,
                             search_samples=16, verify_samples=32, min_support=4, latency=False, tolerance=0.3)  # fmt: skip
    result = convert_model(root, options)
    verify = result.report.verify
    assert verify is not None and verify.comparison.metric_name == "worst-class F1@0.5 vs reference boxes"
    verdict = verify.comparison.verdict
    assert verdict is not None and {c.name for c in verdict.classes} == set(LABELS)
    assert all(c.unit == "boxes" for c in verdict.classes) and sum(c.support for c in verdict.classes) > 0
