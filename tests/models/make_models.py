"""Build the tiny ONNX models and packages the tests use (no training, fixed weights).

    python tests/models/make_models.py OUT_DIR

- `seg_tiny`: [1,1,16,16] -> [1,3,16,16]: class 1 where the pixel is dark, class 2 where bright, else 0.
- `seg_bad_runtime`: a valid package whose output channel count is symbolic and is really 2 while the card
  promises 3 labels: it passes load-time checks and fails on every frame at decode time.
- `seg_wrong_input`: the card says [1,1,16,16] but the graph takes [1,1,32,32].
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _conv_model(classes: int, size: int, out_channels_param: str | None = None) -> onnx.ModelProto:
    # 1x1 conv on x in [-1, 1] (the card normalizes with mean 0.5, std 0.5): background 0, dark -8x-4, bright 8x-4.
    w = np.array([0.0, -8.0, 8.0][:classes], np.float32).reshape(classes, 1, 1, 1)
    b = np.array([0.0, -4.0, -4.0][:classes], np.float32)
    out_dims: list[int | str] = [1, out_channels_param or classes, size, size]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"])],
        "tiny_seg",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_dims)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def card(name: str, size: int = 16, labels: tuple[str, ...] = ("background", "dark", "bright")) -> dict:
    return {
        "schema": "edgert.model/1",
        "name": name,
        "version": "0.0.1",
        "task": "segmentation",
        "input": {"name": "image", "layout": "NCHW", "shape": [1, 1, size, size], "dtype": "float32"},
        "preprocessing": {"resize": "stretch", "color": "gray", "mean": [0.5], "std": [0.5]},
        "output": {
            "name": "logits",
            "activation": "softmax",
            "decode": "argmax",
            "labels": list(labels),
            "colors": [[0, 0, 0], [255, 0, 0], [0, 255, 0]][: len(labels)],
        },
    }


def write_package(root: Path, model: onnx.ModelProto, card_data: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    blob = model.SerializeToString()
    (root / "model.onnx").write_bytes(blob)
    card_data = {**card_data, "onnx_sha256": hashlib.sha256(blob).hexdigest()}
    (root / "model.json").write_text(json.dumps(card_data, indent=2))
    return root


def build(out: Path) -> dict[str, Path]:
    return {
        "seg_tiny": write_package(out / "seg_tiny", _conv_model(3, 16), card("seg-tiny")),
        "seg_bad_runtime": write_package(
            out / "seg_bad_runtime", _conv_model(2, 16, out_channels_param="classes"), card("seg-bad-runtime")
        ),
        "seg_wrong_input": write_package(out / "seg_wrong_input", _conv_model(3, 32), card("seg-wrong-input")),
    }


if __name__ == "__main__":
    for name, path in build(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny_models")).items():
        print(f"{name}: {path}")
