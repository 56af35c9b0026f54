"""The build as a `trtexec` command line (for a person to check, or to build where only trtexec is installed),
and which TensorRT is installed here and how to drive it."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from converters.kinds import Builder as Builder  # defined with the other option enums, light to import
from converters.kinds import HardwareCompat as HardwareCompat  # defined with the other option enums, light to import
from converters.kinds import Int8Path as Int8Path  # defined with the other option enums, light to import
from converters.kinds import Sparse as Sparse  # defined with the other option enums, light to import
from converters.trt.plan import BuildError, BuildPlan, TrtVersion
from edge_runtime.backends.trt_api import bindings_version

TRTEXEC_JETPACK = Path("/usr/src/tensorrt/bin/trtexec")  # where JetPack installs trtexec (not on the PATH)


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
    version = bindings_version()  # lazily: optional, and heavy
    if version is not None:
        return TrtVersion.parse(version), Builder.PYTHON
    exe = find_trtexec()
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{exe} does not run: {exc}") from None
    return trtexec_version(done.stdout + done.stderr), Builder.TRTEXEC
