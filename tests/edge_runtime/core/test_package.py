from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from edge_runtime.core.package import PackageError, load_package, parse_card
from edge_runtime.core.protocol import Task


def test_demo_package_is_valid_and_documents_its_accuracy(demo_model: Path) -> None:
    pkg = load_package(demo_model)
    assert pkg.card.task is Task.SEGMENTATION
    assert pkg.card.preprocess.input_shape == (1, 1, 192, 256)
    assert pkg.card.onnx_sha256 == pkg.sha256
    metrics = pkg.card.metrics
    assert metrics["dice_mean_foreground"] > 0.85 > metrics["trivial_baseline_dice_mean_foreground"]


def test_tiny_package_loads(tiny_models: dict[str, Path]) -> None:
    pkg = load_package(tiny_models["seg_tiny"])
    assert pkg.model_id.name == "seg-tiny" and len(pkg.sha256) == 64


def test_archive_package(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in tiny_models["seg_tiny"].iterdir():
            zf.write(f, f"seg_tiny/{f.name}")
    assert load_package(archive).card.name == "seg-tiny"


def test_graph_that_does_not_match_its_card_is_refused(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(PackageError, match=r"input 'image' has shape \[1, 1, 32, 32\], card says \[1, 1, 16, 16\]"):
        load_package(tiny_models["seg_wrong_input"])


def _copy(src: Path, dst: Path, **card_changes: object) -> Path:
    shutil.copytree(src, dst)
    card = json.loads((dst / "model.json").read_text())
    for dotted, value in card_changes.items():
        section = card
        *parents, key = dotted.split("__")
        for name in parents:
            section = section[name]
        section[key] = value
    (dst / "model.json").write_text(json.dumps(card))
    return dst


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"input__name": "pixels"}, "card input 'pixels' is not a graph input"),
        ({"output__name": "probs"}, "card output 'probs' is not a graph output"),
        ({"output__labels": ["bg", "a", "b", "c"], "output__colors": [[0, 0, 0]] * 4}, r"must be \[1, 4, H, W\]"),
        ({"onnx_sha256": "0" * 64}, "does not match the card"),
        ({"task": "teleportation"}, "unknown task"),
        ({"task": "classification"}, r"a classification output must be \[1, 3\]"),
        ({"schema": "other/9"}, "schema"),
        ({"input__shape": [1, 1, 16]}, "input.shape"),
        ({"preprocessing__color": "rgb"}, "1 channel"),
        ({"preprocessing__std": [0.0]}, "std must not contain 0"),
        ({"output__colors": [[0, 0, 0], [1, 2, 3]]}, "one color per label"),
        ({"output__labels": ["a", "a", "b"]}, "duplicate"),
        ({"output__colors": [[0, 0, 0], [1, 2, 300], [0, 0, 0]]}, "0..255"),
        ({"name": 5}, "name: expected str"),
        (
            {"preprocessing__dicom": "raw12"},
            r"preprocessing.dicom: 'raw12' is not one of \['display8', 'display16', 'stored'\]",
        ),
    ],
)
def test_bad_cards_name_the_field(tiny_models: dict[str, Path], tmp_path: Path, changes: dict, message: str) -> None:
    pkg = _copy(tiny_models["seg_tiny"], tmp_path / "pkg", **changes)
    with pytest.raises(PackageError, match=message) as info:
        load_package(pkg)
    assert str(pkg) in str(info.value)


def test_missing_files_and_broken_onnx(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="no such model package"):
        load_package(tmp_path / "nope")
    pkg = _copy(tiny_models["seg_tiny"], tmp_path / "pkg")
    (pkg / "model.onnx").write_bytes(b"not a protobuf at all")
    card = json.loads((pkg / "model.json").read_text())
    del card["onnx_sha256"]
    (pkg / "model.json").write_text(json.dumps(card))
    with pytest.raises(PackageError, match="not a valid ONNX model"):
        load_package(pkg)
    (pkg / "model.json").write_text("{ not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package(pkg)
    (pkg / "model.json").unlink()
    with pytest.raises(PackageError, match="missing model.json"):
        load_package(pkg)


def test_parse_card_rejects_non_objects() -> None:
    with pytest.raises(PackageError, match="JSON object"):
        parse_card([1, 2])  # type: ignore[arg-type]


def test_a_classification_card_is_served_with_its_top_k(tiny_models: dict[str, Path]) -> None:
    pkg = load_package(tiny_models["cls_tiny"])
    assert pkg.card.task is Task.CLASSIFICATION and pkg.cam is None
    spec = pkg.card.output.classification
    assert (
        spec is not None and spec.top_k == 3 and spec.saliency is None and "no feature map" in spec.no_saliency_reason
    )


@pytest.mark.parametrize(
    "model, changes, message",
    [
        ("det_dense", {"output__layout": "ssd"}, "output.layout: 'ssd' is not one of"),
        ("det_dense", {"output__labels": ["a", "b"], "output__colors": [[0, 0, 0]] * 2}, r"needs \[1, 6, N\]"),
        ("det_dense", {"output__scores": "preds"}, "belong to layout 'nms'"),
        ("det_dense", {"output__score_threshold": 1.5}, r"score_threshold: must be within \[0, 1\]"),
        ("det_dense", {"output__tracker": {"min_hits": 4, "window": 3}}, "min_hits 4 is more than the window"),
        ("det_dense", {"output__activation": "softmax"}, "detection scores are 'sigmoid'"),
        ("det_nms", {"output__classes": "labels"}, "card output 'labels' is not a graph output"),
        ("cls_cam", {"output__saliency": {"method": "cam", "features": "logits"}}, "feeds 0 nodes; a CAM needs one"),
        ("cls_cam", {"output__saliency": {"method": "gradcam", "features": "feat"}}, "only 'cam'"),
    ],
)
def test_task_fields_of_a_card_are_checked(
    tiny_models: dict[str, Path], tmp_path: Path, model: str, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(PackageError, match=message):
        load_package(_copy(tiny_models[model], tmp_path / "pkg", **changes))


def test_detection_card_defaults(tiny_models: dict[str, Path]) -> None:
    spec = load_package(tiny_models["det_nms"]).card.output.detection
    assert spec is not None and spec.box_format.value == "xyxy" and spec.tracker is None
    assert (spec.score_threshold, spec.iou_threshold, spec.max_detections) == (0.5, 0.45, 100)


def test_expose_cam_features_adds_the_pooled_feature_map_as_a_checked_output() -> None:
    import onnx

    from tests.models.make_models import cls_cam

    model = cls_cam()
    del model.graph.output[1:]  # as a trainer exports it: logits only
    from edge_runtime.core.package import cam_weights, expose_cam_features

    assert expose_cam_features(model, "logits") == "feat"
    onnx.checker.check_model(model)  # the new output carries its inferred shape
    out = model.graph.output[1]
    assert out.name == "feat" and [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 2, 16, 16]
    cam = cam_weights(model, "feat", "logits")
    assert cam.weights.tolist() == [[8.0, 0.0], [0.0, 8.0]] and cam.bias.tolist() == [-4.0, -4.0]
