"""The lowest layer's shared rules: how often a repeated event is logged, and how outside text is quoted."""

from __future__ import annotations

from calibration.errors import EdgertError, escaped, should_log
from edge_runtime.core import errors


def test_a_repeated_event_is_logged_at_powers_of_two() -> None:
    assert [n for n in range(0, 70) if should_log(n)] == [1, 2, 4, 8, 16, 32, 64]


def test_one_base_error_and_one_quoting_rule_for_every_layer() -> None:
    assert errors.EdgertError is EdgertError and errors.escaped is escaped  # the runtime re-exports, never redefines
    assert escaped("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert escaped("x" * 300, limit=5) == "xxxxx..."
