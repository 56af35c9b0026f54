"""The TensorRT facade on a machine without TensorRT: what is detected, and how tensor types map (no GPU needed)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from converters.trt.trtexec import installed_version
from edge_runtime.backends.base import BackendError
from edge_runtime.backends.engine_cache import INSTALL_HINT
from edge_runtime.backends.tensorrt import TensorRTRunner
from edge_runtime.backends.trt_api import bindings_version, dims, numpy_dtype


@pytest.fixture(autouse=True)
def no_tensorrt_left_behind() -> Iterator[None]:
    """These tests import a `tensorrt` of their own: none of it may outlive them (monkeypatch restores sys.path,
    not the module an import put in sys.modules)."""
    before = sys.modules.pop("tensorrt", None)
    yield
    sys.modules.pop("tensorrt", None)
    if before is not None:
        sys.modules["tensorrt"] = before
    importlib.invalidate_caches()


@pytest.fixture
def stubs_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `pip install tensorrt-stubs` leaves: a `tensorrt/` folder of .pyi files, which imports as an empty
    namespace package."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("__version__: str = '10.13.0.35'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # and no trtexec


def test_tensorrt_stubs_alone_are_not_tensorrt(stubs_only: None, tmp_path: Path) -> None:
    import tensorrt  # succeeds: this is the trap

    assert getattr(tensorrt, "__file__", None) is None
    assert bindings_version() is None
    assert installed_version() is None  # before: AttributeError on tensorrt.__version__
    runner = TensorRTRunner(tmp_path / "model.engine")
    with pytest.raises(BackendError) as refused:
        runner.activate()
    assert str(refused.value) == INSTALL_HINT


def test_a_module_with_a_version_is_taken_as_the_bindings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tensorrt.py").write_text("__version__ = '10.3.0.30'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert bindings_version() == "10.3.0.30"


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("FLOAT", np.float32), ("HALF", np.float16), ("INT8", np.int8), ("INT32", np.int32), ("INT64", np.int64),
     ("BOOL", np.bool_), ("UINT8", np.uint8), ("BF16", None), ("FP8", None), ("INT4", None)],
)  # fmt: skip
def test_tensor_types_map_to_numpy_or_to_none(name: str, dtype: type | None) -> None:
    found = numpy_dtype(SimpleNamespace(name=name))  # type: ignore[arg-type]  # a DataType stand-in: only .name is read
    assert found == (np.dtype(dtype) if dtype is not None else None)


def test_dims_reads_a_shape_by_index_and_length() -> None:
    class Dims:  # TensorRT's Dims: __len__ and __getitem__, no __iter__ in its stubs
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> int:
            return (1, 3, 256, -1)[i]

    assert dims(Dims()) == (1, 3, 256, -1)  # type: ignore[arg-type]
