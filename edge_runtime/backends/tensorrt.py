"""A TensorRT engine as a runner: buffers allocated once, one CUDA stream, one synchronization per frame.

`activate` deserializes the engine (after checking its manifest against the running TensorRT and GPU, when the
engine has one beside it), sets the input shapes, and allocates one page-locked host buffer and one device
buffer per I/O tensor. `infer` copies the feed into the pinned inputs, then on one stream: host-to-device
copies, `execute_async_v3` with named tensor addresses (TensorRT 8.5+; the bindings API was removed in 10),
device-to-host copies, with CUDA events between the three; it synchronizes once and returns copies of the
outputs (the pinned buffers are reused by the next frame).

pycuda is the CUDA binding, as the product's design names: it is what JetPack users already install for
TensorRT's own samples, and it gives page-locked arrays and events directly as numpy objects. NVIDIA's
cuda-python would serve too, at the cost of raw pointers and explicit error codes on every call.
Both TensorRT and pycuda are imported only when a runner is activated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.backends.base import BackendError, Runner, StageTimes
from edge_runtime.backends.engine_cache import INSTALL_HINT, MANIFEST_FILE, Manifest, Platform, check_engine
from edge_runtime.backends.trt_api import (
    CudaContext,
    CudaEvent,
    CudaStream,
    DeviceAllocation,
    bindings_version,
    dims,
    numpy_dtype,
)

if TYPE_CHECKING:
    import tensorrt as trt

Buffer = tuple[str, np.ndarray, DeviceAllocation]  # name, pinned host array, device allocation


def _cuda_driver() -> Any:
    """pycuda.driver (untyped: pycuda ships no type information), once TensorRT is known to be here; or a
    BackendError saying how to install what is missing."""
    if bindings_version() is None:
        raise BackendError(INSTALL_HINT)
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise BackendError(
            "pycuda is not installed (the TensorRT runner's CUDA binding): `pip install pycuda` "
            "(on Jetson with the CUDA toolkit on the PATH)"
        ) from None
    return cuda


class TensorRTRunner(Runner):
    def __init__(self, engine_path: str | Path, device: int = 0, check_manifest: bool = True) -> None:
        super().__init__(f"tensorrt[{Path(engine_path).name}]")
        self.engine_path = Path(engine_path)
        self.device = device
        self.check_manifest = check_manifest
        self._cuda: Any = None  # pycuda.driver
        self._ctx: CudaContext | None = None  # the device's primary CUDA context, pushed around every call using it
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._stream: CudaStream | None = None
        self._inputs: list[Buffer] = []
        self._outputs: list[Buffer] = []
        self._events: list[CudaEvent] = []
        self._times: StageTimes | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def _activate(self) -> None:
        cuda = self._cuda = _cuda_driver()
        try:
            blob = self.engine_path.read_bytes()
        except OSError as exc:
            raise BackendError(f"{self.name}: cannot read the engine: {exc}") from None
        cuda.init()
        count = int(cuda.Device.count())
        if not 0 <= self.device < count:
            raise BackendError(f"{self.name}: no CUDA device {self.device} (this machine has {count})")
        dev = cuda.Device(self.device)
        if self.check_manifest:
            self._check_manifest(str(dev.name()), "{}.{}".format(*dev.compute_capability()), blob)
        ctx: CudaContext = dev.retain_primary_context()
        self._ctx = ctx
        ctx.push()
        try:
            self._load(blob)
        except BaseException:
            self._release()
            ctx.pop()
            ctx.detach()
            self._ctx = None
            raise
        ctx.pop()

    def _check_manifest(self, gpu: str, compute_capability: str, blob: bytes) -> None:
        import tensorrt as trt

        manifest_path = self.engine_path.parent / MANIFEST_FILE
        if not manifest_path.is_file():
            return  # an engine from elsewhere (trtexec --saveEngine): TensorRT's own version check still applies
        manifest = Manifest.read(manifest_path)
        problems = check_engine(self.engine_path, manifest, Platform(trt.__version__, gpu, compute_capability), blob)
        if problems:
            raise BackendError(
                f"{self.name}: this engine may not run here ({'; '.join(map(str, problems))}); rebuild it on this "
                "device with `edgert build`"
            )

    def _load(self, blob: bytes) -> None:
        import tensorrt as trt

        cuda = self._cuda
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine: trt.ICudaEngine | None = runtime.deserialize_cuda_engine(blob)  # None when refused (stubs say never)
        if engine is None:
            raise BackendError(
                f"{self.name}: TensorRT {trt.__version__} cannot deserialize this engine (built by another TensorRT "
                "version or for another GPU?); rebuild it on this device with `edgert build`"
            )
        context = engine.create_execution_context()
        self._engine, self._context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            shape = dims(engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):  # dynamic: serve the profile's opt shape (the card's shape)
                shape = dims(engine.get_tensor_profile_shape(name, 0)[1])
                if not context.set_input_shape(name, shape):
                    raise BackendError(f"{self.name}: TensorRT refused the shape {shape} for input '{name}'")
            self._inputs.append(self._allocate(engine, context, name, shape))
        for name in names:
            if name not in inputs:
                shape = dims(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"{self.name}: output '{name}' has a data-dependent shape {shape}")
                self._outputs.append(self._allocate(engine, context, name, shape))
        self._stream = cuda.Stream()
        self._events = [cuda.Event() for _ in range(4)]

    def _allocate(
        self, engine: trt.ICudaEngine, context: trt.IExecutionContext, name: str, shape: tuple[int, ...]
    ) -> Buffer:
        tensor_type = engine.get_tensor_dtype(name)
        dtype = numpy_dtype(tensor_type)
        if dtype is None:
            raise BackendError(f"{self.name}: tensor '{name}' is {tensor_type.name}, which numpy cannot hold")
        host: np.ndarray = self._cuda.pagelocked_empty(shape, dtype)
        device: DeviceAllocation = self._cuda.mem_alloc(max(host.nbytes, 1))
        if not context.set_tensor_address(name, int(device)):
            device.free()
            raise BackendError(f"{self.name}: TensorRT refused the device buffer for '{name}'")
        return name, host, device

    def _deactivate(self) -> None:
        if self._ctx is None:
            return
        self._ctx.push()
        try:
            self._release()
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None

    def _release(self) -> None:
        for _, _, device in self._inputs + self._outputs:
            device.free()
        self._inputs, self._outputs, self._events = [], [], []
        self._context = self._engine = self._stream = None

    # -- inference -------------------------------------------------------------------------------------------------
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, ctx, context, stream = self._cuda, self._ctx, self._context, self._stream
        assert ctx is not None and context is not None and stream is not None, "infer() before activate()"
        for name, host, _ in self._inputs:
            value = feed.get(name)
            if value is None:
                raise BackendError(f"{self.name}: the feed has no '{name}' (has {sorted(feed)})")
            if value.shape != host.shape:
                raise BackendError(f"{self.name}: '{name}' has shape {value.shape}, the engine wants {host.shape}")
            np.copyto(host, value, casting="same_kind")
        ctx.push()
        try:
            e0, e1, e2, e3 = self._events
            e0.record(stream)
            for _, host, device in self._inputs:
                cuda.memcpy_htod_async(device, host, stream)
            e1.record(stream)
            if not context.execute_async_v3(stream.handle):
                raise BackendError(f"{self.name}: execute_async_v3 failed")
            e2.record(stream)
            for _, host, device in self._outputs:
                cuda.memcpy_dtoh_async(host, device, stream)
            e3.record(stream)
            stream.synchronize()
            self._times = StageTimes(e0.time_till(e1), e1.time_till(e2), e2.time_till(e3))
        except cuda.Error as exc:
            raise BackendError(f"{self.name}: CUDA error during inference: {exc}") from exc
        finally:
            ctx.pop()
        return {name: host.copy() for name, host, _ in self._outputs}

    def stage_times(self) -> StageTimes | None:
        return self._times
