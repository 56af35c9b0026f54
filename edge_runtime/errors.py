"""The package's exceptions. Everything edgert raises on purpose derives from `EdgertError`, so an integrator can
catch one type; each error also keeps the built-in base it always had (`ValueError` for bad input, `RuntimeError`
for a step that failed), so existing handlers keep working. Messages name what was wrong, never patient data.

Where each lives: `PackageError` (package.py), `ArchiveError` (archives.py), `ProtocolError` (protocol.py), `ConfigError` (daemon/config.py),
`DaemonError` (daemon/server.py), `BackendError` (backends/base.py), `SecurityError` (security.py),
`SourceError` and `DicomError` (calibration), `ConversionError` (converters). The SDK's own are below.
"""

from __future__ import annotations


class EdgertError(Exception):
    """Base of every error edgert raises on purpose."""


class EndpointError(EdgertError, ValueError):
    """A ZeroMQ endpoint that cannot be bound or connected (malformed address, port in use, unknown transport)."""


class FrameError(EdgertError, ValueError):
    """An array that cannot be sent as a frame (shape, dtype or pixel format)."""


class DaemonUnavailable(EdgertError):
    """The daemon did not answer a control request in time: not running, unreachable, or wrong keys."""


class ControlError(EdgertError):
    """The daemon answered a control request with an error (its message is the daemon's)."""


def escaped(value: object, limit: int = 200) -> str:
    """Text from outside (a client's bytes, a card's fields, a file name) made safe for one log or error line:
    control characters, newlines included, become escapes (so nothing forges a line), non-ASCII becomes escapes
    (so nothing hides in look-alikes), and it is cut to `limit` characters. The one rule every log uses."""
    text = str(value)
    cut = len(text) > limit
    text = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text + ("..." if cut else "")
