"""The content-keyed TensorRT engine cache: what an engine was built from and for, and whether it may run here.

TensorRT engines are not portable: a plan built by another TensorRT version or for another GPU fails to
deserialize ("Version tag does not match") or, worse, runs tactics timed on different hardware. A peer's cache
(ONNX Runtime's TensorRT provider) named engines by GPU, compute capability and precision but not by the ONNX
content or the shape profile, so two models of the same structure shared one engine (onnxruntime issue 6455) and
names drifted between runs (issue 14999). Here the key is everything the engine depends on:

    ONNX sha256, TensorRT version, GPU name, compute capability, precision, profiles, DLA core, builder flags

hashed into the folder name. Each entry is a folder holding `engine.plan` and `manifest.json`; the manifest
repeats the key in clear text and the engine's own sha256, so an entry is checked against the running TensorRT
and GPU, and against its own bytes, before anything is deserialized. An engine built for this model under
another TensorRT or GPU is found through the manifest, and the difference is named field by field.

No TensorRT import here: this module is pure, so it is tested on machines without a GPU.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_runtime.core.archives import file_sha256
from edge_runtime.core.errors import EdgertError

MANIFEST_SCHEMA = "edgert.engine/1"
ENGINE_FILE = "engine.plan"
MANIFEST_FILE = "manifest.json"
UNKNOWN = "unknown"  # a GPU that could not be identified: its engines are never reused
INSTALL_HINT = (
    "TensorRT is not installed: on Jetson it ships with JetPack (`sudo apt install nvidia-jetpack`; a virtual "
    "environment needs --system-site-packages to see it, or /usr/src/tensorrt/bin on the PATH for trtexec); on an "
    "x86 workstation with an NVIDIA GPU `pip install 'edgert[tensorrt]'`"
)


class EngineCacheError(EdgertError, RuntimeError):
    """A cached engine that may not be used (and the policy says refuse), or a cache that cannot be written."""


class OnMismatch(str, enum.Enum):
    """What to do when the cache holds an engine for this model built under another TensorRT or GPU."""

    REBUILD = "rebuild"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Platform:
    """The TensorRT and GPU an engine runs on (or was built on)."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" (Orin), "9.0" (H100)

    @property
    def known(self) -> bool:
        return UNKNOWN not in (self.trt_version, self.gpu_name, self.compute_capability)


@dataclass(frozen=True)
class Profile:
    """One optimization profile entry: the shape range of one input (min <= opt <= max, dimension by dimension)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)) or not self.min:
            raise ValueError(f"profile for '{self.name}': min, opt and max need the same, non-zero rank")
        if any(d <= 0 for d in self.min):
            raise ValueError(f"profile for '{self.name}': dimensions must be positive, got min {list(self.min)}")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise ValueError(
                f"profile for '{self.name}': need min <= opt <= max in every dimension, got "
                f"{list(self.min)} / {list(self.opt)} / {list(self.max)}"
            )

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. `digest` is the cache folder's name; `flags` are canonical strings
    (e.g. 'fp16', 'sparse_weights', 'workspace_mib=1024') written by the build plan."""

    onnx_sha256: str
    platform: Platform
    precision: str
    profiles: tuple[Profile, ...] = ()
    dla_core: int | None = None
    flags: tuple[str, ...] = ()

    def canonical(self) -> dict[str, Any]:
        out = asdict(self)
        out["profiles"] = sorted(
            ({"name": p.name, "min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for p in self.profiles),
            key=lambda p: str(p["name"]),
        )
        out["flags"] = sorted(set(self.flags))
        return out

    @property
    def digest(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> EngineKey:
        try:
            return cls(
                onnx_sha256=str(data["onnx_sha256"]),
                platform=Platform(**{f.name: str(data["platform"][f.name]) for f in fields(Platform)}),
                precision=str(data["precision"]),
                profiles=tuple(
                    Profile(str(p["name"]), tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
                    for p in data.get("profiles", [])
                ),
                dla_core=None if data.get("dla_core") is None else int(data["dla_core"]),
                flags=tuple(str(f) for f in data.get("flags", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineCacheError(f"{where}: not a valid engine key ({exc.__class__.__name__}: {exc})") from None


@dataclass(frozen=True)
class Mismatch:
    """One field in which a cached engine differs from what is wanted."""

    field: str
    cached: str
    wanted: str

    def __str__(self) -> str:
        return f"{self.field}: cached {self.cached}, here {self.wanted}"


def diff_keys(cached: EngineKey, wanted: EngineKey) -> list[Mismatch]:
    """The fields in which two keys differ, named for a person."""
    out: list[Mismatch] = []
    pairs = [
        ("ONNX sha256", cached.onnx_sha256[:16], wanted.onnx_sha256[:16]),
        ("TensorRT version", cached.platform.trt_version, wanted.platform.trt_version),
        ("GPU", cached.platform.gpu_name, wanted.platform.gpu_name),
        ("compute capability", cached.platform.compute_capability, wanted.platform.compute_capability),
        ("precision", cached.precision, wanted.precision),
        ("profiles", _profiles_text(cached.profiles), _profiles_text(wanted.profiles)),
        ("DLA core", str(cached.dla_core), str(wanted.dla_core)),
        ("builder flags", ",".join(sorted(set(cached.flags))), ",".join(sorted(set(wanted.flags)))),
    ]
    for name, a, b in pairs:
        if a != b:
            out.append(Mismatch(name, a or "-", b or "-"))
    return out


def _profiles_text(profiles: tuple[Profile, ...]) -> str:
    return ";".join(
        f"{p.name}:{'x'.join(map(str, p.min))}/{'x'.join(map(str, p.opt))}/{'x'.join(map(str, p.max))}"
        for p in sorted(profiles, key=lambda p: p.name)
    )


@dataclass(frozen=True)
class Manifest:
    """What sits beside each cached engine (`manifest.json`)."""

    key: EngineKey
    engine_sha256: str
    engine_bytes: int
    model_name: str = ""
    built_at: str = ""  # UTC, ISO 8601
    build_seconds: float = 0.0
    builder: str = ""  # "tensorrt-python" or "trtexec"
    tool: str = ""  # "edgert <version>"
    layer_precisions: dict[str, int] = field(default_factory=dict)  # precision -> layer count

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["key"] = self.key.canonical()
        return {"schema": MANIFEST_SCHEMA, "digest": self.key.digest, **out}

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EngineCacheError(f"{path}: cannot read the engine manifest ({exc})") from None
        if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
            raise EngineCacheError(f"{path}: not an edgert engine manifest (schema {MANIFEST_SCHEMA})")
        try:
            return cls(
                key=EngineKey.from_json(data["key"], str(path)),
                engine_sha256=str(data["engine_sha256"]),
                engine_bytes=int(data["engine_bytes"]),
                model_name=str(data.get("model_name", "")),
                built_at=str(data.get("built_at", "")),
                build_seconds=float(data.get("build_seconds", 0.0)),
                builder=str(data.get("builder", "")),
                tool=str(data.get("tool", "")),
                layer_precisions={str(k): int(v) for k, v in (data.get("layer_precisions") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineCacheError(f"{path}: incomplete engine manifest ({exc})") from None


class Decision(str, enum.Enum):
    HIT = "hit"  # an engine built for exactly this key, intact
    MISS = "miss"  # nothing cached for this model
    STALE = "stale"  # engines for this model exist, built under another TensorRT, GPU or options


@dataclass(frozen=True)
class Lookup:
    decision: Decision
    key: EngineKey
    engine: Path | None = None  # set on a hit
    manifest: Manifest | None = None
    reason: str = ""  # on a miss or a stale entry: what differed, for the log and for the error

    @property
    def hit(self) -> bool:
        return self.decision is Decision.HIT


def check_engine(engine: Path, manifest: Manifest, platform: Platform, blob: bytes | None = None) -> list[Mismatch]:
    """What stops a given engine (with its manifest) from running on `platform`: the TensorRT version, the GPU,
    the compute capability, or bytes that are not the ones the manifest describes. Empty when it may run.
    `blob`: the engine's bytes when the caller has already read them (the file is then not read again)."""
    out: list[Mismatch] = []
    built = manifest.key.platform
    if not built.known or not platform.known:
        out.append(Mismatch("platform", _platform_text(built), _platform_text(platform) + " (cannot compare)"))
    for name, a, b in (
        ("TensorRT version", built.trt_version, platform.trt_version),
        ("GPU", built.gpu_name, platform.gpu_name),
        ("compute capability", built.compute_capability, platform.compute_capability),
    ):
        if a != b:
            out.append(Mismatch(name, a, b))
    if blob is not None:
        size = len(blob)
    else:
        try:
            size = engine.stat().st_size
        except OSError:
            return [*out, Mismatch("engine file", manifest.engine_sha256[:16], "missing")]
    if size != manifest.engine_bytes:
        sha = "size differs"
    else:
        sha = hashlib.sha256(blob).hexdigest() if blob is not None else file_sha256(engine)
    if sha != manifest.engine_sha256:
        out.append(Mismatch("engine sha256", manifest.engine_sha256[:16], sha[:16]))
    return out


def _platform_text(p: Platform) -> str:
    return f"TensorRT {p.trt_version} on {p.gpu_name} (compute {p.compute_capability})"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:40] or "model"


def default_cache_dir() -> Path:
    """`$EDGERT_ENGINE_CACHE`, else `$XDG_CACHE_HOME/edgert/engines`, else `~/.cache/edgert/engines`."""
    if os.environ.get("EDGERT_ENGINE_CACHE"):
        return Path(os.environ["EDGERT_ENGINE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgert" / "engines"


class EngineCache:
    """A folder of engines, one sub-folder per key: `<model name>-<digest>/engine.plan` + `manifest.json`."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry_dir(self, key: EngineKey, model_name: str = "") -> Path:
        existing = sorted(self.root.glob(f"*-{key.digest}")) if self.root.is_dir() else []
        return existing[0] if existing else self.root / f"{_slug(model_name)}-{key.digest}"

    def entries(self) -> Iterator[tuple[Path, Manifest]]:
        """Every readable entry; unreadable manifests are skipped (a half-written entry from a crash)."""
        if not self.root.is_dir():
            return
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                yield folder, Manifest.read(folder / MANIFEST_FILE)
            except EngineCacheError:
                continue

    def lookup(self, key: EngineKey) -> Lookup:
        """A hit only for an intact engine built for exactly `key` on a known platform; otherwise say why not."""
        folder = self.entry_dir(key)
        engine, manifest_path = folder / ENGINE_FILE, folder / MANIFEST_FILE
        if manifest_path.is_file():
            try:
                manifest = Manifest.read(manifest_path)
            except EngineCacheError as exc:
                return Lookup(Decision.STALE, key, reason=str(exc))
            if manifest.key != key:  # a digest collision or a hand-edited manifest: never trust the folder name
                found = "; ".join(map(str, diff_keys(manifest.key, key))) or "key differs"
                return Lookup(Decision.STALE, key, manifest=manifest, reason=f"{manifest_path}: {found}")
            problems = check_engine(engine, manifest, key.platform)
            if problems:
                return Lookup(Decision.STALE, key, manifest=manifest, reason="; ".join(map(str, problems)))
            return Lookup(Decision.HIT, key, engine=engine, manifest=manifest)
        same_model = [m for _, m in self.entries() if m.key.onnx_sha256 == key.onnx_sha256]
        if not same_model:
            return Lookup(Decision.MISS, key, reason="no engine cached for this model")
        # The closest entry (fewest differing fields) names what changed: usually TensorRT or the GPU after an update.
        closest = min(same_model, key=lambda m: len(diff_keys(m.key, key)))
        differences = "; ".join(map(str, diff_keys(closest.key, key)))
        return Lookup(Decision.STALE, key, manifest=closest, reason=f"cached engine differs: {differences}")

    def store(
        self,
        key: EngineKey,
        engine_bytes: bytes,
        *,
        model_name: str = "",
        build_seconds: float = 0.0,
        builder: str = "",
        tool: str = "",
        layer_precisions: dict[str, int] | None = None,
        extra_files: dict[str, bytes] | None = None,
    ) -> tuple[Path, Manifest]:
        """Write an entry atomically (a temporary folder renamed into place); returns the engine path."""
        manifest = Manifest(
            key=key,
            engine_sha256=hashlib.sha256(engine_bytes).hexdigest(),
            engine_bytes=len(engine_bytes),
            model_name=model_name,
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            build_seconds=round(build_seconds, 3),
            builder=builder,
            tool=tool,
            layer_precisions=dict(layer_precisions or {}),
        )
        final = self.entry_dir(key, model_name)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            (tmp / ENGINE_FILE).write_bytes(engine_bytes)
            for name, blob in (extra_files or {}).items():
                (tmp / name).write_bytes(blob)
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except OSError as exc:
            raise EngineCacheError(f"cannot write the engine cache under {self.root}: {exc}") from None
        return final / ENGINE_FILE, manifest


def resolve(
    cache: EngineCache,
    key: EngineKey,
    on_mismatch: OnMismatch,
    build: Callable[[str], Path] | None,
    say: Callable[[str], None] = lambda line: None,
) -> Path:
    """The engine for `key`: from the cache, or built by `build(reason)` on a miss, or on a stale entry when the
    policy allows. `build` is None where building is off: a miss is then an error that says how to build."""
    found = cache.lookup(key)
    if found.hit:
        assert found.engine is not None
        say(f"engine cache hit: {found.engine}")
        return found.engine
    if found.decision is Decision.STALE and on_mismatch is OnMismatch.REFUSE:
        raise EngineCacheError(
            f"refusing the cached engine ({found.reason}); rebuild it with `edgert build`, or set the mismatch "
            "policy to rebuild"
        )
    if build is None:
        raise EngineCacheError(
            f"no usable engine in {cache.root} ({found.reason}) and building here is off; run `edgert build "
            "PACKAGE` on this device first"
        )
    say(f"building an engine: {found.reason}")
    return build(found.reason)
