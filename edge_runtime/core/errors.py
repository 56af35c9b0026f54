"""The package's exceptions. Everything edgert raises on purpose derives from `EdgertError`, so an integrator can
catch one type; each error also keeps the built-in base it always had (`ValueError` for bad input, `RuntimeError`
for a step that failed), so existing handlers keep working. Messages name what was wrong, never patient data.

Where each lives: `PackageError` (package.py), `ArchiveError` (archives.py), `ProtocolError` (protocol.py), `ConfigError` (daemon/config.py),
`DaemonError` (daemon/server.py), `BackendError` (backends/base.py), `SecurityError` (security.py),
`OptionError` (a value from outside out of range), `SourceError` and `DicomError` (calibration), `ConversionError` (converters). The SDK's own are below. `EdgertError`
and `escaped` are defined in `calibration/errors.py`, the lowest layer, and re-exported here.
"""

from __future__ import annotations

from calibration.errors import EdgertError, OptionError, escaped, should_log

__all__ = [
    "ControlError", "DaemonUnavailable", "EdgertError", "EndpointError", "FrameError", "OptionError", "escaped",
    "should_log",
]  # fmt: skip


class EndpointError(EdgertError, ValueError):
    """A ZeroMQ endpoint that cannot be bound or connected (malformed address, port in use, unknown transport)."""


class FrameError(EdgertError, ValueError):
    """An array that cannot be sent as a frame (shape, dtype or pixel format)."""


class DaemonUnavailable(EdgertError):
    """The daemon did not answer a control request in time: not running, unreachable, or wrong keys."""


class ControlError(EdgertError):
    """The daemon answered a control request with an error (its message is the daemon's)."""
