"""TensorRT's type stubs for mypy, in .ci/typings (gitignored; pyproject's mypy_path points there).

`tensorrt-stubs` 10.13.0.35.1 holds stubs generated from NVIDIA's 10.13 Python bindings. It depends on the `tensorrt`
metapackage, whose libraries come from NVIDIA's own index and cannot install here, so it is installed with
`pip install --no-deps`, into a temporary folder rather than the environment: installed there, its `tensorrt/` folder
of `.pyi` files would make `import tensorrt` succeed as an empty namespace package (edgert copes, see
edge_runtime/backends/trt_api.py, but nothing is gained by it).

As shipped, five of its signatures do not parse (a parameter named `in`, a parameter without a default after ones with
defaults) and mypy stops at the first, and the module's `bool` (TensorRT's DataType.BOOL) shadows the builtin in every
annotation, so that each `-> bool` reads as an invalid type (Any): both are repaired here, mechanically, and nothing
else is changed. Run by
.ci/run and, when .ci/typings is missing, by tests/test_lint.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STUBS = "tensorrt-stubs==10.13.0.35.1"
PACKAGES = ("tensorrt", "tensorrt_bindings")
TYPINGS = Path(__file__).resolve().parent / "typings"
MARKER = TYPINGS / "SOURCE"


def repair(text: str) -> tuple[str, int]:
    """The stub text made parseable; the count of signatures changed."""
    count = 0

    def keyword_in(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return match[1] + "in_:"

    text = re.sub(r"([(,] ?)in:", keyword_in, text)  # `in` is a keyword: TensorRT's C++ parameter name, kept as in_
    if re.search(r"^bool: DataType", text, re.M):  # the module's `bool` (DataType.BOOL) shadows the builtin in types
        text, n = re.subn(r"(->|\w:) ?bool\b", r"\1 builtins.bool", text)
        text = text.replace("import typing\n", "import builtins\nimport typing\n", 1)
        count += n
    out = []
    for line in text.splitlines(keepends=True):
        head = re.match(r"(\s*def \w+\()(.*)(\) -> .*)$", line.rstrip("\n"))
        if head:
            params = _split(head[2])
            seen_default, fixed = False, False
            for i, p in enumerate(params):
                if "=" in p:
                    seen_default = True
                elif seen_default and not p.lstrip().startswith("*"):
                    params[i] = p + " = ..."  # pybind11 takes it positionally; a stub cannot say so
                    fixed = True
            if fixed:
                count += 1
                line = head[1] + ",".join(params) + head[3] + "\n"
        out.append(line)
    return "".join(out), count


def _split(params: str) -> list[str]:
    """Parameters at the top level of the brackets (`x: dict[str, int]` is one)."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(params):
        if c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(params[start:i])
            start = i + 1
    parts.append(params[start:])
    return parts


def main() -> int:
    if MARKER.is_file() and MARKER.read_text().strip() == STUBS:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--target", tmp, STUBS],
            check=True,
        )  # fmt: skip
        shutil.rmtree(TYPINGS, ignore_errors=True)
        changed = 0
        for package in PACKAGES:
            for stub in sorted((Path(tmp) / package).rglob("*.pyi")):
                target = TYPINGS / stub.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                text, n = repair(stub.read_text())
                target.write_text(text)
                changed += n
    MARKER.write_text(STUBS + "\n")
    print(f"{STUBS}: stubs in {TYPINGS}, {changed} repairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
