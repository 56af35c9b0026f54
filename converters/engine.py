"""`edgert build`: a model package to a TensorRT engine on the device that will run it.

Stages, each usable on its own:

1. `plan_build(package, options, trt_version)`: a `BuildPlan` from the package alone (its card, its graph and
   its calibration cache) and the TensorRT version: which ONNX file, strongly or weakly typed, which builder
   flags, profiles, DLA, sparse weights. Pure, no TensorRT: tested anywhere.
2. `trtexec_command(plan, ...)`: the equivalent `trtexec` command line, for a person to check a build, and the
   build itself where only `trtexec` is installed.
3. `build_engine(...)`: the build, through TensorRT's Python API or `trtexec`, stored in the content-keyed
   `EngineCache` with a manifest and a per-layer precision report.

How the TensorRT versions differ, and what the plan does about it (APIs looked up in NVIDIA's documentation for
each version, cited where the code diverges):

- 8.5 / 8.6 (JetPack 5): networks need the EXPLICIT_BATCH creation flag; no strongly typed networks, so an FP16
  graph is built with BuilderFlag.FP16 and a Q/DQ graph with BuilderFlag.INT8 (plus FP16 when the converter's
  fallback was FP16). `builder_optimization_level`, `hardware_compatibility_level` and VERSION_COMPATIBLE are
  8.6 additions. The DLA wants implicit INT8: the calibration cache on the FP32 graph.
- 10.x (JetPack 6): EXPLICIT_BATCH is deprecated and ignored; the STRONGLY_TYPED creation flag makes TensorRT
  follow the graph's own types, which is exactly what the accuracy gate measured, so typed graphs are built
  strongly typed. Calibrators are deprecated (10.1) but still work, and the DLA still takes implicit INT8.
- 11.x (JetPack 7.2.2+): strong typing is always on and the weak typing APIs are gone (BuilderFlag.FP16/INT8,
  IBuilderConfig.int8_calibrator, trtexec --fp16/--int8/--calib); precision comes from the ONNX only.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from calibration.cache import CacheError, read_cache, version_code
from converters.kinds import Builder as Builder  # defined with the other option enums, light to import
from converters.kinds import HardwareCompat as HardwareCompat  # defined with the other option enums, light to import
from converters.kinds import Int8Path as Int8Path  # defined with the other option enums, light to import
from converters.kinds import Sparse as Sparse  # defined with the other option enums, light to import
from converters.report import Precision
from edge_runtime import __version__
from edge_runtime.backends.engine_cache import (
    INSTALL_HINT,
    EngineCache,
    EngineKey,
    OnMismatch,
    Platform,
    Profile,
    resolve,
)
from edge_runtime.core.archives import file_sha256
from edge_runtime.core.errors import EdgertError
from edge_runtime.core.package import CARD_FILE, ModelPackage, graph_precisions

Progress = Callable[[str], None]

CALIBRATION_CACHE = "calibration.cache"
PREPARED_FP32 = "prepared_fp32.onnx"
TRTEXEC_JETPACK = Path("/usr/src/tensorrt/bin/trtexec")  # where JetPack installs trtexec (not on the PATH)


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


# -- the plan ------------------------------------------------------------------------------------------------------
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


# -- trtexec -------------------------------------------------------------------------------------------------------
def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(
    plan: BuildPlan, engine: Path, layer_info: Path | None = None, trtexec: str = "trtexec"
) -> list[str]:
    """The trtexec command line that builds the same engine (flags as of the plan's TensorRT version)."""
    v = plan.trt_version
    cmd = [trtexec, f"--onnx={plan.onnx}", f"--saveEngine={engine}"]
    cmd.append("--skipInference" if v >= TrtVersion(8, 6) else "--buildOnly")  # --buildOnly was renamed in 8.6
    if plan.device:
        cmd.append(f"--device={plan.device}")
    if plan.strongly_typed and v.major == 10:
        cmd.append("--stronglyTyped")  # 11: always strongly typed, the flag is no longer needed
    flag_to_option = {
        "FP16": "--fp16",
        "INT8": "--int8",
        "SPARSE_WEIGHTS": "--sparsity=enable",
        "GPU_FALLBACK": "--allowGPUFallback",
        "VERSION_COMPATIBLE": "--versionCompatible",
    }
    cmd += [flag_to_option[f] for f in plan.builder_flags]
    if plan.calibration_cache is not None:
        cmd.append(f"--calib={plan.calibration_cache}")
    if plan.dla_core is not None:
        cmd.append(f"--useDLACore={plan.dla_core}")
    if plan.workspace_mib is not None:
        cmd.append(f"--memPoolSize=workspace:{plan.workspace_mib}")  # MiB; --workspace was removed in 10
    if plan.opt_level is not None:
        cmd.append(f"--builderOptimizationLevel={plan.opt_level}")
    if plan.hardware_compat is HardwareCompat.AMPERE_PLUS:
        cmd.append("--hardwareCompatibilityLevel=ampere+")
    elif plan.hardware_compat is HardwareCompat.SAME_COMPUTE_CAPABILITY:
        cmd.append("--hardwareCompatibilityLevel=sameComputeCapability")
    if plan.profiles:
        for label in ("min", "opt", "max"):
            spec = ",".join(f"{p.name}:{_dims(getattr(p, label))}" for p in plan.profiles)
            cmd.append(f"--{label}Shapes={spec}")
    if plan.timing_cache is not None:
        cmd.append(f"--timingCacheFile={plan.timing_cache}")
    cmd.append("--profilingVerbosity=detailed")
    if layer_info is not None:
        cmd.append(f"--exportLayerInfo={layer_info}")
    return cmd


def find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    if found:
        return found
    return str(TRTEXEC_JETPACK) if TRTEXEC_JETPACK.is_file() else None


def trtexec_version(banner: str) -> TrtVersion:
    """The version from trtexec's banner: `&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec ...`."""
    match = re.search(r"\[TensorRT v(\d+)\]", banner)
    if not match:
        raise BuildError("cannot tell the TensorRT version from trtexec's output (no '[TensorRT vNNNN]' banner)")
    return TrtVersion.from_code(int(match[1]))


def installed_version() -> tuple[TrtVersion, Builder] | None:
    """The TensorRT here and how to drive it: the Python bindings first, else trtexec; None when neither."""
    try:
        import tensorrt as trt  # lazily: optional, and heavy
    except ImportError:
        pass
    else:
        return TrtVersion.parse(trt.__version__), Builder.PYTHON
    exe = find_trtexec()
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{exe} does not run: {exc}") from None
    return trtexec_version(done.stdout + done.stderr), Builder.TRTEXEC


# -- the layer precision report ------------------------------------------------------------------------------------
_TYPE_WORDS = (
    ("int8", "int8"),
    ("fp8", "fp8"),
    ("half", "fp16"),
    ("fp16", "fp16"),
    ("bf16", "bf16"),
    ("int32", "int32"),
    ("int64", "int64"),
    ("bool", "bool"),
    ("float", "fp32"),
    ("fp32", "fp32"),
)


def _type_of(io: Mapping[str, Any]) -> str:
    """A tensor's precision in IEngineInspector JSON: 'DataType' (TensorRT 11) or 'Format/DataType' (8.x, 10.x,
    e.g. 'Row major linear FP16 format')."""
    text = str(io.get("DataType") or io.get("Format/DataType") or "").lower()
    for word, name in _TYPE_WORDS:
        if word in text:
            return name
    return "unknown"


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    precision: str  # of the layer's first output


@dataclass(frozen=True)
class LayerReport:
    layers: tuple[LayerInfo, ...]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(layer.precision for layer in self.layers).most_common())

    def summary(self) -> str:
        return ", ".join(f"{n} {p.upper()}" for p, n in self.counts.items()) or "no layer information"


def parse_layer_info(text: str) -> LayerReport:
    """Layers and their precisions from `get_engine_information(LayerInformationFormat.JSON)` or trtexec's
    --exportLayerInfo (both need profiling verbosity DETAILED; with less, layers are bare names)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BuildError(f"layer information is not JSON ({exc})") from None
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    out: list[LayerInfo] = []
    for layer in layers:
        if isinstance(layer, str):  # verbosity below DETAILED: names only
            out.append(LayerInfo(layer, "unknown", "unknown"))
            continue
        outputs = layer.get("Outputs") or []
        precision = _type_of(outputs[0]) if outputs else "unknown"
        out.append(LayerInfo(str(layer.get("Name", "")), str(layer.get("LayerType", "unknown")), precision))
    return LayerReport(tuple(out))


# -- building ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildResult:
    engine: Path
    plan: BuildPlan
    platform: Platform
    cached: bool  # taken from the cache, not built
    seconds: float = 0.0
    builder: Builder = Builder.PYTHON
    layers: LayerReport = field(default_factory=lambda: LayerReport(()))


def probe_platform(trt_version: TrtVersion, device: int = 0) -> Platform:
    """The GPU here (name, compute capability) through pycuda, else nvidia-smi; 'unknown' parts when neither
    answers (Jetson has no full nvidia-smi), and engines for an unknown GPU are never taken from the cache."""
    name, cc = "unknown", "unknown"
    try:
        import pycuda.driver as cuda  # lazily: optional

        cuda.init()
        dev = cuda.Device(device)
        name, cc = dev.name(), "{}.{}".format(*dev.compute_capability())
    except Exception:  # ImportError, or a driver that cannot be reached: try the next source
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                done = subprocess.run(
                    [smi, f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=20, check=False,
                )  # fmt: skip
                parts = [p.strip() for p in done.stdout.strip().split(",")]
                if done.returncode == 0 and len(parts) == 2 and all(parts):
                    name, cc = parts
            except (OSError, subprocess.TimeoutExpired):
                pass
    return Platform(str(trt_version), name, cc)


class _Heartbeat:
    """Says 'still building' every `every_s` while a build runs, so a many-minute Jetson build is never silent."""

    def __init__(self, say: Progress, every_s: float = 15.0) -> None:
        self._say, self._every = say, every_s
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="edgert-build-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._say(f"still building ({time.monotonic() - self._start:.0f} s)")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _build_python(plan: BuildPlan, say: Progress) -> tuple[bytes, str]:
    """Build with TensorRT's Python API; returns the serialized engine and the layer information JSON."""
    import tensorrt as trt  # lazily: optional

    version = plan.trt_version

    class Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
                say(f"TensorRT error: {msg}")
            elif severity == trt.ILogger.Severity.WARNING:
                say(f"TensorRT warning: {msg}")

    logger = Logger()
    builder = trt.Builder(logger)
    creation = 0
    if version.major < 10:
        creation |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # 8.x; deprecated and ignored in 10
    if plan.strongly_typed and version.major == 10:
        creation |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # 10.x; always on in 11
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {plan.onnx.name}")
    if not parser.parse_from_file(str(plan.onnx)):  # resolves external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser refused {plan.onnx}: {errors}")
    config = builder.create_builder_config()
    if plan.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)  # 8.4+
    if plan.opt_level is not None:
        config.builder_optimization_level = plan.opt_level  # 8.6+
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))  # FP16/INT8 exist up to 10.x only: the plan never asks 11
    if plan.hardware_compat is HardwareCompat.AMPERE_PLUS:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS  # 8.6+
    elif plan.hardware_compat is HardwareCompat.SAME_COMPUTE_CAPABILITY:
        level = getattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY", None)
        if level is None:
            raise BuildError(f"TensorRT {version} has no SAME_COMPUTE_CAPABILITY compatibility level")
        config.hardware_compatibility_level = level
    if plan.dla_core is not None:
        if builder.num_DLA_cores <= plan.dla_core:
            raise BuildError(f"DLA core {plan.dla_core} requested; this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    if plan.profiles:
        profile = builder.create_optimization_profile()
        for p in plan.profiles:
            profile.set_shape(p.name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    if plan.calibration_cache is not None:
        # Implicit INT8 (8.x / 10.x): IInt8EntropyCalibrator2 whose cache answers every question; deprecated in 10.1,
        # removed in 11 with IBuilderConfig.int8_calibrator.
        blob = plan.calibration_cache.read_bytes()

        class CacheCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)

            def get_batch_size(self) -> int:
                return 1

            def get_batch(self, names: list[str]) -> None:
                return None  # no data: TensorRT must take every scale from the cache

            def read_calibration_cache(self) -> bytes:
                return blob

            def write_calibration_cache(self, cache: bytes) -> None:
                return None

        config.int8_calibrator = CacheCalibrator()
    timing = None
    if plan.timing_cache is not None:
        data = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
        timing = config.create_timing_cache(data)
        config.set_timing_cache(timing, ignore_mismatch=False)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # for the layer report
    monitor_type = getattr(trt, "IProgressMonitor", None)  # 10.0+: the builder reports its phases
    if monitor_type is not None:

        class Monitor(monitor_type):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                monitor_type.__init__(self)  # type: ignore[misc]

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                if parent_phase is None:
                    say(f"builder: {phase_name} ({num_steps} steps)")

            def step_complete(self, phase_name: str, step: int) -> bool:
                return True  # never cancel

            def phase_finish(self, phase_name: str) -> None:
                return None

        config.progress_monitor = Monitor()
    say(f"building with TensorRT {version} ({', '.join(plan.key_flags())})")
    with _Heartbeat(say):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT could not build {plan.onnx}: {'; '.join(logger.errors[-3:]) or 'no reason given'}")
    blob_out = bytes(serialized)
    if timing is not None and plan.timing_cache is not None:
        _write_atomic(plan.timing_cache, bytes(config.get_timing_cache().serialize()))
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(blob_out)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return blob_out, str(info)


def _build_trtexec(plan: BuildPlan, exe: str, say: Progress) -> tuple[bytes, str]:
    with tempfile.TemporaryDirectory(prefix="edgert-build-") as tmp:
        engine, layers = Path(tmp) / "engine.plan", Path(tmp) / "layers.json"
        cmd = trtexec_command(plan, engine, layers, trtexec=exe)
        say("building with " + " ".join(cmd))
        tail: list[str] = []
        with _Heartbeat(say):
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                tail = [*tail[-19:], line.rstrip()]
                if "[E]" in line or "[W]" in line:
                    say(f"trtexec: {line.strip()}")
            proc.wait()
        if proc.returncode != 0 or not engine.is_file():
            raise BuildError(f"trtexec failed (exit {proc.returncode}): " + " | ".join(tail[-5:]))
        return engine.read_bytes(), layers.read_text() if layers.is_file() else "{}"


def _write_atomic(path: Path, blob: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)


def build_engine(
    package: ModelPackage,
    options: BuildOptions = BuildOptions(),
    *,
    cache: EngineCache | None = None,
    on_mismatch: OnMismatch = OnMismatch.REBUILD,
    rebuild: bool = False,
    allow_build: bool = True,
    builder: Builder = Builder.AUTO,
    say: Progress = lambda line: None,
) -> BuildResult:
    """The engine for `package` on this device: from the content-keyed cache, or built (and cached). With
    `allow_build` off (a daemon told not to build on start), anything but a cache hit is an EngineCacheError."""
    found = installed_version()
    if found is None:
        raise TensorRTMissing()
    version, available = found
    if builder is Builder.PYTHON and available is not Builder.PYTHON:
        raise BuildError("TensorRT's Python bindings are not importable here (trtexec is): drop --builder")
    if builder is Builder.TRTEXEC or available is Builder.TRTEXEC:
        exe = find_trtexec()
        if exe is None:
            raise BuildError("trtexec is not on the PATH nor in /usr/src/tensorrt/bin")
        chosen = Builder.TRTEXEC
    else:
        exe, chosen = None, Builder.PYTHON
    plan = plan_build(package, options, version, say)
    platform = probe_platform(version, options.device)
    if not platform.known:
        say("note: cannot identify the GPU (no pycuda, no nvidia-smi): the engine is built, never reused from cache")
    cache = cache or EngineCache()
    key = plan.key(platform)
    timings: dict[str, Any] = {}

    def build(reason: str) -> Path:
        start = time.perf_counter()
        blob, info = _build_python(plan, say) if exe is None else _build_trtexec(plan, exe, say)
        seconds = time.perf_counter() - start
        report = parse_layer_info(info)
        path, _ = cache.store(
            key if platform.known else replace(key, flags=(*key.flags, f"unique={time.time_ns()}")),
            blob,
            model_name=plan.model_name,
            build_seconds=seconds,
            builder=chosen.value,
            tool=f"edgert {__version__}",
            layer_precisions=report.counts,
            extra_files={"layers.json": info.encode()},
        )
        timings.update(seconds=seconds, layers=report)
        say(f"built in {seconds:.1f} s: {path} ({path.stat().st_size / 1e6:.1f} MB); layers: {report.summary()}")
        return path

    if not allow_build and (rebuild or not platform.known):
        raise BuildError("building is off, and an engine for an unidentified GPU is never taken from the cache")
    if rebuild or not platform.known:
        engine = build("rebuild requested" if rebuild else "unknown GPU")
    else:
        engine = resolve(cache, key, on_mismatch, build if allow_build else None, say)
    layers = timings.get("layers")
    if layers is None:  # a cache hit: the report was stored beside the engine
        info_path = engine.parent / "layers.json"
        layers = parse_layer_info(info_path.read_text()) if info_path.is_file() else LayerReport(())
    return BuildResult(engine, plan, platform, "seconds" not in timings, timings.get("seconds", 0.0), chosen, layers)


def daemon_engine_source(
    options: BuildOptions, cache_dir: Path | None, build_on_start: bool, on_mismatch: OnMismatch
) -> Callable[[ModelPackage, Progress], Path]:
    """What `edgert serve --backend tensorrt` gives the daemon: package -> engine, from the cache or built before
    the daemon reports ready (or an error, when building on start is off)."""

    def source(package: ModelPackage, say: Progress) -> Path:
        cache = EngineCache(cache_dir) if cache_dir is not None else None
        found = build_engine(
            package, options, cache=cache, on_mismatch=on_mismatch, allow_build=build_on_start, say=say
        )
        return found.engine

    return source
