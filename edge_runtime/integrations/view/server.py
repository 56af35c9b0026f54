"""The web side of `edgert view`: one page, and a WebSocket that pushes the newest display frame to each browser.

Newest wins on this hop too. Each browser has a slot for one frame and may have at most `MAX_IN_FLIGHT` frames sent
but not yet painted; the page acknowledges each frame once it is painted (or superseded). A slow browser or network
therefore skips frames here, counted, and nothing queues on the server. The acknowledgement carries the paint time,
which with a running clock-offset estimate gives the display latency (capture to paint), logged as p50/p99.

`websockets` (asyncio) serves both the page and the socket, on 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import json
import logging
import math
import signal
import ssl
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edge_runtime.core.errors import EdgertError, OptionError, escaped, should_log
from edge_runtime.integrations.view.feed import DisplayFrame, Feed
from edge_runtime.sdk.liveness import Link, LinkStatus
from edge_runtime.sdk.security import ClientKeys, is_loopback

log = logging.getLogger("edgert.view")
http_log = logging.getLogger("edgert.view.http")  # websockets' own per-connection lines: debug detail

MAX_IN_FLIGHT = 2  # frames sent to a browser and not yet painted; more would only queue in the network
STATUS_EVERY_S = 0.2  # the page declares the link lost when nothing arrives for 1 s
CLOCK_EVERY_S = 1.0
LATENCY_WINDOW = 20_000
MAX_CLIENT_MESSAGE = 4096  # what a browser sends: acknowledgements and clock replies
IN_FLIGHT_TIMEOUT_S = 2.0  # a frame not acknowledged by then counts as lost, so a page can never stall its feed
MAX_DISPLAY_MS = 60_000.0  # a capture-to-paint sample outside -1 s..60 s is a wrong clock or a lie, never kept
MAX_PROBES = 4  # clock probes awaiting a reply, per page
GUESS_BURST, GUESS_PER_S = 10, 1.0  # wrong tokens a host may try at once, and then per second; beyond: 429
GUESS_HOSTS = 1024  # hosts remembered for that, least recent forgotten first
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/view.js": ("view.js", "text/javascript; charset=utf-8"),
    "/view.css": ("view.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' ws: wss:; frame-ancestors 'none'",
    ),
]


class ViewError(EdgertError, RuntimeError):
    pass


@dataclass(frozen=True)
class ViewOptions:
    results: str  # the daemon's results endpoint
    preview: str | None = None  # the daemon's preview endpoint; default: the one its heartbeats announce
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (tests)
    token: str | None = None  # when set, the page and the socket need ?token=...
    stream_id: int | None = None  # default: the first stream that sends, then whichever sends after 2 s of quiet
    max_age_ms: float = 500.0  # an overlay older than this is not shown (the page says STALE)
    misses: float = 2.0  # heartbeat intervals of silence before the page says OFFLINE (PROTOCOL.md: two)
    log_every_s: float = 10.0  # display-latency summary in the log; 0: only at the end
    keys: ClientKeys | None = None  # CURVE for the daemon's results and preview sockets
    tls_cert: Path | None = None  # HTTPS (and WSS): the certificate chain, PEM
    tls_key: Path | None = None  # its private key, PEM (may be in tls_cert's file)

    def __post_init__(self) -> None:
        if self.max_age_ms <= 0 or self.misses <= 0:
            raise OptionError("max_age_ms and misses must be positive")
        if self.tls_key is not None and self.tls_cert is None:
            raise OptionError("a TLS key needs its certificate (--cert)")
        if not 0 <= self.port <= 65535:
            raise OptionError(f"port {self.port} outside 0..65535")
        if self.token is not None and len(self.token) < 8:
            raise OptionError("an access token needs at least 8 characters")


def exposure_warning(host: str, token: str | None, tls: bool = False) -> str | None:
    """What to warn about when the page is served beyond this machine, or None on loopback."""
    if is_loopback(host):
        return None
    advice = "the access token limits it to those given the URL" if token else "set an access token with --token"
    if not tls:
        advice += "; without --cert the video and the token cross the network unencrypted"
    return f"serving the view on {host}: other machines can reach it and see the video ({advice})"


def tls_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    """A server TLS context from PEM files (TLS 1.2 at least); ViewError naming the file when it cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ViewError(f"cannot load the TLS certificate {cert}{f' and key {key}' if key else ''}: {exc}") from None
    return context


class ClockOffset:
    """browser clock - server clock, in ms: the estimate from the exchange with the shortest round trip lately."""

    def __init__(self, keep: int = 8) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=keep)  # (round trip, offset)

    def add(self, sent_ms: float, browser_ms: float, received_ms: float) -> None:
        if received_ms >= sent_ms:
            self._samples.append((received_ms - sent_ms, browser_ms - (sent_ms + received_ms) / 2.0))

    @property
    def ms(self) -> float | None:
        return min(self._samples)[1] if self._samples else None


@dataclass
class LatencyLog:
    """Capture-to-paint samples in ms, over the run and since the last summary."""

    samples: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    recent: list[float] = field(default_factory=list)

    def add(self, ms: float) -> None:
        self.samples.append(ms)
        self.recent.append(ms)

    @staticmethod
    def summary(values: list[float] | deque[float]) -> dict[str, float] | None:
        if not values:
            return None
        arr = np.asarray(values, np.float64)
        p50, p95, p99 = np.percentile(arr, [50, 95, 99])
        return {"n": len(arr), "p50": round(float(p50), 2), "p95": round(float(p95), 2),
                "p99": round(float(p99), 2), "max": round(float(arr.max()), 2)}  # fmt: skip


@dataclass
class ViewStats:
    clients: int = 0  # connected now
    connections: int = 0  # since start
    sent: int = 0  # frames sent to browsers
    skipped: int = 0  # frames a browser never got because a newer one replaced it (slow browser or network)
    painted: int = 0
    superseded: int = 0  # sent, but replaced in the page before it was painted
    refused: int = 0  # HTTP requests or sockets refused (token, unknown path, bad message)
    wrong_tokens: int = 0  # requests with a missing or wrong access token
    throttled: int = 0  # requests refused unchecked (429) because their host guessed wrong too often
    bad_messages: int = (
        0  # page messages refused (not JSON, NaN, out of range, for a frame never sent): that page closed
    )
    unknown_acks: int = 0  # acknowledgements of a frame not in flight to that page (late after the timeout): ignored
    implausible: int = 0  # paint reports whose capture-to-paint was outside -1 s..60 s: not counted as latency


class BadMessage(EdgertError, ValueError):
    """A page sent something that is not a well-formed acknowledgement or clock reply."""


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise BadMessage(f"{constant} is not a number")

    return json.loads(text, parse_constant=refuse)


def _number(msg: dict[str, Any], key: str, low: float, high: float) -> float:
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadMessage(f"{key} is not a number")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise BadMessage(f"{key} {number!r} outside {low:g}..{high:g}")
    return number


def dumps(obj: Any, indent: int | None = None) -> str:
    """JSON out to pages and /stats: strict (a NaN is a bug here, never a message a browser must parse)."""
    return json.dumps(obj, indent=indent, allow_nan=False)


class GuessThrottle:
    """Wrong access tokens per host, as a token bucket: `GUESS_BURST` at once, then `GUESS_PER_S`."""

    def __init__(self, burst: int = GUESS_BURST, per_s: float = GUESS_PER_S, hosts: int = GUESS_HOSTS) -> None:
        self.burst, self.per_s, self.hosts = burst, per_s, hosts
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # host -> (allowance, at)

    def allowed(self, host: str, now: float) -> bool:
        """Whether `host` may have a token checked now."""
        allowance, at = self._buckets.get(host, (float(self.burst), now))
        return min(self.burst, allowance + (now - at) * self.per_s) >= 1.0

    def wrong(self, host: str, now: float) -> None:
        allowance, at = self._buckets.pop(host, (float(self.burst), now))
        self._buckets[host] = (max(0.0, min(self.burst, allowance + (now - at) * self.per_s) - 1.0), now)
        while len(self._buckets) > self.hosts:
            self._buckets.popitem(last=False)


class _Client:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.latest: DisplayFrame | None = None
        self.in_flight: dict[int, tuple[float, float]] = {}  # seq -> (monotonic time sent, its capture_ms)
        self.probes: deque[float] = deque(maxlen=MAX_PROBES)  # t0 of clock probes sent, awaiting a reply
        self.wake = asyncio.Event()
        self.clock = ClockOffset()
        self.status: str | None = None  # the newest status message not yet sent
        self.probe: str | None = None  # a clock probe not yet sent


class ViewServer:
    """`edgert view` as a library: `run()` blocks (the command), or `start()` / `stop()` on a background thread."""

    def __init__(self, options: ViewOptions) -> None:
        try:
            import websockets  # noqa: F401  (checked here, so that the error names the missing extra)
        except ImportError:
            raise ViewError("edgert view needs the 'websockets' package: pip install 'edgert[view]'") from None
        if http_log.level == logging.NOTSET:  # a line per page load is debug detail unless asked for
            http_log.setLevel(logging.WARNING)
        self.options = options
        self.stats = ViewStats()
        self.latency = LatencyLog()
        self.address: tuple[str, int] | None = None
        self._clients: set[_Client] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._feed = Feed(options.results, self._on_frame, preview=options.preview, stream_id=options.stream_id,
                          max_age_ms=options.max_age_ms, misses=options.misses, keys=options.keys)  # fmt: skip
        self._tls = tls_context(options.tls_cert, options.tls_key) if options.tls_cert is not None else None
        self._last_log = time.monotonic()
        self._guesses = GuessThrottle()
        self._tick_failures = 0
        self._ended: str | None = None  # set by end(): what every page says from then on

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self.address is not None, "not started"
        host = self.address[0] if ":" not in self.address[0] else f"[{self.address[0]}]"
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{self.address[1]}/" + (f"?token={self.options.token}" if self.options.token else "")

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (from the main thread) or `stop()`; the latency summary is logged at the end."""
        asyncio.run(self._main())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_thread, name="edgert-view", daemon=True)
        self._thread.start()
        if not self._started.wait(10.0):
            raise ViewError("the view server did not start within 10 s")
        if self._error is not None:
            raise self._error

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._started.set()

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopped.set)
            except RuntimeError:  # the loop has just closed
                pass
        if self._thread is not None:
            self._thread.join(10.0)

    def end(self, reason: str) -> None:
        """The AI behind this view has ended for good (the demo's daemon stopped): every page says AI offline with
        `reason` and keeps its last frame without overlay, while the server still serves (a reload shows the same)."""
        self._ended = reason

    def _link_status(self) -> LinkStatus:
        if self._ended is not None:
            return LinkStatus(Link.STOPPED, self._ended)
        return self._feed.status()

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        opts = self.options
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if threading.current_thread() is threading.main_thread():  # `edgert view`: SIGINT and SIGTERM end it cleanly
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(signum, self._stopped.set)
        self._feed.start()
        try:
            try:
                server = await serve(self._socket, opts.host, opts.port, process_request=self._http,
                                     compression=None, max_size=MAX_CLIENT_MESSAGE, ping_interval=5,
                                     ping_timeout=10, server_header=None, logger=http_log, ssl=self._tls)  # fmt: skip
            except OSError as exc:
                raise ViewError(f"cannot listen on {opts.host}:{opts.port}: {exc.strerror or exc}") from None
            async with server:
                self.address = server.sockets[0].getsockname()[:2]
                warning = exposure_warning(opts.host, opts.token, tls=self._tls is not None)
                if warning is not None:
                    log.warning("%s", escaped(warning, 1000))
                token = " with ?token=... (the --token given)" if opts.token else ""
                log.info("view on %s%s (results %s)", self.url.split("?")[0], token, opts.results)  # never the token
                self._started.set()
                ticker = asyncio.create_task(self._tick())
                try:
                    await self._stopped.wait()
                finally:
                    ticker.cancel()
        finally:
            self._feed.stop()
            self._log_summary(final=True)

    # -- HTTP ----------------------------------------------------------------------------------------------------
    def _authorized(self, query: str) -> bool:
        if self.options.token is None:
            return True
        given = parse_qs(query).get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.options.token.encode())

    def _refuse_token(self, host: str) -> None:
        """Count and log (bounded: 1st, 2nd, 4th, ...) a wrong or missing token; never the token itself."""
        self._guesses.wrong(host, time.monotonic())
        self.stats.wrong_tokens += 1
        n = self.stats.wrong_tokens
        if should_log(n):
            log.warning("refused a request without the right access token (%d so far, the latest from %s)", n,
                        escaped(host, 64))  # fmt: skip

    def _http(self, connection: Any, request: Any) -> Any:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        url = urlsplit(request.path)

        def respond(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
            headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                               ("Connection", "close"), *SECURITY_HEADERS])  # fmt: skip
            return Response(status.value, status.phrase, headers, body)

        needs_token = url.path not in ("/view.js", "/view.css")  # code only, no data
        if needs_token and self.options.token is not None:
            host = str((getattr(connection, "remote_address", None) or ("?",))[0])
            if not self._guesses.allowed(host, time.monotonic()):
                self.stats.refused += 1
                self.stats.throttled += 1
                return respond(http.HTTPStatus.TOO_MANY_REQUESTS, b"too many wrong access tokens: wait and retry\n",
                               "text/plain; charset=utf-8")  # fmt: skip
            if not self._authorized(url.query):
                self.stats.refused += 1
                self._refuse_token(host)
                return respond(http.HTTPStatus.UNAUTHORIZED, b"access token required: add ?token=TOKEN (edgert view --token) to the URL\n",
                               "text/plain; charset=utf-8")  # fmt: skip
        if url.path == "/ws":
            return None  # the WebSocket handshake goes on
        if url.path == "/favicon.ico":
            return respond(http.HTTPStatus.NO_CONTENT, b"", "text/plain")
        if url.path == "/stats":
            body = dumps(self.snapshot(), indent=1).encode()
            return respond(http.HTTPStatus.OK, body, "application/json")
        if url.path in STATIC_FILES:
            name, content_type = STATIC_FILES[url.path]
            # one part per joinpath: Traversable.joinpath takes one argument before Python 3.11
            body = resources.files("edge_runtime.integrations.view").joinpath("static").joinpath(name).read_bytes()
            return respond(http.HTTPStatus.OK, body, content_type)
        self.stats.refused += 1
        return respond(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    # -- frames in (from the feed thread) --------------------------------------------------------------------------
    def _on_frame(self, frame: DisplayFrame) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._offer, frame)
            except RuntimeError:  # closing
                pass

    def _offer(self, frame: DisplayFrame) -> None:
        for client in self._clients:
            if client.latest is not None:
                self.stats.skipped += 1  # never sent: a newer frame arrived before this browser could take it
            client.latest = frame
            client.wake.set()

    # -- WebSocket ---------------------------------------------------------------------------------------------
    async def _socket(self, ws: Any) -> None:
        client = _Client(ws)
        self._clients.add(client)
        self.stats.clients += 1
        self.stats.connections += 1
        client.status = dumps(self._status_message(self._link_status()))
        client.wake.set()
        sender = asyncio.create_task(self._send_loop(client))
        try:
            async for message in ws:
                if not self._on_message(client, message):
                    self.stats.refused += 1
                    break
        except Exception as exc:  # a connection that fails ends only itself
            log.debug("browser connection ended: %s", exc)
        finally:
            sender.cancel()
            self._clients.discard(client)
            self.stats.clients -= 1

    async def _send_loop(self, client: _Client) -> None:
        """Everything a browser gets goes out here, one message at a time: a stuck browser blocks only itself."""
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                for text in (client.status, client.probe):
                    if text is not None:
                        await client.ws.send(text)
                client.status = client.probe = None
                frame = client.latest
                if frame is None or len(client.in_flight) >= MAX_IN_FLIGHT:
                    continue  # an acknowledgement wakes this loop again
                client.latest = None
                client.in_flight[frame.seq] = (time.monotonic(), float(frame.meta.get("capture_ms", 0.0)))
                await client.ws.send(frame.message(time.time_ns()))
                self.stats.sent += 1
        except ConnectionClosed:  # the receiving side of `_socket` ends the connection's bookkeeping
            return

    def _on_message(self, client: _Client, message: Any) -> bool:
        """Handle an acknowledgement or a clock reply; False for anything else (that page's connection is closed).

        Every number is checked finite and in range here, an acknowledgement counts only for a frame in flight to
        this page, and a clock reply only for a probe sent to it: nothing one page sends changes what another sees.
        """
        try:
            if not isinstance(message, str):
                raise BadMessage("a binary message")
            msg = _strict_json(message)
            if not isinstance(msg, dict):
                raise BadMessage("not a JSON object")
            kind = msg.get("type")
            if kind == "ack":
                self._on_ack(client, msg)
                return True
            if kind == "clock":
                t0 = _number(msg, "t0", 0.0, 1e15)
                if t0 not in client.probes:
                    raise BadMessage("a clock reply to no probe of ours")
                client.probes.remove(t0)
                client.clock.add(t0, _number(msg, "tc", 0.0, 1e15), time.time_ns() / 1e6)
                return True
            raise BadMessage(f"unknown message type {escaped(kind, 32)}")
        except (BadMessage, ValueError) as exc:  # json's own errors are ValueErrors
            self.stats.bad_messages += 1
            n = self.stats.bad_messages
            if should_log(n):
                log.warning("closed a page that sent a bad message (%d so far): %s", n, escaped(exc))
            return False

    def _on_ack(self, client: _Client, msg: dict[str, Any]) -> None:
        seq = int(_number(msg, "seq", 0, 2**32 - 1))
        painted = msg.get("painted", False)
        if not isinstance(painted, bool):
            raise BadMessage("painted is not true or false")
        paint_ms = _number(msg, "paint_ms", 0.0, 1e15) if painted else None
        sent = client.in_flight.pop(seq, None)
        client.wake.set()
        if sent is None:  # never sent to this page, or already given up on: nothing to count
            self.stats.unknown_acks += 1
            return
        if paint_ms is None:
            self.stats.superseded += 1
            return
        self.stats.painted += 1
        offset = client.clock.ms
        if offset is not None:
            display_ms = paint_ms - offset - sent[1]  # the capture time is the one sent, not the one claimed
            if -1000.0 <= display_ms <= MAX_DISPLAY_MS:
                self.latency.add(display_ms)
            else:
                self.stats.implausible += 1

    def _status_message(self, status: LinkStatus) -> dict[str, Any]:
        recent = self.latency.summary(list(self.latency.samples)[-120:])
        return {
            "type": "status",
            "link": status.link.value,
            "reason": status.reason,
            "state": status.state.name.lower() if status.state is not None else None,
            "model": {"name": status.model.name, "version": status.model.version} if status.model else None,
            "preview": status.preview is not None,
            "max_age_ms": self.options.max_age_ms,
            "display_ms": recent,
        }

    async def _tick(self) -> None:
        """Status to every page several times a second, clock probes once a second, the latency summary."""
        next_clock = 0.0
        while True:
            try:
                next_clock = self._tick_once(next_clock)
            except Exception as exc:  # the status to every page must keep flowing: "AI offline" depends on it
                self._tick_failures += 1
                if should_log(self._tick_failures):
                    log.error("status tick failed (%d so far): %s", self._tick_failures, escaped(exc))
            await asyncio.sleep(STATUS_EVERY_S)

    def _tick_once(self, next_clock: float) -> float:
        status = dumps(self._status_message(self._link_status()))
        now = time.monotonic()
        probe = now >= next_clock
        if probe:
            next_clock = now + CLOCK_EVERY_S
        for client in self._clients:
            client.status = status
            if probe:
                t0 = time.time_ns() / 1e6
                client.probes.append(t0)
                client.probe = dumps({"type": "clock", "t0": t0})
            lost = [seq for seq, (sent, _) in client.in_flight.items() if now - sent > IN_FLIGHT_TIMEOUT_S]
            for seq in lost:
                del client.in_flight[seq]
            client.wake.set()
        if self.options.log_every_s and now - self._last_log >= self.options.log_every_s:
            self._log_summary()
        return next_clock

    # -- reporting ------------------------------------------------------------------------------------------------
    def _log_summary(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self._last_log
        self._last_log = time.monotonic()
        recent, self.latency.recent = self.latency.recent, []
        values = self.latency.samples if final else recent
        s = self.latency.summary(values)
        if s is None:
            if final:
                log.info("display: no frames painted")
            return
        rate = "" if final else f" ({len(recent) / max(elapsed, 1e-9):.1f} fps)"
        log.info(
            "display%s: %d frames painted%s, capture to paint p50 %.1f ms, p99 %.1f ms; %d skipped for slow "
            "browsers",
            " (whole run)" if final else "", s["n"], rate, s["p50"], s["p99"], self.stats.skipped,
        )  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        """What /stats serves: counts, the link and the display latency over the run."""
        status = self._link_status()
        feed = self._feed.stats
        return {
            "link": status.link.value,
            "reason": status.reason,
            "preview": status.preview,
            "view": asdict(self.stats),
            "feed": {**{k: v for k, v in asdict(feed).items() if k != "pairs"}, **asdict(feed.pairs)},
            "display_latency_ms": self.latency.summary(self.latency.samples),  # capture to paint
            "to_view_latency_ms": self.latency.summary(self._feed.to_view_ms()),  # capture to paired here
        }
