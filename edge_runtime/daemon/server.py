"""The inference daemon: ingest -> bounded stream table -> inference -> results PUB, plus control and heartbeats.

Three threads, each the only user of its sockets (ZeroMQ sockets are not thread-safe), but for one (below):
- receiver: drains the ingest socket, validates each message, keeps the newest frame per stream (within the
  stream table's limits: live streams, waiting bytes, frame age; see slots.py);
- inference: takes the newest pending frame, runs the pipeline, stamps and publishes the result itself;
- I/O: answers control requests, sends heartbeats even while inference is busy;
- decode (imagezmq ingest only, `[decode] threads` of them): decode JPEGs off the receive thread, which answers
  REQ senders and so never decodes (see decoding.py).
The results PUB socket is the one socket two threads use: the inference thread publishes each result the moment it
is encoded (a hand-off to another thread cost a thread wake-up, 0.2 to 0.5 ms on a loaded 2-core board), and the I/O
thread sends heartbeats on it. A lock serialises them, which is also the full memory barrier ZeroMQ asks for when
a socket is used from more than one thread; neither holds it for more than a non-blocking send.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from edge_runtime import __version__
from edge_runtime.backends import GpuOptions
from edge_runtime.core.errors import EdgertError, escaped
from edge_runtime.core.package import ModelPackage, open_package
from edge_runtime.core.protocol import (
    Buffer,
    DaemonState,
    Heartbeat,
    RejectReason,
    Result,
    ResultStatus,
    encode_heartbeat,
    encode_result,
    stamp_publish_time,
)
from edge_runtime.daemon import systemd
from edge_runtime.daemon.audit import AuditError, AuditEvent, AuditLog, AuditWriter, Tally, key_id
from edge_runtime.daemon.config import DaemonConfig, as_json
from edge_runtime.daemon.control import (
    CONTROL_COMMANDS,
    command_name,
    count_refusal,
    parse_request,
    send_reply,
    waiting_requests,
)
from edge_runtime.daemon.handoff import Handoff
from edge_runtime.daemon.health import health
from edge_runtime.daemon.imagezmq import REPLY_OK, refusal_reply
from edge_runtime.daemon.ingest import (
    IngestSocket,
    PeerEvents,
    Received,
)
from edge_runtime.daemon.intake import Intake
from edge_runtime.daemon.preview import PreviewPublisher
from edge_runtime.daemon.reload import Reloader
from edge_runtime.daemon.scheduling import configure_zmq_threads, place_current_thread
from edge_runtime.daemon.slots import Pending, StreamTable
from edge_runtime.daemon.sockets import SocketError, open_sockets
from edge_runtime.daemon.stats import DaemonStats, Stage
from edge_runtime.inference.pipeline import InferencePipeline
from edge_runtime.sdk.security import SecurityError, ServerSecurity

log = logging.getLogger("edgert.daemon")

POLL_MS = 50
GIL_SWITCH_INTERVAL_S = 0.0005
REPLY_STOPPING = b"REFUSED stopping"  # what REQ senders waiting at shutdown are told
REPLY_LINGER_MS = 200  # at shutdown, how long the last answers to REQ senders may take to leave


EngineSource = Callable[[ModelPackage, Callable[[str], None]], Path]
"""(package, say) -> the path of a TensorRT engine for it on this device, from a cache or freshly built."""


class DaemonError(EdgertError, RuntimeError):
    pass


class Daemon:
    """Usable in-process (`start` / `stop`) or as the `edgert serve` main loop (`run`)."""

    def __init__(self, config: DaemonConfig, engine_source: EngineSource | None = None) -> None:
        """`engine_source` finds (or builds) the TensorRT engine for a package; only the tensorrt backend needs
        one. `edgert serve` passes the converters' builder; the daemon itself never imports it."""
        self.config = config
        self._engine_source = engine_source
        self.stats = DaemonStats()
        self.state = DaemonState.STARTING
        self.endpoints: dict[str, str] = {}
        self._stop = threading.Event()
        self._slots = StreamTable(config.streams, on_stale=self.stats.stale)
        self._intake = Intake(config, self.stats, self._slots)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._threads: list[threading.Thread] = []
        self._pipeline: InferencePipeline | None = None
        self._started_at = time.monotonic()
        self._warmup_ms = 0.0
        self._security: ServerSecurity | None = None
        self._busy_since: float | None = None
        self._metrics: Any = None  # monotonic start of the inference in progress, for the watchdog
        self._preview: PreviewPublisher | None = None
        self._handoff: Handoff[InferencePipeline] = Handoff()  # a reloaded model waiting for a frame boundary
        self._reloader = Reloader(config.allowed_reload_dirs, self._load_pipeline, self._handoff,
                                  lambda: self._pipeline.model_id if self._pipeline else None,
                                  lambda event, **fields: self._audited(event, **fields))  # fmt: skip
        self._audit: AuditWriter | None = None
        self._pub_lock = threading.Lock()  # the results socket: the inference thread's results, the I/O thread's beats

    @property
    def reloads(self) -> int:
        return self._reloader.reloads

    @property
    def reloads_refused(self) -> int:
        return self._reloader.refused

    @property
    def reload_take_timeout_s(self) -> float:
        """How long a reloaded model waits for the inference thread to take it before it is withdrawn."""
        return self._reloader.take_timeout_s

    @reload_take_timeout_s.setter
    def reload_take_timeout_s(self, seconds: float) -> None:
        self._reloader.take_timeout_s = seconds

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load, warm up and self-test the model, open the sockets, start serving. All or nothing: if any step
        fails, everything already opened or started is stopped and closed before the error is raised."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.config
        if cfg.audit is not None:
            try:
                self._audit = AuditWriter(AuditLog(cfg.audit), on_error=lambda text: log.error("audit log: %s", text))
            except (AuditError, OSError) as exc:
                raise DaemonError(f"audit log: {exc}") from None
            self._audited(AuditEvent.START, version=__version__, pid=os.getpid(), config=as_json(cfg))
        pipeline = self._load_pipeline(cfg.model)
        self._pipeline = pipeline
        log.info(
            "model %s loaded on %s (warm-up %.1f ms/inference)",
            escaped(pipeline.model_id), cfg.backend.value, self._warmup_ms,
        )  # fmt: skip
        model = pipeline.model_id
        self._audited(
            AuditEvent.MODEL_LOADED,
            name=model.name,
            version=model.version,
            sha256=model.sha256,
            backend=cfg.backend.value,
        )
        self._ctx = zmq.Context()
        problem = configure_zmq_threads(self._ctx, cfg.cpu.io_cpus, cfg.cpu.realtime_priority)
        if problem:
            log.warning("ZeroMQ I/O threads: %s", problem)
        if cfg.server_key is not None and cfg.authorized_clients is not None:
            try:
                self._security = ServerSecurity(cfg.server_key, cfg.authorized_clients)
            except SecurityError as exc:
                raise DaemonError(str(exc)) from None
            self._security.start(self._ctx, self._key_verdict)
        for exposure in cfg.plain_exposures():
            if cfg.refuse_plain_network:
                raise DaemonError(f"{exposure}; refused by security.refuse_plain_network")
            log.warning("UNENCRYPTED: %s", exposure)
        if self._security is not None and not cfg.curve_outputs:
            log.warning("UNENCRYPTED: security.curve_outputs = false: results and preview are sent in plain")
        try:
            sockets = open_sockets(cfg, self._ctx, self._security, self.endpoints)
        except SocketError as exc:
            raise DaemonError(str(exc)) from None
        infer = threading.Thread(target=self._inference_loop, args=(sockets.pub,), name="edgert-infer", daemon=True)
        self._threads = [
            threading.Thread(target=self._receive_loop, args=(sockets.ingest,), name="edgert-receive", daemon=True),
            infer,
            threading.Thread(
                target=self._io_loop,
                args=(sockets.pub, sockets.rep, infer),
                name="edgert-io",
                daemon=True,
            ),
        ]
        self._threads += [
            threading.Thread(
                target=self._intake.decode_loop, args=(self._stop,), name=f"edgert-decode-{i}", daemon=True
            )
            for i in range(self._intake.decode_threads)
        ]
        if sockets.preview is not None:  # before the inference thread, which offers it every frame from the first
            self._preview = PreviewPublisher(sockets.preview, cfg.preview.max_side, cfg.preview.quality)
            self._preview.start()
        for t in self._threads:
            t.start()
        if cfg.metrics_endpoint:
            from edge_runtime.daemon.metrics import MetricsServer

            try:
                self._metrics = MetricsServer(self, cfg.metrics_endpoint)
            except (OSError, ValueError) as exc:
                raise DaemonError(f"cannot serve metrics on {cfg.metrics_endpoint}: {exc}") from None
            self.endpoints["metrics"] = f"http://{self._metrics.address}/metrics"
        if cfg.ready_file:
            try:
                self._write_ready_file(cfg.ready_file)
            except OSError as exc:
                raise DaemonError(f"cannot write the ready file {cfg.ready_file}: {exc}") from None
        # Ready only now, with every step done: READY=1 precedes the I/O thread's first WATCHDOG=1, which it sends
        # only in the READY state.
        self.state = DaemonState.READY
        systemd.notify("READY=1")
        log.info("ready: %s", ", ".join(f"{name} {endpoint}" for name, endpoint in self.endpoints.items()))

    def _load_pipeline(self, path: Path) -> InferencePipeline:
        """Load, activate, warm up and self-test a model; nothing is left active if any step fails. An archive is
        unpacked within [limits] into a temporary folder that is gone when this returns (or raises): the active
        runner holds its model in memory."""
        with open_package(path, self.config.limits) as package:
            return self._activate(package)

    def _activate(self, package: ModelPackage) -> InferencePipeline:
        cfg = self.config
        engine = None
        if cfg.backend.needs_engine:
            if self._engine_source is None:
                raise DaemonError(
                    f"backend '{cfg.backend.value}' needs an engine source (edgert serve provides one; a program "
                    "embedding the daemon passes one to Daemon)"
                )
            log.info("finding the TensorRT engine for %s", escaped(package.model_id))
            try:
                engine = self._engine_source(package, lambda line: log.info("engine: %s", escaped(line, 1000)))
            except EdgertError as exc:
                raise DaemonError(f"no engine for {package.model_id}: {exc}") from None
        gpu = GpuOptions(device=cfg.device, cache_dir=cfg.engine.cache_dir)
        setup = cfg.cpu.setup(cfg.threads)  # the same rule `convert --config` and `bench --config` time by
        pipeline = InferencePipeline(
            package, cfg.backend, threads=setup.threads, engine=engine, gpu=gpu, cpu=setup.options,
            tracker=cfg.tracker, tracking=cfg.tracker_enabled, mask=cfg.mask, triton=cfg.triton,
        )  # fmt: skip
        try:
            pipeline.runner.activate()
            if self.config.warmup:
                self._warmup_ms = pipeline.warm_up(self.config.warmup)
            pipeline.self_test()  # always, warm-up or not: a model that cannot produce a result is never served
        except BaseException:
            pipeline.runner.deactivate()
            raise
        return pipeline

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: the frame being inferred is finished and published, pending frames are abandoned.
        Also undoes a start that failed part-way."""
        if self._stop.is_set():
            return
        was_ready = self.state is DaemonState.READY
        self.state = DaemonState.STOPPING
        if was_ready:
            systemd.notify("STOPPING=1")
        self._stop.set()
        self.stats.dropped_at_shutdown(self._slots.close())
        self.stats.dropped_at_shutdown(self._intake.close())
        for t in self._threads:
            if t.ident is None:  # never started: start() failed before it
                continue
            t.join(timeout)
            if t.is_alive():
                log.error("thread %s did not stop within %.1f s", t.name, timeout)
        if self._preview is not None:
            self._preview.stop(timeout)
        pending = self._handoff.close()  # a reload that was never taken: withdrawn, and later ones refused
        if pending is not None:
            pending.runner.deactivate()
        if self._pipeline:
            self._pipeline.runner.deactivate()
        if self._security is not None:
            self._security.stop()
        if self._metrics is not None:
            self._metrics.stop()
        if self._ctx:
            self._ctx.destroy(linger=0)
        if self.config.ready_file:
            self.config.ready_file.unlink(missing_ok=True)
        log.info("stopped: %s", json.dumps(self._counts()))
        if self._audit is not None:
            self._audit.close(AuditEvent.STOP, counts=self._counts())  # after the last summary: a clean stop ends it

    def run(self) -> int:
        """Serve until SIGINT or SIGTERM (main thread only); returns the process exit status."""
        stop = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        # A thread waiting for the GIL waits up to the switch interval (5 ms by default) while the inference thread
        # runs Python code: far too long for the receive and publish paths. This process is ours, so shorten it.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        try:
            self.start()
            while not stop.wait(0.2):
                if not all(t.is_alive() for t in self._threads):
                    log.error("a daemon thread died; shutting down")
                    return 1
            return 0
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    # -- threads -----------------------------------------------------------------------------------------------
    def _receive_loop(self, ingest: IngestSocket) -> None:
        place_current_thread(self.config.cpu.io_cpus, self.config.cpu.realtime_priority)

        def watch() -> tuple[zmq.Poller, PeerEvents]:  # the ingest socket and its monitor, polled together
            peers = self._watch(ingest.socket, "ingest")
            poller = zmq.Poller()
            poller.register(ingest.socket, zmq.POLLIN)
            poller.register(peers.pipe, zmq.POLLIN)
            return poller, peers

        poller, peers = watch()
        try:
            while not self._stop.is_set():
                ready = poller.poll(POLL_MS)
                peers.drain()  # also when idle: incomplete handshakes are counted once they have settled
                if not ready:
                    continue
                while True:  # drain: only the newest frame per stream survives
                    message = ingest.receive()
                    if message is None:
                        break
                    if isinstance(message, Received):
                        refused = self._intake.admit(message)
                        if message.envelope is not None:  # a REQ sender waits for this answer, sent at once
                            ingest.answer(message.envelope, REPLY_OK if refused is None else refusal_reply(refused))
                        continue
                    self._intake.rejected(message.reason, message.detail)
                    if message.envelope is not None:
                        ingest.answer(message.envelope, refusal_reply(message.reason))
                    if message.reset:  # the socket was re-opened: watch and poll the new one
                        self.stats.ingest_reset()
                        log.warning("ingest socket re-opened to drop a message (%d so far)", ingest.resets)
                        peers.close()
                        poller, peers = watch()
        finally:
            peers.close()
            if ingest.routed:
                self._answer_waiting(ingest)
            ingest.close(REPLY_LINGER_MS if ingest.routed else 0)

    @staticmethod
    def _answer_waiting(ingest: IngestSocket) -> None:
        """At shutdown, answer every REQ sender whose request is queued, then let the answers leave: a sender left
        without an answer would wait forever. Its next request then waits in its own socket for the next daemon."""
        while (message := ingest.receive()) is not None:
            if message.envelope is not None:
                ingest.answer(message.envelope, REPLY_STOPPING)

    def _watch(self, sock: zmq.Socket[bytes], name: str) -> PeerEvents:
        assert self._ctx is not None

        def on_peer(connected: bool) -> None:  # counted, not recorded: anyone can open a TCP connection
            if self._audit is not None:
                self._audit.count(Tally.OPENED if connected else Tally.CLOSED, name)

        return PeerEvents(
            self._ctx,
            sock,
            lambda reason, detail: self._intake.rejected(reason, f"{name}: {detail}"),
            on_peer=on_peer if self._audit is not None else None,
        )

    def _key_verdict(self, allowed: bool, z85_key: bytes) -> None:
        """Called by the CURVE authenticator for every client key it judges (its own thread)."""
        if allowed:
            self._audited(AuditEvent.KEY_ALLOWED, key_id=key_id(z85_key))
        else:  # any key pair can be made up: counted by key id in the periodic summary
            self.stats.reject(RejectReason.UNAUTHORIZED)
            if self._audit is not None:
                self._audit.count(Tally.REFUSED_KEYS, key_id(z85_key))

    def _audited(self, event: AuditEvent, **fields: Any) -> None:
        """Queue a record for the audit log's writer thread, if there is a log; never waits for the disk. A failing
        log (a full disk) is logged and counted, and the daemon keeps serving: the overlay on the surgeon's screen
        matters more than its paper trail."""
        if self._audit is not None:
            self._audit.submit(event, **fields)

    def _inference_loop(self, pub: zmq.Socket[bytes]) -> None:
        place_current_thread(self.config.cpu.inference_cpus[:1], 0)
        pipeline = self._pipeline
        assert pipeline is not None
        while not self._stop.is_set():
            new = self._handoff.take(pipeline)  # between two frames: no frame ever sees half a model change
            if new is not None:  # the reload thread deactivates the old one: not this thread's time
                log.info("now serving %s (was %s)", escaped(new.model_id), escaped(pipeline.model_id))
                self._pipeline = pipeline = new
            pending = self._slots.take(POLL_MS / 1000.0)
            if pending is None:
                continue
            self._busy_since = time.monotonic()
            result = pipeline.run(pending.frame, pending.recv_ts_ns)
            self._busy_since = None
            ok = result.status is ResultStatus.OK
            if not ok:
                log.warning(
                    "inference failed on stream %d frame %d: %s", result.stream_id, result.seq, escaped(result.error)
                )
            parts = encode_result(result)
            encoded = time.time_ns()
            self._publish(pub, parts, encoded)
            self.stats.inferred(
                result.infer_start_ns - pending.recv_ts_ns,
                result.infer_end_ns - result.infer_start_ns,
                ok,
                self.config.inference_deadline_ms * 1_000_000,
                self._stages(pending, result, pipeline, encoded),
            )
            if self._preview is not None:  # after the result: the preview never delays it
                self._preview.offer(pending.frame)
            del pending  # the received buffer is released now (or once its preview is encoded)

    @staticmethod
    def _stages(pending: Pending, result: Result, pipeline: InferencePipeline, encoded_ns: int) -> dict[Stage, int]:
        """The frame's time per stage up to its encoded result (see `Stage`)."""
        admitted = pending.admitted_ts_ns or pending.recv_ts_ns
        stages = {
            Stage.RECEIVE: pending.recv_ts_ns - pending.frame.capture_ts_ns,
            Stage.DECODE: admitted - pending.recv_ts_ns,
            Stage.QUEUE: result.infer_start_ns - admitted,
            Stage.ENCODE: encoded_ns - result.infer_end_ns,
        }
        times = pipeline.last_times
        if times is not None:  # a failed run has none
            stages.update({
                Stage.PREPROCESS: times.preprocess_ns,
                Stage.MODEL: times.model_ns,
                Stage.POSTPROCESS: times.postprocess_ns,
            })  # fmt: skip
        return stages

    def _io_loop(self, pub: zmq.Socket[bytes], rep: zmq.Socket[bytes], infer: threading.Thread) -> None:
        place_current_thread(self.config.cpu.io_cpus, self.config.cpu.realtime_priority)
        peers = self._watch(rep, "control")
        poller = zmq.Poller()
        poller.register(rep, zmq.POLLIN)
        poller.register(peers.pipe, zmq.POLLIN)
        interval_ns = self.config.heartbeat_ms * 1_000_000
        next_beat = time.monotonic_ns()
        try:
            while True:
                if self._stop.is_set() and not infer.is_alive():  # the last result is published by now
                    self._send(pub, encode_heartbeat(self._heartbeat()))  # STOPPING: displays can react at once
                    return
                now = time.monotonic_ns()
                if now >= next_beat:
                    beat = self._heartbeat()
                    self._send(pub, encode_heartbeat(beat))
                    if beat.state is DaemonState.READY:
                        systemd.notify("WATCHDOG=1")  # withheld while inference hangs: systemd then restarts us
                    next_beat = now + interval_ns
                events = dict(poller.poll(min(POLL_MS, max(0, (next_beat - now) // 1_000_000))))
                finished = self._reloader.finished()
                if finished is not None:  # the deferred reply to `reload`
                    send_reply(rep, self._reloader.envelope, finished)
                if rep in events:
                    self._answer_control(rep)
                peers.drain()
        finally:
            peers.close()
            for sock in (rep, pub):
                sock.close()

    def _publish(self, pub: zmq.Socket[bytes], parts: list[Buffer], encoded_ns: int) -> None:
        """Stamp the publish time into an encoded result and send it (from the inference thread)."""
        header = parts[0]
        assert isinstance(header, bytearray)
        with self._pub_lock:
            stamp_publish_time(header, time.time_ns())
            pub.send_multipart(parts, copy=False)  # PUB never blocks: a subscriber that lags loses messages
        self.stats.published(time.time_ns() - encoded_ns)

    def _send(self, pub: zmq.Socket[bytes], parts: list[Buffer]) -> None:
        with self._pub_lock:
            pub.send_multipart(parts)

    # -- control and status ------------------------------------------------------------------------------------
    def _answer_control(self, router: zmq.Socket[bytes]) -> None:
        """Answer every waiting control request, each to the peer that sent it."""
        for request in waiting_requests(router, self.stats, curve=self._security is not None):
            try:
                reply = self.handle_command(request.text)
            except Exception as exc:  # a control request must always get an answer, and never stop the daemon
                count_refusal(self.stats, RejectReason.BAD_CONTROL_REQUEST, f"{exc.__class__.__name__}: {exc}")
                reply = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
            self._audited(
                AuditEvent.CONTROL,
                command=command_name(request.text),
                key_id=key_id(request.user) if request.user else None,
                ok=None if reply is None else bool(reply.get("ok")),  # None: a reload, audited again when it ends
            )
            if reply is None:  # a reload is under way and answers this peer when it is done
                self._reloader.envelope = request.envelope
            else:
                send_reply(router, request.envelope, reply)

    def handle_command(self, text: str) -> dict[str, Any] | None:
        """Answer a control request: a bare command name or JSON {"cmd": name, ...}. None means "answered later"."""
        parsed = parse_request(text)
        if parsed is None:
            return {"ok": False, "error": "request is not valid JSON"}
        cmd, request = parsed
        if cmd == "reload":
            if self._reloader.busy:
                return {"ok": False, "error": "a reload is already in progress"}
            return self._reloader.begin(str(request.get("package", "")))
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "stats":
            return {"ok": True, **self.stats.snapshot(), **(self._preview.counts() if self._preview else {})}
        return {"ok": False, "error": f"unknown command {cmd[:40]!r}; known: {', '.join(CONTROL_COMMANDS)}"}

    def _watchdog(self) -> tuple[DaemonState, dict[str, Any]]:
        pipeline = self._pipeline
        down = pipeline.runner.unavailable() if pipeline is not None else None
        return health(self.state, self._busy_since, self.config.inference_deadline_ms, self._slots, self.stats, down)

    def status(self) -> dict[str, Any]:
        pipeline = self._pipeline
        model = pipeline.model_id if pipeline else None
        state, watchdog = self._watchdog()
        return {
            **watchdog,
            "state": state.name.lower(),
            "model": (
                {
                    "name": model.name,
                    "version": model.version,
                    "sha256": model.sha256,
                    "precision": pipeline.card.precision,
                }
                if model and pipeline
                else None
            ),
            "backend": self.config.backend.value,
            "endpoints": dict(self.endpoints),
            "curve": self._security is not None,
            "curve_outputs": self.config.encrypted_outputs,
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "warmup_ms": round(self._warmup_ms, 3),
            "reloads": self.reloads,
            "reloads_refused": self.reloads_refused,
            "pid": os.getpid(),
            **self._intake.status(),
            **({"audit": self._audit.status()} if self._audit is not None else {}),
        }

    def _counts(self) -> dict[str, int]:
        snap = self.stats.snapshot()
        return {
            k: snap[k] for k in ("frames_in", "frames_out", "frames_dropped", "frames_rejected", "inference_errors")
        }

    def _heartbeat(self) -> Heartbeat:
        s = self.stats
        state, watchdog = self._watchdog()
        return Heartbeat(
            state=state,
            ts_ns=time.time_ns(),
            frames_in=s.frames_in,
            frames_out=s.frames_out,
            frames_dropped=s.frames_dropped,
            frames_rejected=s.frames_rejected,
            model=self._pipeline.model_id if self._pipeline else None,
            info={
                "interval_ms": self.config.heartbeat_ms,
                "backend": self.config.backend.value,
                **({"preview": self.endpoints["preview"]} if "preview" in self.endpoints else {}),
                **watchdog,
            },
        )

    def _write_ready_file(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        status = {**self.status(), "state": DaemonState.READY.name.lower()}  # the last step before turning READY
        tmp.write_text(json.dumps({"pid": os.getpid(), "endpoints": self.endpoints, **status}))
        tmp.replace(path)  # atomic: a watcher never reads half a file
