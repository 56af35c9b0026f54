"""The layering written down in docs/ARCHITECTURE.md, checked on the source: each module imports only the layers its
layer's row allows, and no module-level import cycle exists anywhere. The rules come from the table in the doc."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_runtime", "calibration", "converters")
TABLE = re.compile(r"<!-- the layer table.*?-->\n(.*?)<!-- end of the layer table -->", re.S)


def _layers() -> dict[str, tuple[str, set[str]]]:
    """layer -> (its package prefix, the layers it may import), read from ARCHITECTURE.md."""
    found = TABLE.search((ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    assert found, "docs/ARCHITECTURE.md has no layer table"
    layers = {}
    for row in found.group(1).splitlines()[2:]:
        name, prefix, allowed = (cell.strip() for cell in row.strip("|").split("|"))
        layers[name] = (prefix.strip("`"), {a.strip() for a in allowed.split(",")} if "," in allowed or
                        allowed in {"calibration", "core"} else set())  # fmt: skip
    return layers


LAYERS = _layers()


def _layer_of(module: str) -> str | None:
    best = None
    for name, (prefix, _) in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(LAYERS[best][0])
        ):
            best = name
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


ALL_MODULES = [p for package in PACKAGES for p in _modules(package)]
KNOWN = {_module_name(p) for p in ALL_MODULES}


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The edgert modules a file imports (in functions too, unless `top_level_only`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(n for a in node.names if (n := f"{node.module}.{a.name}") in KNOWN)  # `from pkg import mod`
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES and (n in KNOWN or not top_level_only)}


def test_the_table_names_every_module() -> None:
    unplaced = [str(p.relative_to(ROOT)) for p in ALL_MODULES
                if _layer_of(_module_name(p)) is None and _module_name(p) != "edge_runtime"]  # fmt: skip
    assert unplaced == []
    assert {"core", "sdk", "daemon", "integrations", "cli", "calibration"} <= set(LAYERS)


@pytest.mark.parametrize("path", ALL_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_the_layers_its_row_allows(path: Path) -> None:
    me = _layer_of(_module_name(path))
    if me is None:  # edgert's own __init__: lazy names only
        assert _imports(path) == set()
        return
    allowed = LAYERS[me][1] | {me}
    wrong = sorted(
        f"{m} ({_layer_of(m)})" for m in _imports(path) if m != "edge_runtime" and _layer_of(m) not in allowed
    )
    assert wrong == [], f"{me} may import only {sorted(allowed)}"


def test_no_module_level_import_cycle() -> None:
    graph = {_module_name(p): _imports(p, top_level_only=True) - {_module_name(p)} for p in ALL_MODULES}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(node) :], node]))
        if node in done or node not in graph:
            return
        for dep in sorted(graph[node]):
            visit(dep, [*stack, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])


def test_the_root_holds_at_most_ten_modules() -> None:
    assert len(list((ROOT / "edge_runtime").glob("*.py"))) <= 10


def test_metrics_does_not_import_the_daemon_server() -> None:
    assert "edge_runtime.daemon.server" not in _imports(ROOT / "edge_runtime" / "daemon" / "metrics.py")


def test_the_audit_log_stands_alone() -> None:
    assert _imports(ROOT / "edge_runtime" / "daemon" / "audit.py") <= {"edge_runtime.core.errors"}
