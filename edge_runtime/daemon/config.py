"""Daemon configuration: a TOML file, then command-line overrides, validated into frozen dataclasses.

Unknown keys are errors (a typo must not silently fall back to a default on a cart), and every error names the
file and the key.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.backends import BackendKind, CpuOptions, Spin
from edge_runtime.backends.engine_cache import OnMismatch
from edge_runtime.backends.sessions import CpuSetup
from edge_runtime.backends.triton import TritonOptions
from edge_runtime.core import schema
from edge_runtime.core.card import TrackerSpec
from edge_runtime.core.errors import EdgertError
from edge_runtime.core.protocol import Limits, MaskResolution
from edge_runtime.daemon.audit import AuditOptions
from edge_runtime.daemon.decoding import DecodeLimits
from edge_runtime.daemon.imagezmq import check_names
from edge_runtime.daemon.slots import StreamLimits
from edge_runtime.sdk.security import is_loopback

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEFAULT_INGEST = "tcp://127.0.0.1:5555"
DEFAULT_RESULTS = "tcp://127.0.0.1:5556"
DEFAULT_CONTROL = "tcp://127.0.0.1:5557"
DEFAULT_PREVIEW = "tcp://127.0.0.1:5558"
_TRANSPORTS = ("tcp://", "ipc://", "inproc://")


class ConfigError(EdgertError, ValueError):
    pass


class SocketMode(str, enum.Enum):
    BIND = "bind"
    CONNECT = "connect"


class IngestPattern(str, enum.Enum):
    PULL = "pull"  # one or more senders PUSH to the daemon
    SUB = "sub"  # the daemon subscribes to a scanner that PUBlishes
    REP = "rep"  # senders use REQ and wait for a reply (imagezmq's default); answered at once, before inference


class IngestFormat(str, enum.Enum):
    EDGERT = "edgert"  # our wire protocol (PROTOCOL.md)
    IMAGEZMQ = "imagezmq"  # imagezmq's [JSON {msg, dtype, shape}, array] or [JSON {msg}, JPEG]; see imagezmq.py


@dataclass(frozen=True)
class IngestConfig:
    endpoint: str = DEFAULT_INGEST
    mode: SocketMode = SocketMode.BIND
    pattern: IngestPattern = IngestPattern.PULL
    format: IngestFormat = IngestFormat.EDGERT
    streams: Mapping[str, int] = field(default_factory=dict)  # imagezmq: sender name -> stream id
    auto_streams: bool = True  # imagezmq: a name not in `streams` takes the lowest free stream id

    def __post_init__(self) -> None:
        if self.format is IngestFormat.IMAGEZMQ:
            if self.pattern is IngestPattern.PULL:
                raise ConfigError("ingest.pattern: imagezmq senders use REQ ('rep') or PUB ('sub'), not PUSH")
            if self.pattern is IngestPattern.SUB and self.mode is SocketMode.BIND:
                raise ConfigError(
                    "ingest.mode: an imagezmq PUB sender binds its own port, so the daemon must 'connect'"
                )
            if self.pattern is IngestPattern.REP and self.mode is SocketMode.CONNECT:
                raise ConfigError("ingest.mode: imagezmq REQ senders connect, so the daemon must 'bind'")
        else:
            if self.pattern is IngestPattern.REP:
                raise ConfigError("ingest.pattern 'rep' needs ingest.format = 'imagezmq'")
            if self.streams or not self.auto_streams:
                raise ConfigError("ingest.streams and ingest.auto_streams apply to ingest.format = 'imagezmq' only")
        try:
            check_names(self.streams)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class EngineConfig:
    """[engine]: how the tensorrt backend finds its engine (the content-keyed cache) and builds one on a miss."""

    cache_dir: Path | None = None  # default: $EDGERT_ENGINE_CACHE, else ~/.cache/edgert/engines
    build_on_start: bool = True  # build before reporting ready on a miss (minutes on a Jetson); false: refuse
    on_mismatch: OnMismatch = OnMismatch.REBUILD  # an engine cached under another TensorRT or GPU: rebuild or refuse
    workspace_mib: int | None = None
    opt_level: int | None = None
    dla_core: int | None = None
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise ConfigError("engine.workspace_mib must be positive")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise ConfigError("engine.opt_level must be in 0..5")
        if self.dla_core is not None and self.dla_core < 0:
            raise ConfigError("engine.dla_core must be >= 0")


@dataclass(frozen=True)
class PreviewConfig:
    """[preview]: publish each processed frame as a display-size JPEG on its own PUB socket (off by default), with
    the stream and seq of its result, for `edgert view`. It costs a JPEG encode per frame on its own thread; when
    that falls behind, older previews are skipped, never queued."""

    enabled: bool = False
    endpoint: str = DEFAULT_PREVIEW
    max_side: int = 640  # longest side of the image in pixels; larger frames are scaled down, never up
    quality: int = 80  # JPEG quality, 1..95

    def __post_init__(self) -> None:
        if not 16 <= self.max_side <= 8192:
            raise ConfigError(f"preview.max_side: {self.max_side} outside 16..8192")
        if not 1 <= self.quality <= 95:
            raise ConfigError(f"preview.quality: {self.quality} outside 1..95")


@dataclass(frozen=True)
class CpuConfig:
    """[cpu]: how the daemon uses the cores (docs/LATENCY.md has the measurements behind the defaults)."""

    spin: Spin = Spin.ALWAYS  # when ONNX Runtime's workers busy-wait for work: always | run | never
    # the inference thread on the first, ONNX Runtime's workers on the rest
    inference_cpus: tuple[int, ...] = field(default=(), metadata={"items": "CPU numbers"})
    io_cpus: tuple[int, ...] = field(default=(), metadata={"items": "CPU numbers"})  # the receive and I/O threads
    realtime_priority: int = 0  # SCHED_FIFO priority 1..99 for the receive and I/O threads; 0: normal scheduling

    def __post_init__(self) -> None:
        if not 0 <= self.realtime_priority <= 99:
            raise ConfigError(f"cpu.realtime_priority: {self.realtime_priority} outside 0..99")
        for name, cpus in (("inference_cpus", self.inference_cpus), ("io_cpus", self.io_cpus)):
            if any(c < 0 for c in cpus) or len(set(cpus)) != len(cpus):
                raise ConfigError(f"cpu.{name}: {list(cpus)} must be distinct CPU numbers >= 0")

    def backend(self) -> CpuOptions:
        """The backend's share: spinning, and the CPUs for ONNX Runtime's workers."""
        return CpuOptions(spin=self.spin, worker_cpus=self.inference_cpus[1:] or self.inference_cpus)

    def threads(self, threads: int) -> int:
        """Intra-op threads: as configured, else one per inference CPU when those are set (0: ORT's choice)."""
        return threads or len(self.inference_cpus)

    def setup(self, threads: int) -> CpuSetup:
        """The backend's sessions for `model.threads` = `threads`: what the daemon runs and what `convert` and
        `bench` time with `--config`."""
        return CpuSetup(self.threads(threads), self.backend())


@dataclass(frozen=True)
class ModelSection:
    """[model]: the package the daemon serves and how the backend runs it."""

    package: Path = field(metadata={"required": "a model package folder or archive"})
    backend: BackendKind = BackendKind.ONNXRUNTIME
    threads: int = 0  # intra-op threads for the backend; 0 = one per core
    warmup: int = 3  # inferences run before the daemon reports ready
    device: int = 0  # CUDA device for the GPU backends


@dataclass(frozen=True)
class ResultsSection:
    """[results]: the PUB socket displays subscribe to."""

    endpoint: str = DEFAULT_RESULTS
    mask: MaskResolution = MaskResolution.MODEL  # "frame" for readers of protocol 1.2 and older


@dataclass(frozen=True)
class ControlSection:
    """[control]: the REP socket for status, stats and reload."""

    endpoint: str = DEFAULT_CONTROL
    reload_dirs: tuple[Path, ...] = field(default=(), metadata={"items": "folder paths"})  # and the model's own folder


@dataclass(frozen=True)
class HeartbeatSection:
    interval_ms: int = 500  # 50..1000: displays declare the AI offline after missed beats


@dataclass(frozen=True)
class WatchdogSection:
    inference_deadline_ms: int = 500  # an inference running longer makes the daemon DEGRADED (a hung backend)


@dataclass(frozen=True)
class MetricsSection:
    endpoint: str | None = None  # HOST:PORT for Prometheus; off unless set (127.0.0.1:9464 is customary)


@dataclass(frozen=True)
class SecuritySection:
    """[security]: CURVE on ingest, control, results and preview."""

    server_key: Path | None = None  # the daemon's .key_secret; with authorized_clients
    authorized_clients: Path | None = None  # folder of client public certificates allowed to connect
    curve_outputs: bool = True  # with CURVE: results and preview too (false: plain, for displays without keys)
    refuse_plain_network: bool = False  # refuse to start when results or preview listen beyond loopback in plain


@dataclass(frozen=True)
class TrackerSection:
    """[tracker]: box tracking for detectors, over the card's `output.tracker` (TrackerSpec's fields and defaults)."""

    enabled: bool | None = None  # false turns the card's tracker off; unset: as the card
    min_hits: int = TrackerSpec.min_hits
    window: int = TrackerSpec.window
    max_missed: int = TrackerSpec.max_missed
    iou: float = TrackerSpec.iou

    def __post_init__(self) -> None:
        if not 1 <= self.min_hits <= self.window or self.max_missed < 0 or not 0.0 < self.iou <= 1.0:
            raise ConfigError(
                f"tracker: need 1 <= min_hits <= window, max_missed >= 0 and 0 < iou <= 1 (got min_hits "
                f"{self.min_hits}, window {self.window}, max_missed {self.max_missed}, iou {self.iou})"
            )

    def spec(self) -> TrackerSpec:
        return TrackerSpec(self.min_hits, self.window, self.max_missed, self.iou)


# The file's shape: each section's dataclass is its schema (keys, types, defaults); see edge_runtime.core.schema.
SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "engine": EngineConfig,
    "ingest": IngestConfig,
    "results": ResultsSection,
    "control": ControlSection,
    "heartbeat": HeartbeatSection,
    "watchdog": WatchdogSection,
    "metrics": MetricsSection,
    "limits": Limits,
    "streams": StreamLimits,
    "security": SecuritySection,
    "tracker": TrackerSection,
    "preview": PreviewConfig,
    "audit": AuditOptions,  # optional: no [audit] table, no audit log
    "cpu": CpuConfig,
    "decode": DecodeLimits,
    "triton": TritonOptions,  # backend = "triton": the server, the timeouts, shared memory and TLS
}


def config_key(dotted: str) -> schema.Key:
    """The schema's entry for `section.key` (a command-line override derives its type and choices from it)."""
    section, _, name = dotted.partition(".")
    try:
        return schema.keys(section, SECTIONS[section])[name]
    except KeyError:
        raise ConfigError(f"unknown config key {dotted}") from None


@dataclass(frozen=True)
class DaemonConfig:
    """What the daemon runs with: the sections flattened where the daemon reads one value (defaults from them)."""

    model: Path
    backend: BackendKind = ModelSection.backend
    threads: int = ModelSection.threads
    warmup: int = ModelSection.warmup
    device: int = ModelSection.device
    engine: EngineConfig = field(default_factory=EngineConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    results_endpoint: str = ResultsSection.endpoint
    mask: MaskResolution = ResultsSection.mask
    control_endpoint: str = ControlSection.endpoint
    heartbeat_ms: int = HeartbeatSection.interval_ms
    inference_deadline_ms: int = WatchdogSection.inference_deadline_ms
    metrics_endpoint: str | None = MetricsSection.endpoint
    limits: Limits = field(default_factory=Limits)
    streams: StreamLimits = field(default_factory=StreamLimits)
    ready_file: Path | None = None  # not in the file: `edgert serve --ready-file`
    reload_dirs: tuple[Path, ...] = ControlSection.reload_dirs
    server_key: Path | None = SecuritySection.server_key
    authorized_clients: Path | None = SecuritySection.authorized_clients
    curve_outputs: bool = SecuritySection.curve_outputs
    refuse_plain_network: bool = SecuritySection.refuse_plain_network
    tracker: TrackerSpec | None = None  # from [tracker] when it sets a value or enables it
    tracker_enabled: bool | None = TrackerSection.enabled
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    audit: AuditOptions | None = None  # [audit]: the hash-chained log of security-relevant events; off unless set
    cpu: CpuConfig = field(default_factory=CpuConfig)
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    triton: TritonOptions = field(default_factory=TritonOptions)

    @property
    def allowed_reload_dirs(self) -> tuple[Path, ...]:
        """The configured folders and always the served model's own folder: reloading what runs is never refused."""
        return tuple(dict.fromkeys((*self.reload_dirs, self.model.resolve().parent)))

    def __post_init__(self) -> None:
        for name, endpoint in (
            ("ingest.endpoint", self.ingest.endpoint),
            ("results.endpoint", self.results_endpoint),
            ("control.endpoint", self.control_endpoint),
            ("preview.endpoint", self.preview.endpoint),
        ):
            if not endpoint.startswith(_TRANSPORTS):
                raise ConfigError(f"{name}: '{endpoint}' must start with one of {', '.join(_TRANSPORTS)}")
        if not 50 <= self.heartbeat_ms <= 1000:
            raise ConfigError(f"heartbeat.interval_ms: {self.heartbeat_ms} outside 50..1000 (at least once a second)")
        if self.inference_deadline_ms <= 0:
            raise ConfigError("watchdog.inference_deadline_ms must be positive")
        if self.threads < 0 or self.warmup < 0 or self.device < 0:
            raise ConfigError("model.threads, model.warmup and model.device must be >= 0")
        if (self.server_key is None) != (self.authorized_clients is None):
            raise ConfigError("security.server_key and security.authorized_clients go together")
        if self.streams.ids:
            stray = sorted(n for n, i in self.ingest.streams.items() if i not in self.streams.ids)
            if stray:
                raise ConfigError(
                    f"ingest.streams.{stray[0]}: stream id {self.ingest.streams[stray[0]]} is not in streams.ids"
                )

    @property
    def encrypted_outputs(self) -> bool:
        """Whether results and preview are CURVE sockets (the daemon has keys, and they are not turned off)."""
        return self.server_key is not None and self.curve_outputs

    def plain_exposures(self) -> list[str]:
        """One line for each output socket that listens beyond this machine without encryption."""
        if self.encrypted_outputs:
            return []
        outputs = [("results", self.results_endpoint, "masks, boxes and labels")]
        if self.preview.enabled:
            outputs.append(("preview", self.preview.endpoint, "the patient's images"))
        return [
            f"the {name} socket listens beyond this machine ({endpoint}) without CURVE: {what} cross the network "
            "unencrypted to anyone who connects (set [security] server_key and authorized_clients)"
            for name, endpoint, what in outputs
            if not is_local_endpoint(endpoint)
        ]

    @property
    def max_message_bytes(self) -> int:
        """ZeroMQ MAXMSGSIZE for ingest: the largest legal pixel part (4 bytes x 3 channels covers every format)."""
        return self.limits.max_width * self.limits.max_height * 4 * 3 + 4096


def as_json(value: Any) -> Any:
    """A configuration as JSON values: dataclasses as objects, paths as text, enums as their values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return as_json(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): as_json(v) for k, v in value.items()}
    return value


def is_local_endpoint(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint the daemon binds is reachable from this machine only (ipc, inproc, loopback)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    return is_loopback(endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]"))


def build_config(data: Mapping[str, Any], base_dir: Path, where: str = "config") -> DaemonConfig:
    """Config from parsed TOML-shaped data; relative paths are taken from `base_dir`. Errors name `where` once."""
    try:
        for section in data:
            if section not in SECTIONS:
                raise ConfigError(f"unknown section [{section}]; known: {', '.join(SECTIONS)}")
        s: dict[str, Any] = {name: schema.read(name, cls, data.get(name, {}), base_dir) for name, cls in SECTIONS.items()
             if name != "audit" or name in data}  # fmt: skip
        tracker_table = data.get("tracker", {})
        tracker: TrackerSection = s["tracker"]
        return DaemonConfig(
            model=s["model"].package,
            backend=s["model"].backend,
            threads=s["model"].threads,
            warmup=s["model"].warmup,
            device=s["model"].device,
            engine=s["engine"],
            ingest=s["ingest"],
            results_endpoint=s["results"].endpoint,
            mask=s["results"].mask,
            control_endpoint=s["control"].endpoint,
            reload_dirs=s["control"].reload_dirs,
            heartbeat_ms=s["heartbeat"].interval_ms,
            inference_deadline_ms=s["watchdog"].inference_deadline_ms,
            metrics_endpoint=s["metrics"].endpoint,
            server_key=s["security"].server_key,
            authorized_clients=s["security"].authorized_clients,
            curve_outputs=s["security"].curve_outputs,
            refuse_plain_network=s["security"].refuse_plain_network,
            limits=s["limits"],
            streams=s["streams"],
            tracker=tracker.spec() if set(tracker_table) - {"enabled"} or tracker.enabled else None,
            tracker_enabled=tracker.enabled,
            preview=s["preview"],
            audit=s.get("audit"),
            cpu=s["cpu"],
            decode=s["decode"],
            triton=s["triton"],
        )
    except ValueError as exc:  # the sections' checks name the key, never the file: named here once
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """Read a TOML file and apply overrides given as dotted keys ({'ingest.endpoint': ...}); None values are ignored."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return build_config(apply_overrides(data, overrides or {}), path.parent, where=str(path))


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        merged.setdefault(section, {})[key] = value
    return merged
