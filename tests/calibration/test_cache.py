from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from calibration.cache import (
    CacheError,
    format_amax_json,
    format_cache,
    parse_cache,
    read_cache,
    version_code,
)


@pytest.mark.parametrize(
    "version, code", [("8.6.1", 8601), ("8.5.2", 8502), ("10.3.0", 100300), ("10.13.2", 101302), ("11.0", 110000)]
)
def test_version_codes_follow_both_formulas(version: str, code: int) -> None:
    assert version_code(version) == code


def test_known_line_from_the_field_notes() -> None:
    cache = parse_cache("TRT-8601-EntropyCalibration2\ninput: 3c008912\n")
    assert cache.version == 8601 and cache.algorithm == "EntropyCalibration2"
    assert cache.amax["input"] == pytest.approx(0.99634, abs=1e-4)  # scale 0.0078452 x 127


def test_round_trip_keeps_float32_scales_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    amax = {f"t{i}": float(v) for i, v in enumerate(rng.uniform(1e-3, 1e3, 50))}
    amax["blocks.0/conv:0"] = 2.5  # names may contain colons and slashes
    path = tmp_path / "calibration.cache"
    path.write_text(format_cache(amax, "8.6.1"))
    text = path.read_text()
    assert text.startswith("TRT-8601-EntropyCalibration2\n")
    back = read_cache(path)
    assert list(back.amax) == list(amax)
    for name, value in amax.items():
        expected = float(np.float32(value / 127.0)) * 127.0  # the cache holds a float32 scale
        assert back.amax[name] == pytest.approx(expected, rel=1e-7)


def test_short_hex_without_leading_zeros_is_accepted() -> None:
    tiny_scale = struct.unpack(">f", bytes.fromhex("00800000"))[0]
    cache = parse_cache("TRT-100300-EntropyCalibration2\nx: 800000\n")
    assert cache.amax["x"] == pytest.approx(tiny_scale * 127)


def test_hex_is_big_endian_float32_of_the_scale() -> None:
    line = format_cache({"a": 127.0}, "10.3.0").splitlines()[1]
    assert line == "a: 3f800000"  # scale 1.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("TRT-xx-Entropy\n", "header"),
        ("TRT-8601-EntropyCalibration2\nno separator here\n", "line 2"),
        ("TRT-8601-EntropyCalibration2\nx: zzzz\n", "line 2"),
        ("TRT-8601-EntropyCalibration2\nx: 123456789\n", "line 2"),
    ],
)
def test_malformed_caches(text: str, message: str) -> None:
    with pytest.raises(CacheError, match=message):
        parse_cache(text)


def test_bad_values_and_versions() -> None:
    with pytest.raises(CacheError, match="positive and finite"):
        format_cache({"x": 0.0})
    with pytest.raises(CacheError, match="major.minor"):
        version_code("ten")


def test_json_table(tmp_path: Path) -> None:
    import json

    (tmp_path / "amax.json").write_text(format_amax_json({"x": 12.7}, "entropy"))
    data = json.loads((tmp_path / "amax.json").read_text())
    assert data["method"] == "entropy" and data["tensors"]["x"]["scale"] == pytest.approx(0.1)
