"""TOML tables read into frozen dataclasses: a dataclass's fields, their types and defaults are the schema.

One rule for every configuration section: a key that is not a field is refused (a typo on a cart must not fall back to
a default), a value is checked against the field's annotation before the dataclass sees it, enums are given by their
value, relative paths start at the file's folder, lists become tuples. The dataclass's own `__post_init__` then checks
ranges and names its key. Field metadata may say what a list holds (`items`) or why a key is required (`required`).
Errors name the key (`section.key`), never the file: the caller names the file once.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from edge_runtime.core.errors import EdgertError

T = TypeVar("T")


class SchemaError(EdgertError, ValueError):
    """A table that does not fit its dataclass (unknown key, wrong type, missing required key)."""


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a section: its name, the type it takes (the annotation without `None`), and its default."""

    section: str
    name: str
    kind: Any
    default: Any  # dataclasses.MISSING when required
    optional: bool  # the annotation allows None (unset)
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)  # the field's metadata

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The values an enum key accepts, else None."""
        if isinstance(self.kind, type) and issubclass(self.kind, enum.Enum):
            return tuple(str(e.value) for e in self.kind)
        return None


def keys(section: str, cls: type) -> dict[str, Key]:
    """The keys a section's dataclass accepts, in field order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, optional = _strip_none(hints[f.name])
        default: Any = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out[f.name] = Key(section, f.name, kind, default, optional, f.metadata)
    return out


def read(section: str, cls: type[T], table: Mapping[str, Any], base_dir: Path) -> T:
    """`cls` from a TOML table, every key checked against its field first."""
    if not isinstance(table, Mapping):
        raise SchemaError(f"[{section}] must be a table")
    known = keys(section, cls)
    for name in table:
        if name not in known:
            raise SchemaError(f"unknown key {section}.{name}; known: {', '.join(known)}")
    for name, key in known.items():
        if key.default is dataclasses.MISSING and name not in table:
            why = key.meta.get("required")
            raise SchemaError(f"{key.dotted} is required" + (f" ({why})" if why else ""))
    values = {name: _value(known[name], v, base_dir) for name, v in table.items()}
    try:
        return cls(**values)
    except SchemaError:
        raise
    except ValueError as exc:  # __post_init__'s range checks name their key already; a TypeError here is a bug
        raise SchemaError(str(exc)) from None


def _strip_none(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"schema: only `X | None` unions are supported, not {hint}")
        return args[0], True
    return hint, False


def _value(key: Key, value: Any, base_dir: Path) -> Any:
    kind = key.kind
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item,) = typing.get_args(kind)[:1]
        if not isinstance(value, list) or not all(_fits(item, v) for v in value):
            raise SchemaError(f"{key.dotted} must be a list of {key.meta.get('items', _name(item))}")
        return tuple(_scalar(key, item, v, base_dir) for v in value)
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise SchemaError(f"{key.dotted} = {value!r} should be dict")
        return dict(value)
    if not _fits(kind, value):
        raise SchemaError(f"{key.dotted} = {value!r} should be {_name(kind)}")
    return _scalar(key, kind, value, base_dir)


def _fits(kind: Any, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, str)  # str, Path and enums are spelled as strings


def _scalar(key: Key, kind: Any, value: Any, base_dir: Path) -> Any:
    if kind is Path:
        path = Path(value)
        return path if path.is_absolute() else base_dir / path
    if kind is float:
        return float(value)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            raise SchemaError(f"{key.dotted}: '{value}' is not one of {[e.value for e in kind]}") from None
    return value


def _name(kind: Any) -> str:
    if kind is Path or (isinstance(kind, type) and issubclass(kind, enum.Enum)):
        return "str"
    return getattr(kind, "__name__", str(kind))
