"""The layering written down in docs/ARCHITECTURE.md, checked on the source: lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {
    "edge_runtime.protocol",
    "calibration.preprocessing",
    "edge_runtime.package",
    "edge_runtime.archives",
    "edge_runtime.tasks",
    "edge_runtime.contours",
    "edge_runtime.tracking",
    "edge_runtime.backends.base",
    "edge_runtime.backends.sessions",
    "edge_runtime.backends.engine_cache",
    "edge_runtime.errors",
    "edge_runtime.liveness",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.split(".")[0] in ("edge_runtime", "calibration", "converters")}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("calibration"), ids=lambda p: str(p.relative_to(ROOT)))
def test_calibration_imports_only_calibration(path: Path) -> None:
    allowed = {"edge_runtime.errors"}  # the package's one exception base
    assert {m for m in _imports(path) if not m.startswith("calibration")} <= allowed


@pytest.mark.parametrize("path", _modules("converters"), ids=lambda p: str(p.relative_to(ROOT)))
def test_converters_import_only_the_core_and_calibration(path: Path) -> None:
    allowed = CORE | {"edge_runtime"}  # the package itself: its version
    outside = {m for m in _imports(path) if m.split(".")[0] == "edge_runtime" and m not in allowed}
    assert outside == set()


def test_the_core_imports_only_the_core() -> None:
    for name in CORE:
        path = ROOT / (name.replace(".", "/") + ".py")
        assert _imports(path) <= CORE, name


def test_only_the_cli_sees_the_converters_from_the_runtime() -> None:
    seen = [p.name for p in _modules("edge_runtime") if any(m.startswith("converters") for m in _imports(p))]
    assert seen == ["cli.py"]


def test_metrics_does_not_import_the_daemon_server() -> None:
    assert "edge_runtime.daemon.server" not in _imports(ROOT / "edge_runtime" / "daemon" / "metrics.py")


@pytest.mark.parametrize("path", _modules("edge_runtime/view"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_view_knows_the_daemon_only_by_its_wire_protocol(path: Path) -> None:
    outside = {m for m in _imports(path) if not m.startswith("edge_runtime.view")}
    assert outside <= CORE | WIRE, outside


WIRE = {"edge_runtime.security"}  # CURVE keys: part of how a client speaks to the daemon, not of the daemon


INTEGRATION_MODULES = [*_modules("edge_runtime/record"), ROOT / "edge_runtime" / "igtl.py"]


@pytest.mark.parametrize("path", INTEGRATION_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_integrations_know_the_daemon_only_by_its_wire_protocol(path: Path) -> None:
    """record and igtl are clients of the daemon, like the view: the SDK, the view's ZeroMQ side, the overlay."""
    sdk = {"edge_runtime", "edge_runtime.sender", "edge_runtime.overlay", "edge_runtime.view.feed"}
    outside = {m for m in _imports(path) if not m.startswith("edge_runtime.record")}
    assert outside <= CORE | WIRE | sdk, outside


def test_the_audit_log_stands_alone() -> None:
    assert _imports(ROOT / "edge_runtime" / "audit.py") <= {"edge_runtime.errors"}
