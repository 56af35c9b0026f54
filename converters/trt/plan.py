"""What to build, from the package and the TensorRT version alone (pure: no TensorRT needed, tested anywhere):
`plan_build` gives a `BuildPlan` (which ONNX file, strongly or weakly typed, builder flags, profiles, DLA, sparse
weights); `BuildOptions` carries trtexec's meanings, `TrtVersion` the version rules (see converters/engine.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from calibration.cache import CacheError, read_cache, version_code
from converters.kinds import Builder as Builder  # defined with the other option enums, light to import
from converters.kinds import HardwareCompat as HardwareCompat  # defined with the other option enums, light to import
from converters.kinds import Int8Path as Int8Path  # defined with the other option enums, light to import
from converters.kinds import Sparse as Sparse  # defined with the other option enums, light to import
from converters.report import Precision
from edge_runtime.backends.engine_cache import (
    INSTALL_HINT,
    EngineKey,
    Platform,
    Profile,
)
from edge_runtime.core.archives import file_sha256
from edge_runtime.core.errors import EdgertError
from edge_runtime.core.package import CARD_FILE, ModelPackage, graph_precisions

Progress = Callable[[str], None]

CALIBRATION_CACHE = "calibration.cache"
PREPARED_FP32 = "prepared_fp32.onnx"


class BuildError(EdgertError, RuntimeError):
    """A build that cannot be planned or that TensorRT refused; the message names the option or the layer."""


class TensorRTMissing(BuildError):
    """Neither TensorRT's Python bindings nor trtexec are installed here."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        match = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
        if not match:
            raise BuildError(f"TensorRT version '{text}' is not of the form major.minor[.patch]")
        return cls(int(match[1]), int(match[2]), int(match[3] or 0))

    @classmethod
    def from_code(cls, code: int) -> TrtVersion:
        """The inverse of NV_TENSORRT_VERSION (8601 -> 8.6.1, 100300 -> 10.3.0; the formula changed at 10)."""
        if code >= 100000:
            return cls(code // 10000, code // 100 % 100, code % 100)
        return cls(code // 1000, code // 100 % 10, code % 100)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


MIN_VERSION = TrtVersion(8, 5)  # named tensors and execute_async_v3 arrived in 8.5 (JetPack 5.1 ships 8.5.2)


@dataclass(frozen=True)
class BuildOptions:
    """Options with trtexec's meanings; None leaves TensorRT's own default."""

    workspace_mib: int | None = None  # --memPoolSize=workspace:N
    opt_level: int | None = None  # --builderOptimizationLevel (0..5, TensorRT's default 3)
    shapes: tuple[Profile, ...] = ()  # --minShapes/--optShapes/--maxShapes; empty: from the card and the graph
    timing_cache: Path | None = None  # --timingCacheFile: read if present, written back after the build
    dla_core: int | None = None  # --useDLACore
    gpu_fallback: bool = True  # --allowGPUFallback (with the DLA)
    sparse: Sparse = Sparse.AUTO  # --sparsity=enable
    hardware_compat: HardwareCompat = HardwareCompat.NONE  # --hardwareCompatibilityLevel
    version_compatible: bool = False  # --versionCompatible
    int8_path: Int8Path = Int8Path.AUTO
    device: int = 0  # --device

    def __post_init__(self) -> None:
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise BuildError(f"workspace: {self.workspace_mib} MiB must be positive")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise BuildError(f"builder optimization level {self.opt_level} is outside 0..5")
        if self.dla_core is not None and self.dla_core < 0:
            raise BuildError(f"DLA core {self.dla_core} must be >= 0")
        if self.device < 0:
            raise BuildError(f"device {self.device} must be >= 0")
        names = [p.name for p in self.shapes]
        if len(set(names)) != len(names):
            raise BuildError(f"shapes: an input is named twice in {names}")


@dataclass(frozen=True)
class BuildPlan:
    """What a build will do, derived from the package, the options and the TensorRT version."""

    trt_version: TrtVersion
    onnx: Path
    onnx_sha256: str
    precision: Precision
    strongly_typed: bool
    builder_flags: tuple[str, ...]  # names of tensorrt.BuilderFlag members
    profiles: tuple[Profile, ...]  # only for inputs with dynamic dimensions
    calibration_cache: Path | None
    dla_core: int | None
    workspace_mib: int | None
    opt_level: int | None
    hardware_compat: HardwareCompat
    timing_cache: Path | None
    sparse_layers: tuple[str, ...]
    device: int
    model_name: str
    notes: tuple[str, ...] = ()

    @property
    def implicit_int8(self) -> bool:
        return self.calibration_cache is not None

    def key_flags(self) -> tuple[str, ...]:
        """The options an engine depends on, as canonical strings for its cache key."""
        flags = [f.lower() for f in self.builder_flags]
        flags.append("strongly_typed" if self.strongly_typed else "weakly_typed")
        if self.implicit_int8:
            flags.append("implicit_int8")
        if self.workspace_mib is not None:
            flags.append(f"workspace_mib={self.workspace_mib}")
        if self.opt_level is not None:
            flags.append(f"opt_level={self.opt_level}")
        if self.hardware_compat is not HardwareCompat.NONE:
            flags.append(f"hardware_compat={self.hardware_compat.value}")
        return tuple(sorted(flags))

    def key(self, platform: Platform) -> EngineKey:
        # The engine depends on the file TensorRT parsed (the FP32 graph on the implicit path) and on the cache.
        content = self.onnx_sha256
        if self.calibration_cache is not None:
            content = f"{content}+{file_sha256(self.calibration_cache)[:16]}"
        return EngineKey(content, platform, self.precision.value, self.profiles, self.dla_core, self.key_flags())


def parse_shapes(spec: str) -> dict[str, tuple[int, ...]]:
    """trtexec's shape syntax: `input0:1x3x256x256,input1:1x3x128x128` (names may be quoted 'a:b')."""
    out: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, dims = item.rpartition(":")
        name = name.strip().strip("'")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims.strip()):
            raise BuildError(f"shapes: '{item}' is not NAME:DxDxD (e.g. image:1x1x192x256)")
        out[name] = tuple(int(d) for d in dims.strip().split("x"))
    if not out:
        raise BuildError("shapes: empty specification")
    return out


def shape_profiles(
    opt: Mapping[str, tuple[int, ...]],
    min_: Mapping[str, tuple[int, ...]] | None = None,
    max_: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[Profile, ...]:
    """Profiles from trtexec-style --shapes (opt; min and max default to it, as trtexec does)."""
    min_, max_ = min_ or {}, max_ or {}
    unknown = (set(min_) | set(max_)) - set(opt)
    if unknown:
        raise BuildError(f"shapes: min/max given for {sorted(unknown)} without an opt shape")
    try:
        return tuple(Profile(n, tuple(min_.get(n, s)), tuple(s), tuple(max_.get(n, s))) for n, s in opt.items())
    except ValueError as exc:
        raise BuildError(f"shapes: {exc}") from None


@dataclass(frozen=True)
class _GraphFacts:
    qdq: bool
    fp16: bool
    inputs: dict[str, list[int | None]]  # None for a dynamic dimension


def _graph_facts(path: Path) -> _GraphFacts:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for a broken file
        raise BuildError(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from None
    fp16, qdq = graph_precisions(model)
    init = {i.name for i in model.graph.initializer}
    inputs: dict[str, list[int | None]] = {}
    for value in model.graph.input:
        if value.name in init:
            continue
        dims = value.type.tensor_type.shape.dim
        inputs[value.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    return _GraphFacts(qdq, fp16, inputs)


def _conversion_note(package: ModelPackage) -> dict[str, Any]:
    try:
        data = json.loads((package.root / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    note = data.get("conversion") if isinstance(data, dict) else None
    return note if isinstance(note, dict) else {}


def _profiles(
    facts: _GraphFacts, card_shape: tuple[int, ...], card_input: str, wanted: tuple[Profile, ...]
) -> tuple[Profile, ...]:
    given = {p.name: p for p in wanted}
    unknown = set(given) - set(facts.inputs)
    if unknown:
        raise BuildError(f"shapes: {sorted(unknown)} not an input of the graph; inputs are {sorted(facts.inputs)}")
    out: list[Profile] = []
    for name, dims in facts.inputs.items():
        profile = given.get(name)
        if profile is None:
            if all(d is not None for d in dims):
                continue  # a static input needs no profile
            if name == card_input and len(card_shape) == len(dims):
                out.append(Profile(name, card_shape, card_shape, card_shape))  # the card's shape is the one served
                continue
            raise BuildError(f"input '{name}' has dynamic dimensions {dims}: give its shapes (--shapes {name}:...)")
        for label, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
            if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                raise BuildError(f"shapes: {label} shape {list(shape)} for '{name}' does not fit the graph's {dims}")
        if all(d is not None for d in dims):
            continue  # a static input given its own static shape: nothing to add
        out.append(profile)
    return tuple(out)


def plan_build(
    package: ModelPackage, options: BuildOptions, trt_version: TrtVersion | str, say: Progress = lambda line: None
) -> BuildPlan:
    """Decide how to build `package` with TensorRT `trt_version`; raises BuildError naming what cannot be done."""
    version = trt_version if isinstance(trt_version, TrtVersion) else TrtVersion.parse(trt_version)
    if version < MIN_VERSION:
        raise BuildError(f"TensorRT {version} is too old: edgert needs {MIN_VERSION} or newer (named tensor API)")
    notes: list[str] = []
    facts = _graph_facts(package.onnx_path)
    note = _conversion_note(package)
    precision = Precision(note["precision"]) if note.get("precision") in {p.value for p in Precision} else None
    if precision is None:
        precision = Precision.INT8 if facts.qdq else Precision.FP16 if facts.fp16 else Precision.FP32
    fallback_fp16 = note.get("fallback") == "fp16"
    if precision is Precision.INT8 and note.get("target") == "onnxruntime":
        notes.append(
            "the package's INT8 graph was placed for ONNX Runtime's CPU kernels; convert with --target tensorrt "
            "for the Q/DQ placement TensorRT fuses best"
        )
    if options.opt_level is not None and version < TrtVersion(8, 6):
        raise BuildError(f"--opt-level needs TensorRT 8.6 or newer (running {version})")
    if options.hardware_compat is HardwareCompat.AMPERE_PLUS and version < TrtVersion(8, 6):
        raise BuildError(f"hardware compatibility needs TensorRT 8.6 or newer (running {version})")
    if options.hardware_compat is HardwareCompat.SAME_COMPUTE_CAPABILITY and version.major < 10:
        raise BuildError(f"same-compute-capability compatibility needs TensorRT 10 (running {version})")
    if options.version_compatible and version < TrtVersion(8, 6):
        raise BuildError(f"version-compatible engines need TensorRT 8.6 or newer (running {version})")
    if options.dla_core is not None and options.hardware_compat is not HardwareCompat.NONE:
        raise BuildError("hardware compatibility levels are for GPUs, not the DLA: drop one of the two")

    # Which graph, and implicit or explicit INT8.
    implicit = False
    if precision is Precision.INT8:
        wants = options.int8_path
        if wants is Int8Path.IMPLICIT or (wants is Int8Path.AUTO and options.dla_core is not None):
            if version.major >= 11:
                # TensorRT 11 removed IBuilderConfig.int8_calibrator and trtexec --int8/--calib.
                if wants is Int8Path.IMPLICIT:
                    raise BuildError(
                        f"TensorRT {version} has no implicit INT8 (calibrators were removed in 11): build the "
                        "package's Q/DQ graph (--int8-path explicit)"
                    )
                notes.append("TensorRT 11 has no implicit INT8: the DLA gets the Q/DQ graph")
            else:
                implicit = True
        elif wants is Int8Path.AUTO and not facts.qdq:
            raise BuildError(f"{package.onnx_path}: the card says INT8 but the graph has no Q/DQ pairs")
    calibration: Path | None = None
    onnx_path = package.onnx_path
    if implicit:
        calibration, prepared = package.root / CALIBRATION_CACHE, package.root / PREPARED_FP32
        for required in (calibration, prepared):
            if not required.is_file():
                raise BuildError(
                    f"{package.root}: implicit INT8 needs {required.name} (written by `edgert convert --precision "
                    "int8`); the package has none"
                )
        try:
            cache = read_cache(calibration)
        except CacheError as exc:
            raise BuildError(f"{calibration}: {exc}") from None
        want = version_code(str(version))
        if cache.version != want:
            # TensorRT silently ignores a cache from another version and tries to recalibrate, with no data.
            raise BuildError(
                f"{calibration} is for TensorRT {TrtVersion.from_code(cache.version)} (code {cache.version}), this "
                f"is {version} (code {want}), and TensorRT ignores a cache from another version: convert again "
                f"with `edgert convert --precision int8 --trt-version {version}`"
            )
        onnx_path = prepared
        notes.append("implicit INT8: the FP32 graph with the package's calibration cache")

    if options.dla_core is not None and precision is Precision.FP32:
        raise BuildError("the DLA runs FP16 or INT8 layers only: convert the package with --precision fp16 or int8")

    # Typing and builder flags.
    flags: list[str] = []
    strongly_typed = False
    if version.major >= 11:
        strongly_typed = True  # always on in 11; the weak typing flags no longer exist
    elif version.major == 10 and not implicit and options.dla_core is None:
        strongly_typed = True  # NetworkDefinitionCreationFlag.STRONGLY_TYPED: the graph's own types, as gated
    else:
        if precision is Precision.FP16 or (precision is Precision.INT8 and (fallback_fp16 or implicit)):
            flags.append("FP16")
        if precision is Precision.INT8:
            flags.append("INT8")  # explicit Q/DQ graphs and calibration caches both need it before 11
        if precision is Precision.FP16 and version.major < 10:
            notes.append(
                f"TensorRT {version} has no strongly typed networks: with FP16 on, the builder may also run in "
                "FP16 the layers the converter kept in FP32; check the engine's outputs against the package"
            )
    if options.dla_core is not None:
        if options.gpu_fallback:
            flags.append("GPU_FALLBACK")
        else:
            notes.append("no GPU fallback: the build fails if a layer cannot run on the DLA")
    sparse_layers = tuple(str(s) for s in (note.get("sparse_2_4") or {}).get("layers", []))
    if options.sparse is Sparse.ON or (options.sparse is Sparse.AUTO and sparse_layers):
        flags.append("SPARSE_WEIGHTS")
        if options.sparse is Sparse.ON and not sparse_layers:
            notes.append("sparse weights on, but the card lists no 2:4 layers: TensorRT uses sparse kernels only "
                         "where the weights already have the pattern")  # fmt: skip
    if options.version_compatible:
        flags.append("VERSION_COMPATIBLE")

    profiles = _profiles(facts, tuple(package.card.preprocess.input_shape), package.card.input_name, options.shapes)
    plan = BuildPlan(
        trt_version=version,
        onnx=onnx_path,
        onnx_sha256=package.sha256 if onnx_path == package.onnx_path else file_sha256(onnx_path),
        precision=precision,
        strongly_typed=strongly_typed,
        builder_flags=tuple(flags),
        profiles=profiles,
        calibration_cache=calibration,
        dla_core=options.dla_core,
        workspace_mib=options.workspace_mib,
        opt_level=options.opt_level,
        hardware_compat=options.hardware_compat,
        timing_cache=options.timing_cache,
        sparse_layers=sparse_layers,
        device=options.device,
        model_name=package.card.name,
        notes=tuple(notes),
    )
    for line in plan.notes:
        say(f"note: {line}")
    return plan
