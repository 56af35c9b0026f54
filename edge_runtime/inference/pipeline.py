"""Frame -> Result for one loaded model: shared preprocessing, a backend runner, the card's task head."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calibration.preprocessing import Color, Preprocessor, scale_labels
from edge_runtime.backends import BackendError, BackendKind, CpuOptions, GpuOptions, Runner, create_runner
from edge_runtime.core.package import ModelPackage, TrackerSpec
from edge_runtime.core.protocol import Frame, MaskResolution, PixelFormat, Result, ResultStatus
from edge_runtime.core.tasks import Decoded, card_head
from edge_runtime.core.tracking import BoxTracker

if TYPE_CHECKING:
    from edge_runtime.backends.triton import TritonOptions

_FRAME_COLOR = {
    PixelFormat.GRAY8: Color.GRAY,
    PixelFormat.GRAY16: Color.GRAY,
    PixelFormat.GRAY32F: Color.GRAY,
    PixelFormat.RGB8: Color.RGB,
    PixelFormat.BGR8: Color.BGR,
}


def frame_color(fmt: PixelFormat) -> Color:
    return _FRAME_COLOR[fmt]


MAX_TRACKED_STREAMS = 64


@dataclass(frozen=True)
class PipelineTimes:
    """Where one `run` spent its time, in nanoseconds."""

    preprocess_ns: int
    model_ns: int  # the backend runner alone
    postprocess_ns: int  # the task head (and the tracker)


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
        cpu: CpuOptions = CpuOptions(),
        tracker: TrackerSpec | None = None,
        tracking: bool | None = None,
        mask: MaskResolution = MaskResolution.MODEL,
        triton: TritonOptions | None = None,
    ) -> None:
        """`engine`: for the tensorrt backend, the plan built on this device for the package. `tracker`: box
        tracking for a detector, over the card's (`output.tracker`); `tracking` False turns tracking off, None
        leaves it as the card and `tracker` say. `mask`: the resolution of segmentation masks in results."""
        self.package = package
        self.card = package.card
        self.model_id = package.model_id
        self.backend = backend
        self.runner: Runner = create_runner(
            backend, package.onnx_path, threads=threads, engine=engine, gpu=gpu, cpu=cpu, triton=triton,
            model_name=self.card.name,
        )  # fmt: skip
        self.preprocess = Preprocessor(self.card.preprocess)
        self.head = card_head(self.card, package.cam)
        detection = self.card.output.detection
        self.tracker_spec = tracker or (detection.tracker if detection is not None else None)
        if tracking is False or detection is None:
            self.tracker_spec = None
        elif tracking and self.tracker_spec is None:
            self.tracker_spec = TrackerSpec()
        self._trackers: dict[int, BoxTracker] = {}  # per stream: one object's track never jumps to another stream
        self._labels = self.card.output.labels
        self._colors = self.card.output.colors
        self.last_times: PipelineTimes | None = None  # of the last successful `run`
        self.mask_resolution = mask

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
        self.last_times = None
        try:
            x, place = self.preprocess(frame.pixels, frame_color(frame.pixel_format))
            prepared = time.time_ns()
            outputs = self.runner.infer({self.card.input_name: x})
            inferred = time.time_ns()
            decoded = self.head.decode(outputs, place, frame.spacing_mm)
            if self.tracker_spec is not None:
                decoded = Decoded(boxes=self._tracker(frame.stream_id).update(decoded.boxes))
        except Exception as exc:  # a bad frame or a backend failure must not stop the stream
            return self._result(frame, recv_ts_ns, start, ResultStatus.ERROR, error=f"{exc.__class__.__name__}: {exc}")
        result = self._result(frame, recv_ts_ns, start, ResultStatus.OK, decoded)
        self.last_times = PipelineTimes(prepared - start, inferred - prepared, result.infer_end_ns - inferred)
        return result

    def _tracker(self, stream_id: int) -> BoxTracker:
        """The stream's tracker, most recently used last; the least recently used goes beyond MAX_TRACKED_STREAMS
        (more streams than the daemon keeps alive), so stream ids cannot grow the table without bound."""
        assert self.tracker_spec is not None
        tracker = self._trackers.pop(stream_id, None) or BoxTracker(self.tracker_spec)
        self._trackers[stream_id] = tracker
        while len(self._trackers) > MAX_TRACKED_STREAMS:
            del self._trackers[next(iter(self._trackers))]
        return tracker

    def _result(
        self,
        frame: Frame,
        recv_ts_ns: int,
        start_ns: int,
        status: ResultStatus,
        decoded: Decoded | None = None,
        error: str | None = None,
    ) -> Result:
        d = decoded or Decoded()
        mask = d.mask
        if mask is not None and (
            self.mask_resolution is MaskResolution.FRAME or mask.size >= frame.height * frame.width
        ):
            mask = scale_labels(mask, frame.height, frame.width)
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
            mask=mask,
            areas_px=d.areas_px,
            areas_mm2=d.areas_mm2,
            contours=d.contours,
            boxes=d.boxes,
            classes=d.classes,
            saliency=d.saliency,
            error=error,
            frame_shape=(frame.height, frame.width),
        )
