"""Train the endoscopy demo models on synthetic colonoscopy and write their model packages.

    pip install -e '.[train]'          # torch, for this script only
    python3 benchmarks/training/train_endoscopy.py detector --out edge_runtime/models/polyp_det_demo
    python3 benchmarks/training/train_endoscopy.py quality --out edge_runtime/models/endo_quality_demo

- `detector`: a polyp detector, anchor-free YOLO layout ([1, 5, N]: cx, cy, w, h in input pixels and a sigmoid
  score per cell of a stride-16 grid), decoded by the runtime's `DetectionHead` with NMS.
- `quality`: a frame-quality classifier (clear, blurred, bubbles, too dark) with global average pooling and a
  linear head; its package exposes the last feature map, so the daemon sends a class activation map.

Inputs go through the runtime's own `Preprocessor`, and the card's metrics are measured on the exported ONNX file
with ONNX Runtime and the runtime's own task head, on held-out frames of other generator seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a source checkout: python3 benchmarks/training/train_endoscopy.py

from calibration.endoscopy import EndoscopyQuality, SyntheticEndoscopy  # noqa: E402
from calibration.preprocessing import Color, Preprocessor, PreprocessSpec, ResizeMode  # noqa: E402

log = logging.getLogger("edgert.train_endoscopy")

FRAME_H, FRAME_W = 240, 320
DET_SPEC = PreprocessSpec(height=192, width=256, color=Color.RGB, resize=ResizeMode.LETTERBOX,
                          mean=(0.5, 0.3, 0.3), std=(0.25, 0.2, 0.2))  # fmt: skip
QUALITY_SPEC = PreprocessSpec(height=120, width=160, color=Color.RGB, resize=ResizeMode.LETTERBOX,
                              mean=(0.5, 0.3, 0.3), std=(0.25, 0.2, 0.2))  # fmt: skip
STRIDE = 16
ANCHOR = 48.0  # box sizes are ANCHOR * exp(t)
QUALITY_COLORS = [[60, 200, 90], [250, 180, 40], [80, 170, 255], [200, 80, 200]]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class PolypNet(nn.Module):
    """A single-scale anchor-free detector: stride-2 stem, three stride-2 stages of wide 3x3 convs (where INT8
    kernels pay), a 3x3 + 1x1 head, and the box decoding inside the graph so that the ONNX output is the
    anchor-free YOLO layout [1, 4 + 1, N]."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 192)) -> None:
        super().__init__()
        w = widths
        self.features = nn.Sequential(
            _conv(3, w[0], 2), _conv(w[0], w[1], 2), _conv(w[1], w[1]), _conv(w[1], w[2], 2), _conv(w[2], w[2]),
            _conv(w[2], w[3], 2), _conv(w[3], w[3]),
        )  # fmt: skip
        self.head = nn.Sequential(_conv(w[3], 128), nn.Conv2d(128, 5, 1))
        gh, gw = DET_SPEC.height // STRIDE, DET_SPEC.width // STRIDE
        gy, gx = torch.meshgrid(
            torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij"
        )
        self.register_buffer("grid", torch.stack([gx, gy]).reshape(1, 2, gh, gw))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out

    def decode(self, p: torch.Tensor) -> torch.Tensor:
        grid: torch.Tensor = self.get_buffer("grid")
        xy = (torch.sigmoid(p[:, 0:2]) * 2.0 - 0.5 + grid) * STRIDE
        wh = torch.exp(p[:, 2:4].clamp(-4.0, 4.0)) * ANCHOR
        score = torch.sigmoid(p[:, 4:5])
        out = torch.cat([xy, wh, score], 1)
        return out.reshape(out.shape[0], 5, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.raw(x))


class QualityNet(nn.Module):
    """Frame quality: five stride-2 stages, global average pooling, one linear layer (so a CAM is exact)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv(3, 16, 2), _conv(16, 32, 2), _conv(32, 32), _conv(32, 64, 2), _conv(64, 64), _conv(64, 96, 2),
            _conv(96, 96),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(96, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.flatten(self.pool(self.features(x)), 1))
        return out


def detection_set(n: int, seed: int, clip: int = 6) -> tuple[np.ndarray, list[np.ndarray]]:
    """Model inputs and boxes in input pixels, from cines of `clip` frames (motion blur included)."""
    gen = SyntheticEndoscopy(FRAME_H, FRAME_W, seed=seed)
    pre = Preprocessor(DET_SPEC)
    xs = np.empty((n, 3, DET_SPEC.height, DET_SPEC.width), np.float32)
    boxes: list[np.ndarray] = []
    i = 0
    while i < n:
        for f in gen.cine(min(clip, n - i)):
            x, place = pre(f.image, Color.RGB)
            xs[i] = x[0]
            scale = np.array([place.width / FRAME_W, place.height / FRAME_H] * 2, np.float32)
            boxes.append(f.boxes * scale + np.array([place.left, place.top] * 2, np.float32))
            i += 1
    return xs, boxes


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1) + (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area - inter + 1e-6
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(1) + 1e-6
    return inter / union - (hull - union) / hull


def detection_loss(model: PolypNet, x: torch.Tensor, boxes: list[np.ndarray]) -> torch.Tensor:
    """Focal loss on the score of every cell; GIoU + L1 on the cells near each polyp's centre."""
    pred = model(x)  # [B, 5, N]
    b, _, n = pred.shape
    gw = DET_SPEC.width // STRIDE
    centres = (np.stack(np.divmod(np.arange(n), gw))[::-1].T + 0.5) * STRIDE  # (x, y) of each cell
    target = torch.zeros(b, n)
    pos_pred, pos_box = [], []
    for i, bx in enumerate(boxes):
        for x1, y1, x2, y2 in bx:
            cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            near = (np.abs(centres[:, 0] - cx) < max(0.5 * hw, STRIDE * 0.75)) & (
                np.abs(centres[:, 1] - cy) < max(0.5 * hh, STRIDE * 0.75)
            )
            idx = np.flatnonzero(near)
            if not len(idx):
                idx = np.array([int(np.argmin(np.hypot(centres[:, 0] - cx, centres[:, 1] - cy)))])
            target[i, idx] = 1.0
            p = pred[i, :4, idx].T
            pos_pred.append(torch.cat([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], 1))
            pos_box.append(torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32).expand(len(idx), 4))
    score = pred[:, 4].clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(score, target, reduction="none")
    pt = torch.where(target > 0, score, 1 - score)
    alpha = torch.where(target > 0, 0.75, 0.25)
    focal = (alpha * (1 - pt) ** 2 * bce).sum() / max(1.0, float(target.sum()))
    if not pos_pred:
        return focal
    pp, pb = torch.cat(pos_pred), torch.cat(pos_box)
    return focal + (1 - _giou(pp, pb)).mean() * 2.0 + F.l1_loss(pp / 64.0, pb / 64.0)


def quality_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = SyntheticEndoscopy(FRAME_H, FRAME_W, seed=seed)
    pre = Preprocessor(QUALITY_SPEC)
    xs = np.empty((n, 3, QUALITY_SPEC.height, QUALITY_SPEC.width), np.float32)
    ys = np.arange(n) % len(EndoscopyQuality)
    for i in range(n):
        xs[i] = pre(gen.quality_frame(EndoscopyQuality(int(ys[i]))).image, Color.RGB)[0][0]
    return xs, ys.astype(np.int64)


@dataclass(frozen=True)
class TrainOptions:
    kind: str  # "detector" or "quality"
    out: str
    version: str = "1.0.0"
    train_images: int = 2400
    heldout_images: int = 300
    heldout_seed: int = 10_000
    epochs: int = 8
    batch: int = 16
    lr: float = 3e-3
    seed: int = 0
    threads: int = 2


def train(args: TrainOptions) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    detector = args.kind == "detector"
    if detector:
        xs, boxes = detection_set(args.train_images, args.seed)
        model: nn.Module = PolypNet()
    else:
        xs, labels = quality_set(args.train_images, args.seed)
        model = QualityNet(len(EndoscopyQuality))
    log.info("generated %d training frames in %.1f s", len(xs), time.perf_counter() - t0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    per_epoch = len(xs) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * per_epoch)
    x_all = torch.from_numpy(xs)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xs))
        total = 0.0
        for k in range(per_epoch):
            idx = order[k * args.batch : (k + 1) * args.batch]
            x = x_all[idx]
            if detector:
                flip = bool(k % 2)
                bx = [boxes[int(i)] for i in idx]
                if flip:  # horizontal flip, boxes mirrored
                    x = x.flip(-1)
                    bx = [
                        np.stack([DET_SPEC.width - b[:, 2], b[:, 1], DET_SPEC.width - b[:, 0], b[:, 3]], 1) for b in bx
                    ]
                assert isinstance(model, PolypNet)
                loss = detection_loss(model, x, bx)
            else:
                loss = F.cross_entropy(model(x.flip(-1) if k % 2 else x), torch.from_numpy(labels[idx.numpy()]))
            opt.zero_grad()
            cast(Any, loss).backward()  # Tensor.backward carries no annotations
            opt.step()
            sched.step()
            total += loss.item()
        log.info("epoch %d/%d loss %.4f (%.0f s)", epoch + 1, args.epochs, total / per_epoch, time.perf_counter() - t0)
    export(model.eval(), args)


def _speed(onnx_path: Path, spec: PreprocessSpec, threads: int = 2, runs: int = 200) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(0, 1, spec.input_shape).astype(np.float32)
    for _ in range(20):
        sess.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(time.perf_counter() - t)
    p50 = float(np.median(times)) * 1000
    return {"p50_ms": round(p50, 3), "inferences_per_s": round(1000 / p50, 1), "threads": threads}


def evaluate_detector(onnx_path: Path, card: dict[str, object], n: int, seed: int) -> dict[str, object]:
    """mAP@0.5 and F1 against the generator's exact boxes, decoded as the daemon decodes (frame pixels)."""
    import onnxruntime as ort

    from edge_runtime.core.package import parse_card
    from edge_runtime.core.tasks import DetectionHead, Detections, average_precision, card_head

    head = card_head(parse_card(card))
    assert isinstance(head, DetectionHead)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gen = SyntheticEndoscopy(FRAME_H, FRAME_W, seed=seed)
    pre = Preprocessor(DET_SPEC)
    truth, found = [], []
    for i in range(n):
        f = gen.sample() if i % 2 else next(gen.cine(1))
        x, place = pre(f.image, Color.RGB)
        decoded = head.decode({"boxes": sess.run(None, {"image": x})[0]}, place, None)
        found.append(Detections(np.array([[b.x1, b.y1, b.x2, b.y2] for b in decoded.boxes], np.float32).reshape(-1, 4),
                                np.array([b.score for b in decoded.boxes]), np.zeros(len(decoded.boxes), np.int64)))  # fmt: skip
        truth.append(Detections(f.boxes, np.ones(len(f.boxes)), np.zeros(len(f.boxes), np.int64)))
    ap, f1, n_truth = average_precision(truth, found, 1)
    return {
        "heldout": f"{n} synthetic frames {FRAME_W}x{FRAME_H}, generator seed {seed}, never seen in training",
        "map50": round(ap, 4),
        "f1_at_iou50": round(f1, 4),
        "polyps": n_truth,
        "score_threshold": 0.4,
    }


def evaluate_quality(onnx_path: Path, n: int, seed: int) -> dict[str, object]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    xs, ys = quality_set(n, seed)
    pred = np.array([int(sess.run(None, {"image": x[None]})[0].argmax()) for x in xs])
    per_class = {q.label: round(float((pred[ys == q] == q).mean()), 4) for q in EndoscopyQuality}
    return {
        "heldout": f"{n} synthetic frames {FRAME_W}x{FRAME_H}, generator seed {seed}, never seen in training",
        "accuracy": round(float((pred == ys).mean()), 4),
        "recall_per_class": per_class,
        "chance": round(1.0 / len(EndoscopyQuality), 4),
    }


def export(model: nn.Module, args: TrainOptions) -> None:
    from edge_runtime.core.package import expose_cam_features

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    detector = args.kind == "detector"
    spec = DET_SPEC if detector else QUALITY_SPEC
    output = "boxes" if detector else "logits"
    torch.onnx.export(
        model, (torch.zeros(spec.input_shape),), str(onnx_path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=[output],
    )  # fmt: skip
    features = None
    if not detector:
        graph = onnx.load(str(onnx_path))
        features = expose_cam_features(graph, output)
        onnx.save(graph, str(onnx_path))
    base = {
        "schema": "edgert.model/1",
        "version": args.version,
        "data_source": "synthetic-endoscopy" + (":quality=mixed" if not detector else ""),
        "input": {"name": "image", "layout": spec.layout.value, "shape": list(spec.input_shape), "dtype": "float32"},
        "preprocessing": {
            "resize": spec.resize.value,
            "color": spec.color.value,
            "mean": list(spec.mean),
            "std": list(spec.std),
        },  # fmt: skip
    }
    if detector:
        card: dict[str, object] = {
            **base,
            "name": "polyp-det-demo",
            "task": "detection",
            "description": "Demo polyp detector for colonoscopy video, trained on synthetic frames only. For "
            "demonstrating the runtime; not a medical device and not for clinical use.",
            "output": {"name": output, "layout": "yolo-anchor-free", "labels": ["polyp"], "colors": [[40, 255, 120]],
                       "score_threshold": 0.4, "iou_threshold": 0.45, "max_detections": 20,
                       "tracker": {"min_hits": 3, "window": 5, "max_missed": 2, "iou": 0.3}},
        }  # fmt: skip
    else:
        card = {
            **base,
            "name": "endo-quality-demo",
            "task": "classification",
            "description": "Demo endoscopy frame-quality classifier (clear, blurred, bubbles, too dark) trained on "
            "synthetic frames only, with a class activation map. Not a medical device; not for clinical use.",
            "output": {"name": output, "activation": "none", "labels": [q.label for q in EndoscopyQuality],
                       "colors": QUALITY_COLORS, "top_k": 2,
                       "saliency": {"method": "cam", "features": features}},
        }  # fmt: skip
    card["onnx_sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    metrics = (
        evaluate_detector(onnx_path, card, args.heldout_images, args.heldout_seed)
        if detector
        else evaluate_quality(onnx_path, args.heldout_images, args.heldout_seed)
    )
    metrics["speed_onnxruntime_cpu"] = _speed(onnx_path, spec)
    log.info("held-out metrics %s", metrics)
    card["metrics"] = metrics
    card["training"] = {
        "script": f"python3 benchmarks/training/train_endoscopy.py {args.kind}",
        "images": args.train_images,
        "epochs": args.epochs,
        "seed": args.seed,
        "torch": torch.__version__,
    }
    (out / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    log.info("wrote %s", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["detector", "quality"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--train-images", type=int, default=2400)
    parser.add_argument("--heldout-images", type=int, default=300)
    parser.add_argument("--heldout-seed", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(TrainOptions(**vars(parser.parse_args())))


if __name__ == "__main__":
    main()
