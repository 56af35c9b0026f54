from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from edge_runtime.package import PackageError, load_package, parse_card
from edge_runtime.protocol import Task


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


def test_a_classification_card_is_checked_against_its_output_and_the_daemon_will_not_serve_it(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from edge_runtime.pipeline import InferencePipeline

    pkg = load_package(tiny_models["cls_tiny"])
    assert pkg.card.task is Task.CLASSIFICATION
    with pytest.raises(PackageError, match="the daemon serves segmentation models; this is a classification model"):
        InferencePipeline(pkg)
