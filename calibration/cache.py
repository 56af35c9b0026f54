"""TensorRT calibration caches (text format) and a JSON amax table, from the same per-tensor amax values.

Format: a header `TRT-<version code>-<algorithm>` (e.g. `TRT-8601-EntropyCalibration2`), then one line per tensor,
`<tensor name>: <hex>`. The hex is the big-endian IEEE-754 float32 bit pattern of the scale, and amax = 127 x
scale. The version code is major*1000 + minor*100 + patch before TensorRT 10 (8.6.1 -> 8601) and
major*10000 + minor*100 + patch from 10 on (10.3.0 -> 100300). TensorRT ignores a cache whose version differs
from its own, so the target version matters. Readers split each line on its last colon (tensor names may contain
colons) and accept hex without leading zeros.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from calibration.errors import EdgertError

ALGORITHM = "EntropyCalibration2"  # the header IInt8EntropyCalibrator2 reads back
INT8_MAX = 127.0
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


class CacheError(EdgertError, ValueError):
    pass


def version_code(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION for 'major.minor.patch' (the formula changed at TensorRT 10)."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*", version.strip())
    if not match:
        raise CacheError(f"TensorRT version '{version}' is not of the form major.minor[.patch]")
    major, minor, patch = int(match[1]), int(match[2]), int(match[3] or 0)
    if minor > 99 or patch > 99:
        raise CacheError(f"TensorRT version '{version}': minor and patch must be below 100")
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def _scale_hex(amax: float) -> str:
    if not (math.isfinite(amax) and amax > 0):
        raise CacheError(f"amax must be positive and finite, got {amax}")
    return struct.pack(">f", amax / INT8_MAX).hex()


@dataclass(frozen=True)
class CalibrationCache:
    version: int  # TensorRT version code from the header
    algorithm: str
    amax: Mapping[str, float]  # tensor name -> amax


def format_cache(amax: Mapping[str, float], trt_version: str = "10.3.0", algorithm: str = ALGORITHM) -> str:
    for name in amax:
        if not name or "\n" in name:
            raise CacheError(f"tensor name {name!r} cannot be written to a calibration cache")
    lines = [f"TRT-{version_code(trt_version)}-{algorithm}"]
    lines += [f"{name}: {_scale_hex(value)}" for name, value in amax.items()]
    return "\n".join(lines) + "\n"


def parse_cache(text: str) -> CalibrationCache:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise CacheError("calibration cache is empty")
    header = _HEADER.match(lines[0])
    if not header:
        raise CacheError(f"first line {lines[0][:60]!r} is not a TRT-<version>-<algorithm> header")
    amax: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, hex_value = line.rpartition(":")
        hex_value = hex_value.strip()
        if not sep or not name or not re.fullmatch(r"[0-9a-fA-F]{1,8}", hex_value):
            raise CacheError(f"line {number}: expected '<tensor>: <hex float32 scale>', got {line[:80]!r}")
        (scale,) = struct.unpack(">f", bytes.fromhex(hex_value.zfill(8)))
        amax[name] = scale * INT8_MAX
    return CalibrationCache(int(header[1]), header[2], amax)


def read_cache(path: str | Path) -> CalibrationCache:
    try:
        return parse_cache(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path}: cannot read calibration cache ({exc})") from None


def format_amax_json(amax: Mapping[str, float], method: str) -> str:
    """The same table for people and other tools: amax and scale (amax / 127) per tensor."""
    table = {name: {"amax": value, "scale": value / INT8_MAX} for name, value in amax.items()}
    return json.dumps({"method": method, "tensors": table}, indent=2) + "\n"
