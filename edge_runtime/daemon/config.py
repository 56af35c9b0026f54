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
from edge_runtime.core.errors import EdgertError
from edge_runtime.core.package import TrackerSpec
from edge_runtime.core.protocol import Limits
from edge_runtime.daemon.audit import AuditOptions
from edge_runtime.daemon.decoding import DecodeLimits
from edge_runtime.daemon.imagezmq import check_names
from edge_runtime.daemon.slots import StreamLimits
from edge_runtime.inference.pipeline import MaskResolution
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
    inference_cpus: tuple[int, ...] = ()  # the inference thread on the first, ONNX Runtime's workers on the rest
    io_cpus: tuple[int, ...] = ()  # the receive and I/O threads
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
class DaemonConfig:
    model: Path
    backend: BackendKind = BackendKind.ONNXRUNTIME
    threads: int = 0  # intra-op threads for the backend; 0 = one per core
    warmup: int = 3
    device: int = 0  # CUDA device for the GPU backends
    engine: EngineConfig = field(default_factory=EngineConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    results_endpoint: str = DEFAULT_RESULTS
    mask: MaskResolution = MaskResolution.MODEL  # [results] mask: "frame" for readers of protocol 1.2 and older
    control_endpoint: str = DEFAULT_CONTROL
    heartbeat_ms: int = 500
    inference_deadline_ms: int = 500  # an inference running longer makes the daemon DEGRADED (a hung backend)
    metrics_endpoint: str | None = None  # HOST:PORT for Prometheus; off unless set (127.0.0.1:9464 is customary)
    limits: Limits = field(default_factory=Limits)
    streams: StreamLimits = field(default_factory=StreamLimits)
    ready_file: Path | None = None
    reload_dirs: tuple[Path, ...] = ()  # folders `ctl reload` may load from; empty: the configured model's folder
    server_key: Path | None = (
        None  # CURVE: the daemon's .key_secret; with authorized_clients, secures ingest, control, results, preview
    )
    authorized_clients: Path | None = None  # folder of client public certificates allowed to connect
    curve_outputs: bool = True  # with CURVE: results and preview too (false: plain, for displays without keys)
    refuse_plain_network: bool = False  # refuse to start when results or preview listen beyond loopback in plain
    tracker: TrackerSpec | None = None  # [tracker]: box tracking for detectors, over the card's `output.tracker`
    tracker_enabled: bool | None = None  # [tracker] enabled: false turns the card's tracker off; None: as the card
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    audit: AuditOptions | None = None  # [audit]: the hash-chained log of security-relevant events; off unless set
    cpu: CpuConfig = field(default_factory=CpuConfig)
    decode: DecodeLimits = field(default_factory=DecodeLimits)  # [decode]: compressed ingest's decode threads

    @property
    def allowed_reload_dirs(self) -> tuple[Path, ...]:
        return self.reload_dirs or (self.model.resolve().parent,)

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


def is_local_endpoint(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint the daemon binds is reachable from this machine only (ipc, inproc, loopback)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    return is_loopback(endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]"))


_SCHEMA: dict[str, dict[str, type]] = {
    "model": {"package": str, "backend": str, "threads": int, "warmup": int, "device": int},
    "engine": {
        "cache_dir": str,
        "build_on_start": bool,
        "on_mismatch": str,
        "workspace_mib": int,
        "opt_level": int,
        "dla_core": int,
        "timing_cache": str,
    },
    "ingest": {"endpoint": str, "mode": str, "pattern": str, "format": str, "streams": dict, "auto_streams": bool},
    "results": {"endpoint": str, "mask": str},
    "control": {"endpoint": str, "reload_dirs": list},
    "heartbeat": {"interval_ms": int},
    "watchdog": {"inference_deadline_ms": int},
    "metrics": {"endpoint": str},
    "limits": {f.name: int for f in dataclasses.fields(Limits)},
    "streams": {"max_streams": int, "idle_ms": int, "max_pending_bytes": int, "max_age_ms": int, "ids": list},
    "security": {"server_key": str, "authorized_clients": str, "curve_outputs": bool, "refuse_plain_network": bool},
    "tracker": {"enabled": bool, "min_hits": int, "window": int, "max_missed": int, "iou": float},
    "preview": {"enabled": bool, "endpoint": str, "max_side": int, "quality": int},
    "audit": {"path": str, "max_bytes": int, "backups": int, "fsync": bool},
    "cpu": {"spin": str, "inference_cpus": list, "io_cpus": list, "realtime_priority": int},
    "decode": {f.name: int for f in dataclasses.fields(DecodeLimits)},
}


def _enum(kind: type[enum.Enum], value: str, key: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{key}: '{value}' is not one of {[e.value for e in kind]}") from None


def _check_types(data: Mapping[str, Any], where: str) -> None:
    for section, values in data.items():
        if section not in _SCHEMA:
            raise ConfigError(f"{where}: unknown section [{section}]; known: {', '.join(_SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for key, value in values.items():
            if key not in _SCHEMA[section]:
                raise ConfigError(f"{where}: unknown key {section}.{key}; known: {', '.join(_SCHEMA[section])}")
            kind = _SCHEMA[section][key]
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ConfigError(f"{where}: {section}.{key} = {value!r} should be {kind.__name__}")


def build_config(data: Mapping[str, Any], base_dir: Path, where: str = "config") -> DaemonConfig:
    """Config from parsed TOML-shaped data; relative paths are taken from `base_dir`."""
    _check_types(data, where)
    model = data.get("model", {})
    if not all(isinstance(d, str) for d in data.get("control", {}).get("reload_dirs", [])):
        raise ConfigError(f"{where}: control.reload_dirs must be a list of folder paths")
    if "package" not in model:
        raise ConfigError(f"{where}: model.package is required (a model package folder or archive)")
    package = Path(model["package"])
    ingest = data.get("ingest", {})
    limits = data.get("limits", {})
    try:
        return DaemonConfig(
            model=package if package.is_absolute() else base_dir / package,
            backend=_enum(BackendKind, model.get("backend", BackendKind.ONNXRUNTIME.value), "model.backend"),
            threads=model.get("threads", 0),
            warmup=model.get("warmup", 3),
            device=model.get("device", 0),
            engine=_engine(data.get("engine", {}), base_dir),
            ingest=IngestConfig(
                endpoint=ingest.get("endpoint", DEFAULT_INGEST),
                mode=_enum(SocketMode, ingest.get("mode", "bind"), "ingest.mode"),
                pattern=_enum(IngestPattern, ingest.get("pattern", "pull"), "ingest.pattern"),
                format=_enum(IngestFormat, ingest.get("format", "edgert"), "ingest.format"),
                streams=dict(ingest.get("streams", {})),
                auto_streams=ingest.get("auto_streams", True),
            ),
            results_endpoint=data.get("results", {}).get("endpoint", DEFAULT_RESULTS),
            mask=_enum(MaskResolution, data.get("results", {}).get("mask", "model"), "results.mask"),
            control_endpoint=data.get("control", {}).get("endpoint", DEFAULT_CONTROL),
            reload_dirs=tuple(
                Path(d) if Path(d).is_absolute() else base_dir / d
                for d in data.get("control", {}).get("reload_dirs", [])
            ),
            heartbeat_ms=data.get("heartbeat", {}).get("interval_ms", 500),
            inference_deadline_ms=data.get("watchdog", {}).get("inference_deadline_ms", 500),
            metrics_endpoint=data.get("metrics", {}).get("endpoint"),
            server_key=_path(data.get("security", {}).get("server_key"), base_dir),
            authorized_clients=_path(data.get("security", {}).get("authorized_clients"), base_dir),
            curve_outputs=data.get("security", {}).get("curve_outputs", True),
            refuse_plain_network=data.get("security", {}).get("refuse_plain_network", False),
            limits=Limits(**limits),
            streams=_streams(data.get("streams", {})),
            tracker=_tracker(data.get("tracker", {})),
            tracker_enabled=data.get("tracker", {}).get("enabled"),
            preview=PreviewConfig(**data.get("preview", {})),
            audit=_audit(data.get("audit", {}), base_dir),
            cpu=_cpu(data.get("cpu", {})),
            decode=DecodeLimits(**data.get("decode", {})),
        )
    except ValueError as exc:  # the checks below and the dataclasses' own name the key, never the file: named here once
        raise ConfigError(f"{where}: {exc}") from None


def _streams(section: Mapping[str, Any]) -> StreamLimits:
    ids = section.get("ids", [])
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConfigError("streams.ids must be a list of stream ids (integers)")
    return StreamLimits(**{**section, "ids": tuple(ids)})


def _cpu(section: Mapping[str, Any]) -> CpuConfig:
    lists = {}
    for key in ("inference_cpus", "io_cpus"):
        values = section.get(key, [])
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"cpu.{key} must be a list of CPU numbers")
        lists[key] = tuple(values)
    return CpuConfig(
        spin=_enum(Spin, section.get("spin", Spin.ALWAYS.value), "cpu.spin"),
        realtime_priority=section.get("realtime_priority", 0),
        **lists,
    )


def _audit(section: Mapping[str, Any], base_dir: Path) -> AuditOptions | None:
    if not section:
        return None
    if "path" not in section:
        raise ValueError("audit.path is required to keep an audit log")
    path = _path(section["path"], base_dir)
    assert path is not None
    return AuditOptions(path=path, **{k: v for k, v in section.items() if k != "path"})


def _tracker(section: Mapping[str, Any]) -> TrackerSpec | None:
    values = {k: v for k, v in section.items() if k != "enabled"}
    if not values and not section.get("enabled"):
        return None
    spec = TrackerSpec(**values)
    if not 1 <= spec.min_hits <= spec.window or spec.max_missed < 0 or not 0.0 < spec.iou <= 1.0:
        raise ValueError(
            f"tracker: need 1 <= min_hits <= window, max_missed >= 0 and 0 < iou <= 1 (got min_hits {spec.min_hits}, "
            f"window {spec.window}, max_missed {spec.max_missed}, iou {spec.iou})"
        )
    return spec


def _engine(section: Mapping[str, Any], base_dir: Path) -> EngineConfig:
    return EngineConfig(
        cache_dir=_path(section.get("cache_dir"), base_dir),
        build_on_start=section.get("build_on_start", True),
        on_mismatch=_enum(OnMismatch, section.get("on_mismatch", "rebuild"), "engine.on_mismatch"),
        workspace_mib=section.get("workspace_mib"),
        opt_level=section.get("opt_level"),
        dla_core=section.get("dla_core"),
        timing_cache=_path(section.get("timing_cache"), base_dir),
    )


def _path(value: str | None, base_dir: Path) -> Path | None:
    if value is None:
        return None
    return Path(value) if Path(value).is_absolute() else base_dir / value


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
