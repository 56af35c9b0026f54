"""Train the demo segmentation model on synthetic ultrasound and write its model package.

    pip install -e '.[train]'          # torch, for this script only
    python3 benchmarks/training/train_demo.py --out edge_runtime/models/us_seg_demo

Inputs go through the runtime's own `Preprocessor`, and the reported Dice is measured on the exported ONNX file
with ONNX Runtime at frame resolution, exactly as the daemon will run it.
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

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a source checkout: python3 benchmarks/training/train_demo.py

from calibration.preprocessing import Color, Preprocessor, PreprocessSpec, resize_labels  # noqa: E402
from calibration.synthetic import LABELS, SyntheticUltrasound  # noqa: E402

log = logging.getLogger("edgert.train_demo")

INPUT_H, INPUT_W = 192, 256
FRAME_H, FRAME_W = 240, 320
COLORS = [[0, 0, 0], [230, 60, 60], [60, 200, 90], [250, 200, 40]]
SPEC = PreprocessSpec(height=INPUT_H, width=INPUT_W, color=Color.GRAY, mean=(0.25,), std=(0.25,))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class EdgeUNet(nn.Module):
    """U-Net shaped for edge inference, about 1.1 M parameters.

    A stride-2 stem halves the resolution first, features stay wide where the image is small, and the decoder
    upsamples by nearest Resize (not ConvTranspose), with one bilinear x2 on the logits. Wide convolutions at low
    resolution are what INT8 kernels accelerate; thin full-resolution convolutions gain nothing from INT8 and
    ConvTranspose has no INT8 kernel in ONNX Runtime's CPU provider.
    """

    def __init__(self, classes: int, widths: tuple[int, ...] = (24, 48, 96, 192)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.down = nn.ModuleList()
        cin = widths[0]
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.fuse = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.fuse.append(_block(cin + w, w))
            cin = w
        self.head = nn.Conv2d(cin, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for fuse, skip in zip(self.fuse, reversed(skips[:-1])):
            x = fuse(torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], dim=1))
        return F.interpolate(self.head(x), scale_factor=2, mode="bilinear", align_corners=False)


def make_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic frames -> (model inputs, masks at model resolution, masks at frame resolution)."""
    gen = SyntheticUltrasound(FRAME_H, FRAME_W, seed=seed)
    pre = Preprocessor(SPEC)
    rows = ((np.arange(INPUT_H) + 0.5) * FRAME_H / INPUT_H).astype(np.intp)
    cols = ((np.arange(INPUT_W) + 0.5) * FRAME_W / INPUT_W).astype(np.intp)
    xs = np.empty((n, 1, INPUT_H, INPUT_W), np.float32)
    ys = np.empty((n, INPUT_H, INPUT_W), np.int64)
    full = np.empty((n, FRAME_H, FRAME_W), np.uint8)
    for i in range(n):
        img, mask = gen.sample()
        xs[i] = pre(img, Color.GRAY)[0][0]
        ys[i] = mask[rows[:, None], cols[None, :]]
        full[i] = mask
    return xs, ys, full


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: int) -> list[float]:
    """Dice over the whole set per class (pixels pooled), the usual figure for segmentation benchmarks."""
    out = []
    for c in range(classes):
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        out.append(float(2.0 * (p & t).sum() / denom) if denom else 1.0)
    return out


def evaluate_onnx(onnx_path: Path, n: int, seed: int) -> dict[str, object]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gen = SyntheticUltrasound(FRAME_H, FRAME_W, seed=seed)
    pre = Preprocessor(SPEC)
    preds, truths = [], []
    for _ in range(n):
        img, mask = gen.sample()
        x, place = pre(img, Color.GRAY)
        logits = session.run(None, {"image": x})[0][0]
        preds.append(resize_labels(logits.argmax(0).astype(np.uint8), place))
        truths.append(mask)
    pred, truth = np.stack(preds), np.stack(truths)
    dice = dice_per_class(pred, truth, len(LABELS))
    return {
        "heldout": f"{n} synthetic frames {FRAME_W}x{FRAME_H}, generator seed {seed}, never seen in training",
        "dice_per_class": dict(zip(LABELS, [round(d, 4) for d in dice])),
        "dice_mean_foreground": round(float(np.mean(dice[1:])), 4),
        "trivial_baseline_dice_mean_foreground": 0.0,  # predicting all background scores 0 on every foreground class
        "pixel_accuracy": round(float((pred == truth).mean()), 4),
    }


@dataclass(frozen=True)
class TrainOptions:
    out: str = "edge_runtime/models/us_seg_demo"
    version: str = "1.0.0"
    train_images: int = 2400
    heldout_images: int = 200
    heldout_seed: int = 10_000
    epochs: int = 16
    batch: int = 24
    crop: tuple[int, int] | None = (96, 128)  # random training crops (H, W); None trains on whole images
    lr: float = 4e-3
    seed: int = 0
    threads: int = 2


def train(args: TrainOptions) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    xs, ys, _ = make_set(args.train_images, seed=args.seed)
    log.info("generated %d training frames in %.1f s", len(xs), time.perf_counter() - t0)
    freq = np.bincount(ys.ravel(), minlength=len(LABELS)) / ys.size
    weight = torch.tensor((1.0 / np.sqrt(freq + 1e-3)) / (1.0 / np.sqrt(freq + 1e-3)).mean(), dtype=torch.float32)
    model = EdgeUNet(len(LABELS))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(xs) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    x_all, y_all = torch.from_numpy(xs), torch.from_numpy(ys)
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xs))
        total = 0.0
        for b in range(len(xs) // args.batch):
            idx = order[b * args.batch : (b + 1) * args.batch]
            x, y = x_all[idx], y_all[idx]
            if args.crop:  # random crop: the net is fully convolutional, and small crops train ~4x faster
                ch, cw = args.crop
                top = int(torch.randint(0, INPUT_H - ch + 1, ()))
                left = int(torch.randint(0, INPUT_W - cw + 1, ()))
                x, y = x[..., top : top + ch, left : left + cw], y[..., top : top + ch, left : left + cw]
            if step % 2:  # horizontal flip: the scene statistics are left-right symmetric
                x, y = x.flip(-1), y.flip(-1)
            logits = model(x)
            probs = logits.softmax(1)
            onehot = F.one_hot(y, len(LABELS)).permute(0, 3, 1, 2).float()
            inter = (probs * onehot).sum((0, 2, 3))
            soft_dice = (2 * inter + 1.0) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1.0)
            loss = F.cross_entropy(logits, y, weight=weight) + (1.0 - soft_dice[1:].mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += loss.item()
        log.info("epoch %d/%d loss %.4f (%.0f s)", epoch + 1, args.epochs, total / (b + 1), time.perf_counter() - t0)
    export(model.eval(), args)


def export(model: nn.Module, args: TrainOptions) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    dummy = torch.zeros(SPEC.input_shape)
    torch.onnx.export(
        model, (dummy,), str(onnx_path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"],
    )  # fmt: skip
    metrics = evaluate_onnx(onnx_path, args.heldout_images, seed=args.heldout_seed)
    log.info("held-out Dice %s", metrics)
    card = {
        "schema": "edgert.model/1",
        "name": "us-seg-demo",
        "version": args.version,
        "task": "segmentation",
        "description": "Demo B-mode ultrasound segmentation (vessel, cyst, hyperechoic lesion) trained on synthetic "
        "images only. For demonstrating the runtime; not a medical device and not for clinical use.",
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "input": {"name": "image", "layout": SPEC.layout.value, "shape": list(SPEC.input_shape), "dtype": "float32"},
        "preprocessing": {
            "resize": SPEC.resize.value,
            "color": SPEC.color.value,
            "mean": list(SPEC.mean),
            "std": list(SPEC.std),
        },
        "output": {
            "name": "logits",
            "activation": "softmax",
            "decode": "argmax",
            "labels": list(LABELS),
            "colors": COLORS,
        },
        "metrics": metrics,
        "training": {
            "script": "python3 benchmarks/training/train_demo.py",
            "images": args.train_images,
            "epochs": args.epochs,
            "crop": list(args.crop) if args.crop else None,
            "seed": args.seed,
            "torch": torch.__version__,
        },
    }
    (out / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    log.info("wrote %s", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="edge_runtime/models/us_seg_demo")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--train-images", type=int, default=2400)
    parser.add_argument("--heldout-images", type=int, default=200)
    parser.add_argument("--heldout-seed", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--crop", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    a = parser.parse_args()
    train(TrainOptions(**{**vars(a), "crop": tuple(a.crop) if a.crop else None}))


if __name__ == "__main__":
    main()
