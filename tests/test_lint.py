"""Lint, format and types are part of the test suite, so the README's one test command is what CI runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tensorrt_stubs() -> None:
    """TensorRT's stubs in .ci/typings, which mypy types the TensorRT code with (see .ci/tensorrt_stubs.py)."""
    done = subprocess.run([sys.executable, str(ROOT / ".ci" / "tensorrt_stubs.py")], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, f".ci/tensorrt_stubs.py:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],  # strict for edge_runtime, converters and calibration: see [tool.mypy] in pyproject.toml
        # JetPack 6's Python: the standard library as 3.10 has it (its typeshed), whatever runs the check
        ["mypy", "--python-version", "3.10"],
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict", "mypy-strict-py310"],
)
def test_clean(command: list[str], tensorrt_stubs: None) -> None:
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
