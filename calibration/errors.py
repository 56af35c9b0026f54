"""The base of every error edgert raises on purpose, the one rule for quoting outside text in a log or error line,
and the one rule for how often a repeated event is logged. They live in the lowest layer, so that `calibration` needs nothing of the runtime above it;
`edge_runtime.core.errors` re-exports both with the runtime's own errors.
"""

from __future__ import annotations


class EdgertError(Exception):
    """Base of every error edgert raises on purpose."""


class OptionError(EdgertError, ValueError):
    """A value given from outside (an option, a config key, a card field, a plan) that is out of range or does not
    fit with another: the user's to fix, reported in one line."""


class SourceError(EdgertError, ValueError):
    """A frame source that cannot be read, or a sampling of it that makes no sense."""


def escaped(value: object, limit: int = 200) -> str:
    """Text from outside (a client's bytes, a card's fields, a file name) made safe for one log or error line:
    control characters, newlines included, become escapes (so nothing forges a line), non-ASCII becomes escapes
    (so nothing hides in look-alikes), and it is cut to `limit` characters. The one rule every log uses."""
    text = str(value)
    cut = len(text) > limit
    text = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text + ("..." if cut else "")


def should_log(count: int) -> bool:
    """Whether the `count`-th occurrence of something repeated (a refusal, a failure) is logged: the 1st, 2nd, 4th,
    8th... So a flood costs a few lines, never silence. The one throttling rule every log uses."""
    return count > 0 and count & (count - 1) == 0
