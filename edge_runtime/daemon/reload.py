"""`ctl reload`: a new model loaded beside the serving one, on a thread of its own, then handed to the inference
thread at a frame boundary through the hand-off slot (handoff.py), or refused while the old model keeps serving.

One reload at a time. Its reply is deferred: the control loop keeps answering other requests and sends this one
when it is decided (`finished`). A package must lie, with every file in it and symlinks resolved, inside the
allowed folders. Every outcome is audited (`reloaded`, `reload_refused`) and counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_runtime.core.errors import escaped
from edge_runtime.core.protocol import ModelId
from edge_runtime.daemon.audit import AuditEvent
from edge_runtime.daemon.handoff import Handoff, OfferState
from edge_runtime.daemon.scheduling import release_freed_memory
from edge_runtime.inference.pipeline import InferencePipeline

log = logging.getLogger("edgert.daemon")

RELOAD_TAKE_TIMEOUT_S = 10.0  # a reloaded model the inference thread has not taken by then is withdrawn


class Reloader:
    """The reload state machine; `begin` is called by the control loop, the loading runs on `edgert-reload`."""

    def __init__(
        self,
        allowed_dirs: Sequence[Path],
        load: Callable[[Path], InferencePipeline],
        handoff: Handoff[InferencePipeline],
        serving: Callable[[], ModelId | None],
        audited: Callable[..., None],
    ) -> None:
        self._allowed_dirs = tuple(allowed_dirs)
        self._load = load
        self._handoff = handoff
        self._serving = serving
        self._audited = audited
        self.take_timeout_s = RELOAD_TAKE_TIMEOUT_S
        self.reloads = 0
        self.refused = 0
        self._pending: tuple[threading.Event, dict[str, Any]] | None = None  # (done, reply) of the reload under way
        self.envelope: list[bytes] = []  # who asked for it: the control loop answers them when it is done

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def finished(self) -> dict[str, Any] | None:
        """The reply of a reload that has just been decided (once), or None."""
        if self._pending is None or not self._pending[0].is_set():
            return None
        reply = self._pending[1]
        self._pending = None
        return reply

    def begin(self, package: str) -> dict[str, Any] | None:
        """Load a new model beside the serving one; it takes over at the next frame boundary if it loads and
        passes its self-test, otherwise the current model keeps serving. The reply comes when that is decided."""
        if not package:
            return self.refuse('reload needs {"cmd": "reload", "package": PATH}')
        path = Path(package).resolve()
        outside = self.outside_allowed_dirs(path)
        if outside is not None:
            return self.refuse(outside)
        done = threading.Event()
        reply: dict[str, Any] = {}
        self._pending = (done, reply)
        current = self._serving()

        def work() -> None:
            try:
                new = self._load(path)
            except Exception as exc:  # any failure: refuse, keep serving the old model
                reply.update(self.refuse(f"{current} keeps serving: {exc.__class__.__name__}: {exc}"))
                release_freed_memory()
            else:
                offer = self._handoff.offer(new)
                state = self._handoff.wait(offer, self.take_timeout_s)
                if state is not OfferState.TAKEN:
                    if state is not OfferState.STOPPED:  # STOPPED: stop() deactivates it
                        new.runner.deactivate()
                        release_freed_memory()
                    why = {
                        OfferState.WITHDRAWN: f"the inference thread did not take it within "
                        f"{self.take_timeout_s:g} s; withdrawn",
                        OfferState.STOPPED: "the daemon is stopping",
                        OfferState.REFUSED: "the daemon is stopping, or another model is waiting to be served",
                    }[state]
                    reply.update(self.refuse(f"{current} keeps serving: {why}"))
                else:
                    assert offer.replaced is not None
                    offer.replaced.runner.deactivate()
                    release_freed_memory()  # or each reload leaves 20-30 MB of freed heap in the process
                    self.reloads += 1
                    reply.update(ok=True, model=str(new.model_id), previous=str(current))
                    self._audited(
                        AuditEvent.RELOADED,
                        name=new.model_id.name,
                        version=new.model_id.version,
                        sha256=new.model_id.sha256,
                        previous_sha256=current.sha256 if current else None,
                    )
            done.set()

        threading.Thread(target=work, name="edgert-reload", daemon=True).start()
        return None

    def outside_allowed_dirs(self, path: Path) -> str | None:
        """Why `path` may not be loaded, or None: the package and every file in it, with symlinks resolved, must lie
        inside the allowed folders (a link inside the folder to a model outside it is refused)."""
        allowed = [d.resolve() for d in self._allowed_dirs]

        def inside(p: Path) -> bool:
            return any(p == d or d in p.parents for d in allowed)

        if not inside(path):
            return (
                f"{path} is outside the folders reload may use: {[str(d) for d in allowed]} (add one with "
                "`serve --reload-dir` or [control] reload_dirs)"
            )
        if path.is_dir():
            for entry in path.rglob("*"):
                target = entry.resolve()
                if not inside(target):
                    return f"{entry} resolves to {target}, outside the folders reload may use"
        return None

    def refuse(self, reason: str) -> dict[str, Any]:
        self.refused += 1
        self._audited(AuditEvent.RELOAD_REFUSED, reason=reason[:500])
        log.warning("reload refused (%d so far): %s", self.refused, escaped(reason, 500))
        return {"ok": False, "error": f"reload refused: {reason}"}
