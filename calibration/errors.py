"""The base of every error edgert raises on purpose, and the one rule for quoting outside text in a log or error
line. They live in the lowest layer, so that `calibration` needs nothing of the runtime above it;
`edge_runtime.core.errors` re-exports both with the runtime's own errors.
"""

from __future__ import annotations


class EdgertError(Exception):
    """Base of every error edgert raises on purpose."""


def escaped(value: object, limit: int = 200) -> str:
    """Text from outside (a client's bytes, a card's fields, a file name) made safe for one log or error line:
    control characters, newlines included, become escapes (so nothing forges a line), non-ASCII becomes escapes
    (so nothing hides in look-alikes), and it is cut to `limit` characters. The one rule every log uses."""
    text = str(value)
    cut = len(text) > limit
    text = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text + ("..." if cut else "")
