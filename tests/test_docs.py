"""What the README and docs/ promise must be true of the code: links resolve, commands and flags exist, exit codes
match."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from edge_runtime.cli import EXIT_CODES_HELP, ExitCode, build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to missing {target}"
        if anchor and file.suffix == ".md":
            headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), re.M)}
            assert anchor in headings, f"{page.name}: no heading #{anchor} in {file.name}"


def _readme_commands() -> list[list[str]]:
    """The README's `edgert` lines, as the docs-command test reads them (it also runs them, more slowly)."""
    from tests.test_docs_commands import _lines

    return [shlex.split(line)[1:] for line in _lines(ROOT / "README.md") if line.startswith("edgert ")]


@pytest.mark.parametrize("argv", _readme_commands(), ids=lambda a: " ".join(a[:2]))
def test_every_command_in_the_readme_parses(argv: list[str]) -> None:
    build_parser().parse_args(argv)  # an unknown subcommand or flag exits 2


def test_the_readme_states_the_exit_codes_the_cli_uses() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "0 ok, 1 error, 2 usage error, 3 accuracy gate failed" in readme
    assert "0 ok, 1 error, 2 usage error, 3 accuracy gate failed" in EXIT_CODES_HELP
    assert (ExitCode.OK, ExitCode.ERROR, ExitCode.USAGE, ExitCode.GATE_FAILED) == (0, 1, 2, 3)


def test_the_readme_promises_no_extra_that_has_no_code() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extras = re.search(r"\[project.optional-dependencies\]\n(.*?)\n\n", pyproject, re.S)
    assert extras is not None
    names = re.findall(r"^(\w+) =", extras.group(1), re.M)
    assert "tensorrt" not in names or (ROOT / "edge_runtime" / "backends" / "tensorrt.py").exists()
