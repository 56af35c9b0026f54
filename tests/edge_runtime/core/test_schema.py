from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_runtime.core import schema


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Section:
    name: str = field(metadata={"required": "what it is called"})
    count: int = 1
    ratio: float = 0.5
    color: Color = Color.RED
    where: Path | None = None
    sizes: tuple[int, ...] = field(default=(), metadata={"items": "sizes in pixels"})

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"part.count: {self.count} is negative")


def test_a_table_becomes_its_dataclass_with_types_converted(tmp_path: Path) -> None:
    got = schema.read(
        "part", Section, {"name": "a", "ratio": 2, "color": "blue", "where": "x", "sizes": [1, 2]}, tmp_path
    )
    assert got == Section("a", 1, 2.0, Color.BLUE, tmp_path / "x", (1, 2))
    assert schema.read("part", Section, {"name": "a", "where": "/abs"}, tmp_path).where == Path("/abs")


@pytest.mark.parametrize(
    "table, message",
    [
        ({}, r"part.name is required \(what it is called\)"),
        ({"name": "a", "cont": 1}, "unknown key part.cont; known: name, count"),
        ({"name": "a", "count": "1"}, "part.count = '1' should be int"),
        ({"name": "a", "count": True}, "part.count = True should be int"),
        ({"name": "a", "ratio": "x"}, "part.ratio = 'x' should be float"),
        ({"name": "a", "color": "green"}, r"part.color: 'green' is not one of \['red', 'blue'\]"),
        ({"name": "a", "sizes": [1, "2"]}, "part.sizes must be a list of sizes in pixels"),
        ({"name": "a", "count": -1}, "part.count: -1 is negative"),
    ],
)
def test_what_does_not_fit_is_refused_naming_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(schema.SchemaError, match=message):
        schema.read("part", Section, table, Path("."))


def test_keys_describe_each_field_for_a_command_line() -> None:
    keys = schema.keys("part", Section)
    assert list(keys) == ["name", "count", "ratio", "color", "where", "sizes"]
    assert keys["color"].choices == ("red", "blue") and keys["count"].choices is None
    assert keys["where"].kind is Path and keys["where"].optional and keys["count"].default == 1
    assert keys["color"].dotted == "part.color"
