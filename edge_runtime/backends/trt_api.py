"""TensorRT and pycuda for the engine builder (`converters/engine.py`) and the runner (`backends/tensorrt.py`).

Both are imported lazily, inside the functions that use them: `import tensorrt` takes seconds and most machines
have neither. There mypy types the module with `tensorrt-stubs` 10.13 (generated from NVIDIA's 10.13 bindings,
installed for the type check with `pip install --no-deps tensorrt-stubs==10.13.0.35.1`: its `tensorrt` dependency
cannot install without NVIDIA's index); the objects kept between calls are typed with names imported under
`TYPE_CHECKING`. Where 8.6 or 11.x differ from 10.13, the code branches on the version and says so.

Two facts the stubs taught us, kept here so that they are said once:
- the stubs install a `tensorrt/` folder holding only `__init__.pyi`, so `import tensorrt` *succeeds* beside them,
  as an empty namespace package: whether TensorRT is here is whether the module has a version, not whether it imports;
- `nptype` is untyped and maps no 8-bit float, so tensor types map to numpy through `numpy_dtype` below.

pycuda ships no type information: the few of its objects the runner keeps are typed by the protocols below, which
name what the runner uses of each (pycuda's documented API).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import tensorrt as trt


def bindings_version() -> str | None:
    """The version of TensorRT's Python bindings importable here; None when there are none (not installed, or only
    tensorrt-stubs' `.pyi` files, which `import` as an empty namespace package)."""
    try:
        import tensorrt
    except ImportError:
        return None
    version = getattr(tensorrt, "__version__", None)  # getattr: the namespace package has none
    return version if isinstance(version, str) and version else None


# TensorRT's tensor types that numpy can hold. BF16, FP8, INT4, FP4 and E8M0 have no numpy type: an engine with such
# an input or output is refused with its name (the card's I/O is float32, float16, int32 or int64 in practice).
_NUMPY_TYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,  # 9.0+
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


def numpy_dtype(dtype: trt.DataType) -> np.dtype[np.generic] | None:
    """The numpy type of a TensorRT tensor type, None when numpy has none."""
    found = _NUMPY_TYPES.get(dtype.name)
    return np.dtype(found) if found is not None else None


def dims(shape: trt.Dims) -> tuple[int, ...]:
    """A TensorRT shape as a tuple: `Dims` indexes and has a length but (by its stubs) does not iterate."""
    return tuple(shape[i] for i in range(len(shape)))


class CudaStream(Protocol):
    """pycuda.driver.Stream."""

    @property
    def handle(self) -> int: ...

    def synchronize(self) -> None: ...


class CudaEvent(Protocol):
    """pycuda.driver.Event."""

    def record(self, stream: CudaStream | None = None) -> CudaEvent: ...

    def time_till(self, end: CudaEvent) -> float: ...  # milliseconds


class CudaContext(Protocol):
    """pycuda.driver.Context (a device's primary context)."""

    def push(self) -> None: ...

    def pop(self) -> None: ...

    def detach(self) -> None: ...


class DeviceAllocation(Protocol):
    """pycuda.driver.DeviceAllocation: device memory, its address by int()."""

    def free(self) -> None: ...

    def __int__(self) -> int: ...
