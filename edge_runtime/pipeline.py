"""Frame -> Result for one loaded model: shared preprocessing, a backend runner, task decoding."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.preprocessing import Color, Placement, Preprocessor, resize_labels
from edge_runtime.backends import BackendError, BackendKind, GpuOptions, Runner, create_runner
from edge_runtime.contours import outer_contours
from edge_runtime.package import ModelPackage, OutputSpec, PackageError
from edge_runtime.protocol import Frame, PixelFormat, Result, ResultStatus, Task
from edge_runtime.tasks import SegmentationHead

_FRAME_COLOR = {
    PixelFormat.GRAY8: Color.GRAY,
    PixelFormat.GRAY16: Color.GRAY,
    PixelFormat.GRAY32F: Color.GRAY,
    PixelFormat.RGB8: Color.RGB,
    PixelFormat.BGR8: Color.BGR,
}


def frame_color(fmt: PixelFormat) -> Color:
    return _FRAME_COLOR[fmt]


@dataclass(frozen=True)
class Segmentation:
    mask: np.ndarray  # uint8 class ids at frame resolution
    areas_px: dict[str, int]
    areas_mm2: dict[str, float] | None
    contours: dict[str, list[list[tuple[int, int]]]]


class SegmentationDecoder:
    """Raw model output -> class mask at frame resolution, per-class areas and contour polygons. The class ids come
    from the task's head (`edge_runtime.tasks`), the same one the accuracy gate and `compare` judge the model with."""

    def __init__(self, output: OutputSpec, min_contour_px: int = 12, max_contours: int = 16) -> None:
        self.output = output
        self.head = SegmentationHead(output)
        self.min_contour_px = min_contour_px
        self.max_contours = max_contours

    def labels_at_model_resolution(self, raw: np.ndarray) -> np.ndarray:
        if raw.shape[:1] != (1,):
            raise ValueError(f"output '{self.output.name}' has shape {list(raw.shape)}, expected a batch of 1")
        labels: np.ndarray = self.head.class_map(raw)[0]
        return labels

    def __call__(
        self, raw: np.ndarray, place: Placement, input_hw: tuple[int, int], spacing_mm: tuple[float, float] | None
    ) -> Segmentation:
        labels = self.labels_at_model_resolution(raw)
        if labels.shape != input_hw:  # output stride > 1: bring labels to input resolution first
            rows = (np.arange(input_hw[0]) * labels.shape[0] // input_hw[0])[:, None]
            cols = (np.arange(input_hw[1]) * labels.shape[1] // input_hw[1])[None, :]
            labels = labels[rows, cols]
        mask = resize_labels(labels, place)
        counts = np.bincount(mask.ravel(), minlength=len(self.output.labels))
        names = self.output.labels
        areas_px = {names[i]: int(counts[i]) for i in range(1, len(names))}
        areas_mm2 = None
        if spacing_mm is not None:
            px_mm2 = spacing_mm[0] * spacing_mm[1]
            areas_mm2 = {k: round(v * px_mm2, 3) for k, v in areas_px.items()}
        sx = place.frame_width / place.width
        sy = place.frame_height / place.height
        contours: dict[str, list[list[tuple[int, int]]]] = {}
        for cls in range(1, len(names)):
            if not counts[cls]:
                continue
            polys = outer_contours(labels == cls, min_area=self.min_contour_px, max_count=self.max_contours)
            contours[names[cls]] = [
                [
                    (
                        min(place.frame_width - 1, max(0, round((x - place.left + 0.5) * sx - 0.5))),
                        min(place.frame_height - 1, max(0, round((y - place.top + 0.5) * sy - 0.5))),
                    )
                    for x, y in poly
                ]
                for poly in polys
            ]
        return Segmentation(mask, areas_px, areas_mm2, contours)


class InferencePipeline:
    """One model, ready to turn frames into results. Not thread-safe: one inference thread owns it."""

    def __init__(
        self,
        package: ModelPackage,
        backend: BackendKind = BackendKind.ONNXRUNTIME,
        threads: int = 0,
        *,
        engine: Path | None = None,
        gpu: GpuOptions = GpuOptions(),
    ) -> None:
        """`engine`: for the tensorrt backend, the plan built on this device for the package."""
        if package.card.task is not Task.SEGMENTATION:  # the decoders for the others are not wired to results yet
            raise PackageError(
                f"{package.root}: the daemon serves segmentation models; this is a {package.card.task.label} model "
                "(it can be converted, compared and benchmarked, not served yet)"
            )
        self.package = package
        self.card = package.card
        self.model_id = package.model_id
        self.backend = backend
        self.runner: Runner = create_runner(backend, package.onnx_path, threads=threads, engine=engine, gpu=gpu)
        self.preprocess = Preprocessor(self.card.preprocess)
        self.decoder = SegmentationDecoder(self.card.output)
        self._labels = self.card.output.labels
        self._colors = self.card.output.colors

    def __enter__(self) -> InferencePipeline:
        self.runner.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.deactivate()

    def warm_up(self, iterations: int = 3) -> float:
        """Run a few blank inputs so that first-frame latency is not the session's setup; returns mean ms."""
        shape = self.card.preprocess.input_shape
        feed = {self.card.input_name: np.zeros(shape, np.float32)}
        start = time.perf_counter()
        for _ in range(iterations):
            self.runner.infer(feed)
        return (time.perf_counter() - start) * 1000.0 / iterations

    def self_test(self) -> None:
        """Run a blank frame through the whole pipeline; raise if the model cannot produce a result."""
        spec = self.card.preprocess
        shape = (spec.height, spec.width, 3) if spec.color.channels == 3 else (spec.height, spec.width)
        fmt = PixelFormat.GRAY8 if spec.color.channels == 1 else PixelFormat.RGB8
        result = self.run(Frame(0, 0, 0, 0, fmt, np.zeros(shape, np.uint8)), 0)
        if result.status is not ResultStatus.OK:
            raise BackendError(f"{self.model_id}: self-test failed: {result.error}")

    def run(self, frame: Frame, recv_ts_ns: int) -> Result:
        """Infer one frame. Failures become an ERROR result for this frame, never an exception."""
        start = time.time_ns()
        try:
            x, place = self.preprocess(frame.pixels, frame_color(frame.pixel_format))
            raw = self.runner.infer({self.card.input_name: x})[self.card.output.name]
            spec = self.card.preprocess
            seg = self.decoder(raw, place, (spec.height, spec.width), frame.spacing_mm)
        except Exception as exc:  # a bad frame or a backend failure must not stop the stream
            return self._result(frame, recv_ts_ns, start, ResultStatus.ERROR, error=f"{exc.__class__.__name__}: {exc}")
        return self._result(frame, recv_ts_ns, start, ResultStatus.OK, seg=seg)

    def _result(
        self,
        frame: Frame,
        recv_ts_ns: int,
        start_ns: int,
        status: ResultStatus,
        seg: Segmentation | None = None,
        error: str | None = None,
    ) -> Result:
        return Result(
            stream_id=frame.stream_id,
            seq=frame.seq,
            capture_ts_ns=frame.capture_ts_ns,
            recv_ts_ns=recv_ts_ns,
            infer_start_ns=start_ns,
            infer_end_ns=time.time_ns(),
            publish_ts_ns=0,  # stamped by the publisher just before sending
            task=self.card.task,
            status=status,
            model=self.model_id,
            labels=self._labels,
            colors=self._colors,
            mask=seg.mask if seg else None,
            areas_px=seg.areas_px if seg else {},
            areas_mm2=seg.areas_mm2 if seg else None,
            contours=seg.contours if seg else {},
            error=error,
        )
