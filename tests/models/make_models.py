"""Build the tiny ONNX models and packages the tests use (no training, fixed weights).

    python tests/models/make_models.py OUT_DIR

- `seg_tiny`: [1,1,16,16] -> [1,3,16,16]: class 1 where the pixel is dark, class 2 where bright, else 0.
- `seg_bad_runtime`: a valid package whose output channel count is symbolic and is really 2 while the card
  promises 3 labels: it passes load-time checks and fails on every frame at decode time.
- `seg_wrong_input`: the card says [1,1,16,16] but the graph takes [1,1,32,32].

Converter test models (random fixed weights, seeded):
- `unet_bn`: U-Net with BatchNorm (after Conv and ConvTranspose), MaxPool, Concat and a Resize, opset 17.
- `residual.onnx`: residual block (Conv-BN-Relu-Conv-BN + skip Add), no card: numeric checks on random data.
- `old_dynamic.onnx`: opset 11 classifier with dynamic N/H/W, Dropout, Identity and a Shape->Reshape chain.
- `fp16_overflow`: activations reach ~1e5, beyond FP16's 65504, then scale back: naive FP16 gives inf.
- `fp16_cancellation`: (x + 1000) - 1000 stays in FP16 range but loses x's fraction: only the accuracy gate sees it.
- `int8_sensitive`: one conv writes a x1000 channel beside the x1 channel the classifier reads; per-tensor INT8 on
  that shared tensor rounds the small channel away, so the classifier must stay out of INT8.
- `int8_sensitive_late`: six harmless 1x1 convs first, then the same sensitive pair at the end of the graph: the
  search must rank the classifier first and keep nothing else out of INT8.
- `int8_sensitive_first`: RGB input whose third channel the card scales x1000 beside two x1 channels; the first conv
  reads channel 0 only, but per-tensor INT8 of its input rounds channel 0 away. Six harmless convs follow: the
  search must keep exactly the first layer.
- `int8_slow_layer`: a 1-channel 1x1 conv between float ops (INT8 pays a Q, a layout change and a DQ around a
  trivial kernel: slower than FP32 on ORT's CPU kernels), then 3x3 convs of 32 channels, where INT8 pays.
- `exported_elementwise(opset)`: how Paddle2ONNX writes a PP-LCNetV3 block: hard-swish spelled as Add 3, Clip 0..6,
  Mul, Div 6 (and as Clip, Mul 1/6, Mul), scalar and per-channel "learnable affine" Mul/Add around convs, a padded
  depthwise conv, a grouped unpadded conv, and traps that must not fold: an affine tensor with a second reader, a
  Clip 0..5, an affine op before a padded conv.
- `silu_concat`: YOLOX-style ops between convs: SiLU (Sigmoid, Mul), a Concat of two branches, a Reshape pair, and
  a Mul by a constant (which ORT has no integer kernel for).
- `cls_tiny`: classification card: [1,1,16,16] -> conv, global average pool -> [1,3] scores (dark, mid, bright).
- `cls_cam`: [1,1,16,16] -> 1x1 conv to two feature channels (x and 1 - x) -> global average pool -> Flatten -> Gemm
  -> logits (bright, dark); the card names the feature map for a class activation map, which is therefore the
  image itself for "bright".
- `det_dense`: [1,1,32,32] -> anchor-free YOLO layout [1, 5, 16]: a 4x4 grid of 8x8 cells, each cell's box fixed
  to the cell, its score the cell's mean brightness (0..1): a bright cell is a detected "spot".
- `det_nms`: the same boxes and scores through ONNX NonMaxSuppression (score threshold 0.5), then Gathers to boxes
  [K, 4], scores [K] and classes [K] int64: a model that ends in NMS.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def onnx_model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    """A model as exporters write it: IR 8 for opsets 13-17 (6 below). onnx 1.23's default, IR 14, is more than
    ONNX Runtime 1.23 (the last release for Python 3.10, JetPack 6's) reads."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset >= 13 else 6
    return model


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
    model = onnx_model(graph)
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


def _bn(rng: np.random.Generator, name: str, x: str, y: str, c: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    params = {
        "scale": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, 0.2, c),
        "mean": rng.normal(0, 0.3, c), "var": rng.uniform(0.5, 2.0, c),
    }  # fmt: skip
    inits = [numpy_helper.from_array(v.astype(np.float32), f"{name}_{k}") for k, v in params.items()]
    return helper.make_node("BatchNormalization", [x, *(t.name for t in inits)], [y], name=name, epsilon=1e-5), inits


def _w(rng: np.random.Generator, name: str, *shape: int, scale: float = 1.0) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) or 1
    return numpy_helper.from_array((rng.normal(0, scale / np.sqrt(fan_in), shape)).astype(np.float32), name)


def _finish(nodes: list, inputs: list, outputs: list, inits: list, opset: int = 17) -> onnx.ModelProto:
    model = onnx_model(helper.make_graph(nodes, "test", inputs, outputs, inits), opset)
    onnx.checker.check_model(model)
    return model


def unet_bn() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    F = TensorProto.FLOAT
    inits = [_w(rng, "w1", 8, 1, 3, 3), _w(rng, "w2", 16, 8, 3, 3), _w(rng, "wt", 16, 8, 2, 2),
             _w(rng, "w3", 8, 16, 3, 3), _w(rng, "w4", 3, 8, 1, 1),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    for name, x, y, c in (("bn1", "c1", "b1", 8),):
        node, params = _bn(rng, name, x, y, c)
        nodes.append(node)
        inits += params
    nodes += [
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    for name, x, y, c in (("bn2", "c2", "b2", 16),):
        node, params = _bn(rng, name, x, y, c)
        nodes.append(node)
        inits += params
    nodes += [
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        helper.make_node("ConvTranspose", ["r2", "wt"], ["u"], name="up", strides=[2, 2]),
    ]
    node, params = _bn(rng, "bn3", "u", "bu", 8)
    nodes.append(node)
    inits += params
    nodes += [
        helper.make_node("Concat", ["bu", "r1"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4"], ["c4"], name="head", strides=[2, 2]),
        helper.make_node("Resize", ["c4", "", "scales"], ["logits"], name="resize", mode="linear"),
    ]
    model = _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 32, 32])],
                    [helper.make_tensor_value_info("logits", F, [1, 3, 32, 32])], inits)  # fmt: skip
    return _balance_head(model, "head", (1, 1, 32, 32))


def _balance_head(model: onnx.ModelProto, head: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    """Give the head conv a bias that centres each class's logit, so every class wins somewhere: random weights
    alone make one class win almost everywhere, and a segmentation test on one class checks little."""
    import onnxruntime as ort

    probe = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    node = next(n for n in model.graph.node if n.name == head)
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    logits = probe.run(None, {model.graph.input[0].name: x})[0]
    bias = -logits.mean(axis=(0, 2, 3)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(bias, f"{head}_bias"))
    node.input.append(f"{head}_bias")
    return model


def residual() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    F = TensorProto.FLOAT
    inits = [_w(rng, "ws", 8, 4, 3, 3), _w(rng, "wa", 8, 8, 3, 3), _w(rng, "wb", 8, 8, 3, 3), _w(rng, "wh", 3, 8, 1, 1)]
    nodes = [helper.make_node("Conv", ["x", "ws"], ["s"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["s"], ["a"], name="stem_relu"),
             helper.make_node("Conv", ["a", "wa"], ["ca"], name="conv_a", pads=[1, 1, 1, 1])]  # fmt: skip
    for name, x, y in (("bn_a", "ca", "ba"),):
        node, params = _bn(rng, name, x, y, 8)
        nodes.append(node)
        inits += params
    nodes += [helper.make_node("Relu", ["ba"], ["ra"], name="relu_a"),
              helper.make_node("Conv", ["ra", "wb"], ["cb"], name="conv_b", pads=[1, 1, 1, 1])]  # fmt: skip
    node, params = _bn(rng, "bn_b", "cb", "bb", 8)
    nodes.append(node)
    inits += params
    nodes += [helper.make_node("Add", ["bb", "a"], ["sum"], name="residual_add"),
              helper.make_node("Relu", ["sum"], ["out"], name="relu_out"),
              helper.make_node("Conv", ["out", "wh"], ["y"], name="head")]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("x", F, [1, 4, 16, 16])],
                   [helper.make_tensor_value_info("y", F, [1, 3, 16, 16])], inits)  # fmt: skip


def old_dynamic() -> onnx.ModelProto:
    """Opset 11, dynamic batch and spatial dims, weights also listed as graph inputs (as old exporters did)."""
    rng = np.random.default_rng(3)
    F = TensorProto.FLOAT
    inits = [_w(rng, "w", 8, 3, 3, 3), _w(rng, "fc_w", 5, 8), numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "fc_b"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
             numpy_helper.from_array(np.array(0, np.int64), "zero")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    node, params = _bn(rng, "bn", "c", "b", 8)
    nodes.append(node)
    inits += params
    nodes += [
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Dropout", ["r"], ["d"], name="dropout", ratio=0.3),
        helper.make_node("Identity", ["d"], ["i"], name="identity"),
        helper.make_node("GlobalAveragePool", ["i"], ["g"], name="gap"),
        helper.make_node("Shape", ["g"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n"], ["n1"], name="unsqueeze", axes=[0]),
        helper.make_node("Concat", ["n1", "minus_one"], ["flat_shape"], name="concat_shape", axis=0),
        helper.make_node("Reshape", ["g", "flat_shape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    weight_inputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    return _finish(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, "H", "W"]), *weight_inputs],
                   [helper.make_tensor_value_info("probs", F, ["N", 5])], inits, opset=11)  # fmt: skip


def fp16_overflow() -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    F = TensorProto.FLOAT
    inits = [numpy_helper.from_array((rng.normal(0, 1, (4, 1, 3, 3)) * 3e4).astype(np.float32), "w_big"),
             numpy_helper.from_array((rng.normal(0, 1, (3, 4, 1, 1)) * 1e-4).astype(np.float32), "w_small")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["image", "w_big"], ["big"], name="amplify", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["big"], ["big_r"], name="relu_big"),
             helper.make_node("Conv", ["big_r", "w_small"], ["logits"], name="attenuate")]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 16, 16])],
                   [helper.make_tensor_value_info("logits", F, [1, 3, 16, 16])], inits)  # fmt: skip


def fp16_cancellation() -> onnx.ModelProto:
    F = TensorProto.FLOAT
    w = np.zeros((3, 1, 3, 3), np.float32)
    w[:, 0, 1, 1] = [0.0, -8.0, 8.0]  # a padded 3x3 conv (centre tap only), so preparation cannot fold the Sub
    inits = [numpy_helper.from_array(np.array(1000.0, np.float32), "offset"),
             numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array([0.0, -4.0, -4.0], np.float32), "b")]  # fmt: skip
    nodes = [helper.make_node("Add", ["image", "offset"], ["shifted"], name="add_offset"),
             helper.make_node("Sub", ["shifted", "offset"], ["restored"], name="sub_offset"),
             helper.make_node("Conv", ["restored", "w", "b"], ["logits"], name="classify", pads=[1, 1, 1, 1])]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 16, 16])],
                   [helper.make_tensor_value_info("logits", F, [1, 3, 16, 16])], inits)  # fmt: skip


def int8_sensitive() -> onnx.ModelProto:
    F = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.array([1000.0, 1.0], np.float32).reshape(2, 1, 1, 1), "w_split"),
             numpy_helper.from_array(np.array([[0, 0], [0, -8], [0, 8]], np.float32).reshape(3, 2, 1, 1), "w_cls"),
             numpy_helper.from_array(np.array([0.0, -4.0, -4.0], np.float32), "b_cls")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["image", "w_split"], ["split"], name="split_scales"),
             helper.make_node("Conv", ["split", "w_cls", "b_cls"], ["logits"], name="classify")]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 16, 16])],
                   [helper.make_tensor_value_info("logits", F, [1, 3, 16, 16])], inits)  # fmt: skip


def _gentle_mixing(
    rng: np.random.Generator, x: str, widths: list[int]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """1x1 convs `mix0`, `mix1`... through the channel counts in `widths`, each close to the identity: INT8
    rounding barely moves them. Returns (nodes, initializers, output name)."""
    nodes, inits = [], []
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
        w = (np.eye(cout, cin) + 0.05 * rng.standard_normal((cout, cin))).astype(np.float32).reshape(cout, cin, 1, 1)
        inits.append(numpy_helper.from_array(w, f"w_mix{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w_mix{i}"], [f"mix{i}"], name=f"mix{i}"))
        x = f"mix{i}"
    return nodes, inits, x


def int8_sensitive_late() -> onnx.ModelProto:
    F = TensorProto.FLOAT
    nodes, inits, x = _gentle_mixing(np.random.default_rng(3), "image", [1, 4, 4, 4, 4, 4, 1])
    late = int8_sensitive()
    inits += list(late.graph.initializer)
    nodes += [helper.make_node("Conv", [x, "w_split"], ["split"], name="split_scales"),
              helper.make_node("Conv", ["split", "w_cls", "b_cls"], ["logits"], name="classify")]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 16, 16])],
                   [helper.make_tensor_value_info("logits", F, [1, 3, 16, 16])], inits)  # fmt: skip


def int8_sensitive_first() -> onnx.ModelProto:
    F = TensorProto.FLOAT
    first = np.array([1.0, 0.0, 0.0], np.float32).reshape(1, 3, 1, 1)  # channel 0 only; channel 2 is the x1000 one
    mix, inits, x = _gentle_mixing(np.random.default_rng(5), "mix_in", [1] * 7)
    nodes = [helper.make_node("Conv", ["image", "w_first"], ["mix_in"], name="first"), *mix]
    inits = [numpy_helper.from_array(first, "w_first"), *inits]
    inits += [numpy_helper.from_array(np.array([0.0, -8.0, 8.0], np.float32).reshape(3, 1, 1, 1), "w_cls"),
              numpy_helper.from_array(np.array([0.0, -4.0, -4.0], np.float32), "b_cls")]  # fmt: skip
    nodes.append(helper.make_node("Conv", [x, "w_cls", "b_cls"], ["logits"], name="classify"))
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 3, 16, 16])],
                   [helper.make_tensor_value_info("logits", F, [1, 3, 16, 16])], inits)  # fmt: skip


def int8_slow_layer(size: int = 96) -> onnx.ModelProto:
    F = TensorProto.FLOAT
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(np.array([[[[1.5]]]], np.float32), "w_tiny"), _w(rng, "w_a", 32, 1, 3, 3),
             _w(rng, "w_b", 32, 32, 3, 3), _w(rng, "w_c", 32, 32, 3, 3), _w(rng, "w_out", 3, 32, 1, 1)]  # fmt: skip
    nodes = [helper.make_node("Conv", ["image", "w_tiny"], ["t"], name="tiny"),
             helper.make_node("Sigmoid", ["t"], ["ts"], name="squash"),
             helper.make_node("Conv", ["ts", "w_a"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w_b"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("Conv", ["br", "w_c"], ["c"], name="conv_c", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["cr"]),
             helper.make_node("Conv", ["cr", "w_out"], ["logits"], name="head")]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, size, size])],
                   [helper.make_tensor_value_info("logits", F, [1, 3, size, size])], inits)  # fmt: skip


def _hardswish_spelled(x: str, tag: str, division_first: bool = False) -> tuple[list[onnx.NodeProto], str]:
    if division_first:  # Add 3 -> Clip 0..6 -> Mul 1/6 -> Mul x
        return [helper.make_node("Add", [x, "three"], [f"{tag}_p3"]),
                helper.make_node("Clip", [f"{tag}_p3", "zero", "six"], [f"{tag}_c"]),
                helper.make_node("Mul", [f"{tag}_c", "sixth"], [f"{tag}_s"]),
                helper.make_node("Mul", [x, f"{tag}_s"], [f"{tag}_hs"])], f"{tag}_hs"  # fmt: skip
    return [helper.make_node("Add", [x, "three"], [f"{tag}_p3"]),
            helper.make_node("Clip", [f"{tag}_p3", "zero", "six"], [f"{tag}_c"]),
            helper.make_node("Mul", [f"{tag}_c", x], [f"{tag}_m"]),
            helper.make_node("Div", [f"{tag}_m", "six"], [f"{tag}_hs"])], f"{tag}_hs"  # fmt: skip


def exported_elementwise(opset: int = 17) -> onnx.ModelProto:
    F = TensorProto.FLOAT
    rng = np.random.default_rng(11)
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    inits = [c("three", 3.0), c("zero", 0.0), c("six", 6.0), c("five", 5.0), c("sixth", 1 / 6),
             c("a1", 0.9), c("b1", 0.5), c("a2", 0.6), c("b2", -0.4),
             c("a3", rng.uniform(0.5, 1.5, (1, 8, 1, 1))), c("b3", rng.uniform(-1, 1, (8, 1, 1))),
             c("a4", rng.uniform(0.5, 1.5, (8, 1, 1))), c("b4", rng.uniform(-1, 1, (1, 8, 1, 1))),
             c("a5", 1.3), c("b5", 0.2), c("k", 2.0),
             _w(rng, "w_pw", 8, 4, 1, 1), _w(rng, "w_dw", 8, 1, 3, 3), _w(rng, "w_grp", 8, 4, 1, 1),
             _w(rng, "w_pad", 8, 8, 3, 3), _w(rng, "w_out", 3, 8, 1, 1)]  # fmt: skip
    nodes = [helper.make_node("Conv", ["image", "w_pw"], ["pw"], name="pw"),
             helper.make_node("Mul", ["a1", "pw"], ["pw_a"]),  # after a conv, constant first: folds into pw
             helper.make_node("Add", ["pw_a", "b1"], ["pw_ab"])]  # fmt: skip
    hs1, x = _hardswish_spelled("pw_ab", "hs1")
    nodes += hs1
    nodes += [helper.make_node("Mul", [x, "a2"], ["lab1"]),  # before a padded conv: stays
              helper.make_node("Add", ["lab1", "b2"], ["lab1b"]),
              helper.make_node("Conv", ["lab1b", "w_dw"], ["dw"], name="dw", group=8, pads=[1, 1, 1, 1]),
              helper.make_node("Mul", ["dw", "a3"], ["dw_a"]),  # per-channel [1,C,1,1] and [C,1,1]
              helper.make_node("Add", ["dw_a", "b3"], ["dw_ab"])]  # fmt: skip
    hs2, x = _hardswish_spelled("dw_ab", "hs2", division_first=True)
    nodes += hs2
    nodes += [helper.make_node("Mul", [x, "a4"], ["lab2"]),  # before an unpadded grouped conv: folds into it
              helper.make_node("Sub", ["lab2", "b4"], ["lab2b"]),
              helper.make_node("Conv", ["lab2b", "w_grp"], ["grp"], name="grp", group=2),
              helper.make_node("Div", ["grp", "k"], ["grp_d"]),  # after a conv: folds
              helper.make_node("Mul", ["grp_d", "a5"], ["shared"]),  # read twice: the Add below stays
              helper.make_node("Add", ["shared", "b5"], ["shared_b"]),
              helper.make_node("Add", ["shared", "shared_b"], ["both"]),
              helper.make_node("Add", ["both", "three"], ["p3"]),  # Clip 0..5 is not hard-swish
              helper.make_node("Clip", ["p3", "zero", "five"], ["c5"]),
              helper.make_node("Mul", ["c5", "both"], ["m5"]),
              helper.make_node("Div", ["m5", "six"], ["not_hs"]),
              helper.make_node("Conv", ["not_hs", "w_pad"], ["pad"], name="padded", pads=[1, 1, 1, 1]),
              helper.make_node("Conv", ["pad", "w_out"], ["logits"], name="head")]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 4, 16, 16])],
                   [helper.make_tensor_value_info("logits", F, [1, 3, 16, 16])], inits, opset)  # fmt: skip


def silu_concat() -> onnx.ModelProto:
    F = TensorProto.FLOAT
    rng = np.random.default_rng(5)
    inits = [_w(rng, "w_in", 16, 1, 3, 3), _w(rng, "w_a", 16, 16, 3, 3), _w(rng, "w_b", 16, 16, 1, 1),
             _w(rng, "w_out", 2, 32, 1, 1), numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array([1, 32, -1], np.int64), "flat"),
             numpy_helper.from_array(np.array([1, 32, 16, 16], np.int64), "square")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["image", "w_in"], ["x"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["x"], ["xs"], name="silu_sigmoid"),
             helper.make_node("Mul", ["x", "xs"], ["silu"], name="silu_mul"),
             helper.make_node("Conv", ["silu", "w_a"], ["a"], name="branch_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["silu", "w_b"], ["b"], name="branch_b"),
             helper.make_node("Concat", ["a", "b"], ["cat"], name="concat", axis=1),
             helper.make_node("Reshape", ["cat", "flat"], ["flat_cat"], name="to_flat"),
             helper.make_node("Reshape", ["flat_cat", "square"], ["cat2"], name="to_square"),
             helper.make_node("Conv", ["cat2", "w_out"], ["o"], name="head"),
             helper.make_node("Mul", ["o", "half"], ["logits"], name="scale_by_constant")]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 16, 16])],
                   [helper.make_tensor_value_info("logits", F, [1, 2, 16, 16])], inits)  # fmt: skip


def se_block() -> onnx.ModelProto:
    """Squeeze-and-excitation: the excitation's Mul ties the gate conv's output channels to the features'."""
    F = TensorProto.FLOAT
    rng = np.random.default_rng(6)
    inits = [_w(rng, "w_feat", 16, 1, 3, 3), _w(rng, "w_sq", 4, 16, 1, 1), _w(rng, "w_ex", 16, 4, 1, 1),
             _w(rng, "w_head", 2, 16, 3, 3)]  # fmt: skip
    nodes = [helper.make_node("Conv", ["image", "w_feat"], ["f"], name="features", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["f"], ["h"], name="relu"),
             helper.make_node("GlobalAveragePool", ["h"], ["pooled"], name="squeeze_pool"),
             helper.make_node("Conv", ["pooled", "w_sq"], ["sq"], name="squeeze"),
             helper.make_node("Relu", ["sq"], ["sq_relu"], name="squeeze_relu"),
             helper.make_node("Conv", ["sq_relu", "w_ex"], ["ex"], name="excite"),
             helper.make_node("Sigmoid", ["ex"], ["gate"], name="excite_sigmoid"),
             helper.make_node("Mul", ["h", "gate"], ["scaled"], name="excite_mul"),
             helper.make_node("Conv", ["scaled", "w_head"], ["logits"], name="head", pads=[1, 1, 1, 1])]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 16, 16])],
                   [helper.make_tensor_value_info("logits", F, [1, 2, 16, 16])], inits)  # fmt: skip


def cls_tiny() -> onnx.ModelProto:
    F = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.array([-8.0, 0.0, 8.0], np.float32).reshape(3, 1, 1, 1), "w_feat"),
             numpy_helper.from_array(np.array([-4.0, 0.0, -4.0], np.float32), "b_feat")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["image", "w_feat", "b_feat"], ["feat"], name="features"),
             helper.make_node("GlobalAveragePool", ["feat"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["scores"], axis=1)]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 16, 16])],
                   [helper.make_tensor_value_info("scores", F, [1, 3])], inits)  # fmt: skip


def cls_cam() -> onnx.ModelProto:
    F = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.array([1.0, -1.0], np.float32).reshape(2, 1, 1, 1), "w_feat"),
             numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "b_feat"),
             numpy_helper.from_array(np.array([[8.0, 0.0], [0.0, 8.0]], np.float32), "w_head"),
             numpy_helper.from_array(np.array([-4.0, -4.0], np.float32), "b_head")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["image", "w_feat", "b_feat"], ["conv"], name="features"),
             helper.make_node("Relu", ["conv"], ["feat"]),
             helper.make_node("GlobalAveragePool", ["feat"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w_head", "b_head"], ["logits"], transB=1)]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 16, 16])],
                   [helper.make_tensor_value_info("logits", F, [1, 2]),
                    helper.make_tensor_value_info("feat", F, [1, 2, 16, 16])], inits)  # fmt: skip


def _cell_boxes() -> np.ndarray:
    """xyxy boxes of the 4x4 grid of 8x8 cells of a 32x32 input, row by row: [16, 4]."""
    r, c = np.divmod(np.arange(16), 4)
    return np.stack([c * 8, r * 8, c * 8 + 8, r * 8 + 8], axis=1).astype(np.float32)


def _cell_scores(nodes: list, inits: list) -> None:
    """image [1,1,32,32] -> cell_scores [1,1,16]: the mean of each 8x8 cell."""
    inits.append(numpy_helper.from_array(np.array([1, 1, 16], np.int64), "score_shape"))
    nodes += [helper.make_node("AveragePool", ["image"], ["cells"], kernel_shape=[8, 8], strides=[8, 8]),
              helper.make_node("Reshape", ["cells", "score_shape"], ["cell_scores"])]  # fmt: skip


def det_dense() -> onnx.ModelProto:
    F = TensorProto.FLOAT
    b = _cell_boxes()
    cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]])
    nodes: list = []
    inits = [numpy_helper.from_array(cxcywh[None].astype(np.float32), "cell_boxes")]  # [1, 4, 16]
    _cell_scores(nodes, inits)
    nodes.append(helper.make_node("Concat", ["cell_boxes", "cell_scores"], ["preds"], axis=1))
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 32, 32])],
                   [helper.make_tensor_value_info("preds", F, [1, 5, 16])], inits)  # fmt: skip


def det_nms() -> onnx.ModelProto:
    F, I64 = TensorProto.FLOAT, TensorProto.INT64
    nodes: list = []
    inits = [numpy_helper.from_array(_cell_boxes()[None], "cell_boxes"),  # [1, 16, 4]
             numpy_helper.from_array(np.array([16], np.int64), "max_out"),
             numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
             numpy_helper.from_array(np.array([0.5], np.float32), "score_min"),
             numpy_helper.from_array(np.array([1], np.int64), "col_class"),
             numpy_helper.from_array(np.array([2], np.int64), "col_box"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat")]  # fmt: skip
    _cell_scores(nodes, inits)
    nodes += [helper.make_node("NonMaxSuppression", ["cell_boxes", "cell_scores", "max_out", "iou", "score_min"],
                               ["selected"]),
              helper.make_node("Gather", ["selected", "col_box"], ["box_idx2"], axis=1),
              helper.make_node("Reshape", ["box_idx2", "flat"], ["box_idx"]),
              helper.make_node("Gather", ["selected", "col_class"], ["cls2"], axis=1),
              helper.make_node("Reshape", ["cls2", "flat"], ["classes"]),
              helper.make_node("Squeeze", ["cell_boxes"], ["all_boxes"], axes=None),
              helper.make_node("Gather", ["all_boxes", "box_idx"], ["boxes"], axis=0),
              helper.make_node("Reshape", ["cell_scores", "flat"], ["all_scores"]),
              helper.make_node("Gather", ["all_scores", "box_idx"], ["scores"], axis=0)]  # fmt: skip
    return _finish(nodes, [helper.make_tensor_value_info("image", F, [1, 1, 32, 32])],
                   [helper.make_tensor_value_info("boxes", F, ["K", 4]),
                    helper.make_tensor_value_info("scores", F, ["K"]),
                    helper.make_tensor_value_info("classes", I64, ["K"])], inits)  # fmt: skip


def _detection_card(name: str, output: dict) -> dict:
    return {
        **card(name, size=32),
        "task": "detection",
        "preprocessing": {"resize": "stretch", "color": "gray", "mean": [0.0], "std": [1.0]},
        "output": {"labels": ["spot"], "colors": [[255, 200, 0]], "score_threshold": 0.5, **output},
    }


def build(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(residual(), str(out / "residual.onnx"))
    onnx.save(old_dynamic(), str(out / "old_dynamic.onnx"))
    return {
        "unet_bn": write_package(out / "unet_bn", unet_bn(), card("unet-bn", size=32)),
        "residual": out / "residual.onnx",
        "old_dynamic": out / "old_dynamic.onnx",
        "fp16_overflow": write_package(out / "fp16_overflow", fp16_overflow(), card("fp16-overflow")),
        "fp16_cancellation": write_package(out / "fp16_cancellation", fp16_cancellation(), card("fp16-cancellation")),
        "int8_sensitive": write_package(out / "int8_sensitive", int8_sensitive(), card("int8-sensitive")),
        "int8_sensitive_late": write_package(
            out / "int8_sensitive_late", int8_sensitive_late(), card("int8-sensitive-late")
        ),
        "int8_sensitive_first": write_package(
            out / "int8_sensitive_first",
            int8_sensitive_first(),
            {
                **card("int8-sensitive-first"),
                "input": {"name": "image", "layout": "NCHW", "shape": [1, 3, 16, 16], "dtype": "float32"},
                "preprocessing": {"resize": "stretch", "color": "rgb", "mean": [0.5] * 3, "std": [0.5, 0.5, 0.0005]},
            },
        ),  # fmt: skip
        "int8_slow_layer": write_package(out / "int8_slow_layer", int8_slow_layer(), card("int8-slow-layer", size=96)),
        "cls_tiny": write_package(
            out / "cls_tiny",
            cls_tiny(),
            {
                **card("cls-tiny", labels=("dark", "mid", "bright")),
                "task": "classification",
                "output": {
                    "name": "scores",
                    "activation": "none",
                    "decode": "argmax",
                    "labels": ["dark", "mid", "bright"],
                    "colors": [[0, 0, 0]] * 3,
                },
            },
        ),  # fmt: skip
        "cls_cam": write_package(
            out / "cls_cam",
            cls_cam(),
            {
                **card("cls-cam"),
                "task": "classification",
                "preprocessing": {"resize": "stretch", "color": "gray", "mean": [0.0], "std": [1.0]},
                "output": {
                    "name": "logits",
                    "activation": "none",
                    "labels": ["bright", "dark"],
                    "top_k": 2,
                    "colors": [[255, 255, 0], [0, 0, 255]],
                    "saliency": {"method": "cam", "features": "feat"},
                },
            },
        ),  # fmt: skip
        "det_dense": write_package(
            out / "det_dense",
            det_dense(),
            _detection_card("det-dense", {"name": "preds", "layout": "yolo-anchor-free"}),
        ),
        "det_nms": write_package(
            out / "det_nms",
            det_nms(),
            _detection_card("det-nms", {"name": "boxes", "layout": "nms", "scores": "scores", "classes": "classes"}),
        ),
        "seg_tiny": write_package(out / "seg_tiny", _conv_model(3, 16), card("seg-tiny")),
        "seg_bad_runtime": write_package(
            out / "seg_bad_runtime", _conv_model(2, 16, out_channels_param="classes"), card("seg-bad-runtime")
        ),
        "seg_wrong_input": write_package(out / "seg_wrong_input", _conv_model(3, 32), card("seg-wrong-input")),
    }


if __name__ == "__main__":
    for name, path in build(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny_models")).items():
        print(f"{name}: {path}")
