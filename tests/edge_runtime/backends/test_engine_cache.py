"""The content-keyed engine cache: keys, manifests, and the decision to use, rebuild or refuse a cached engine."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edge_runtime.backends.engine_cache import (
    ENGINE_FILE,
    MANIFEST_FILE,
    Decision,
    EngineCache,
    EngineCacheError,
    EngineKey,
    Manifest,
    OnMismatch,
    Platform,
    Profile,
    check_engine,
    diff_keys,
    resolve,
)

ORIN = Platform("10.3.0", "Orin", "8.7")
KEY = EngineKey(
    onnx_sha256="a" * 64,
    platform=ORIN,
    precision="fp16",
    profiles=(Profile("image", (1, 1, 192, 256), (1, 1, 192, 256), (1, 1, 192, 256)),),
    dla_core=None,
    flags=("strongly_typed", "workspace_mib=1024"),
)


def test_every_field_of_the_key_changes_the_digest() -> None:
    variants = [
        dataclasses.replace(KEY, onnx_sha256="b" * 64),
        dataclasses.replace(KEY, platform=dataclasses.replace(ORIN, trt_version="10.7.0")),
        dataclasses.replace(KEY, platform=dataclasses.replace(ORIN, gpu_name="Orin Nano")),
        dataclasses.replace(KEY, platform=dataclasses.replace(ORIN, compute_capability="8.6")),
        dataclasses.replace(KEY, precision="int8"),
        dataclasses.replace(KEY, profiles=(Profile("image", (1, 1, 96, 128), (1, 1, 192, 256), (1, 1, 192, 256)),)),
        dataclasses.replace(KEY, dla_core=0),
        dataclasses.replace(KEY, flags=("strongly_typed", "workspace_mib=2048")),
    ]
    digests = {KEY.digest, *(v.digest for v in variants)}
    assert len(digests) == len(variants) + 1


def test_the_digest_is_stable_and_ignores_flag_order() -> None:
    same = dataclasses.replace(KEY, flags=("workspace_mib=1024", "strongly_typed", "strongly_typed"))
    assert same.digest == KEY.digest
    assert EngineKey.from_json(json.loads(json.dumps(KEY.canonical())), "test") == KEY


def test_two_models_of_the_same_structure_never_share_an_engine(tmp_path: Path) -> None:
    """ONNX Runtime's TensorRT provider once gave same-structure models one engine (onnxruntime issue 6455)."""
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"engine of model A", model_name="demo")
    other = dataclasses.replace(KEY, onnx_sha256="c" * 64)  # same card name, shapes and options; other weights
    assert cache.lookup(other).decision is Decision.MISS
    path, _ = cache.store(other, b"engine of model B", model_name="demo")
    assert path.read_bytes() == b"engine of model B"
    assert cache.lookup(KEY).engine is not None and cache.lookup(KEY).engine.read_bytes() == b"engine of model A"  # type: ignore[union-attr]


def test_store_then_lookup_is_a_hit_with_a_manifest_beside_the_engine(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path, manifest = cache.store(KEY, b"plan bytes", model_name="us-seg-demo", builder="trtexec", build_seconds=3.25)
    assert path.name == ENGINE_FILE and path.parent.name == f"us-seg-demo-{KEY.digest}"
    written = json.loads((path.parent / MANIFEST_FILE).read_text())
    assert written["key"]["platform"]["gpu_name"] == "Orin" and written["digest"] == KEY.digest
    found = cache.lookup(KEY)
    assert found.hit and found.engine == path and found.manifest == manifest
    assert Manifest.read(path.parent / MANIFEST_FILE) == manifest


def test_an_engine_from_another_tensorrt_is_named_and_rebuilt_or_refused(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"old plan", model_name="demo")
    updated = dataclasses.replace(KEY, platform=dataclasses.replace(ORIN, trt_version="10.7.0"))
    found = cache.lookup(updated)
    assert found.decision is Decision.STALE
    assert "TensorRT version: cached 10.3.0, here 10.7.0" in found.reason
    assert "GPU" not in found.reason  # only what differs
    with pytest.raises(EngineCacheError, match=r"TensorRT version: cached 10.3.0, here 10.7.0"):
        resolve(cache, updated, OnMismatch.REFUSE, build=lambda reason: tmp_path / "never")
    built: list[str] = []

    def build(reason: str) -> Path:
        built.append(reason)
        return cache.store(updated, b"new plan", model_name="demo")[0]

    engine = resolve(cache, updated, OnMismatch.REBUILD, build)
    assert engine.read_bytes() == b"new plan" and "10.7.0" in built[0]
    assert resolve(cache, updated, OnMismatch.REFUSE, build) == engine and len(built) == 1  # now a hit


def test_a_miss_without_building_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(EngineCacheError, match="edgert build"):
        resolve(EngineCache(tmp_path), KEY, OnMismatch.REBUILD, build=None)


def test_a_tampered_or_truncated_engine_is_never_a_hit(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path, manifest = cache.store(KEY, b"plan bytes " * 10)
    path.write_bytes(b"Plan bytes " * 10)  # same size, other bytes
    found = cache.lookup(KEY)
    assert found.decision is Decision.STALE and "engine sha256" in found.reason
    path.write_bytes(b"short")
    assert "engine sha256" in cache.lookup(KEY).reason
    path.unlink()
    assert "missing" in cache.lookup(KEY).reason


def test_a_manifest_that_disagrees_with_its_folder_is_not_trusted(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path, _ = cache.store(KEY, b"plan")
    data = json.loads((path.parent / MANIFEST_FILE).read_text())
    data["key"]["precision"] = "int8"  # edited by hand: the folder name no longer matches the content
    (path.parent / MANIFEST_FILE).write_text(json.dumps(data))
    found = cache.lookup(KEY)
    assert found.decision is Decision.STALE and "precision: cached int8, here fp16" in found.reason


def test_check_engine_names_each_difference_and_refuses_unknown_gpus(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path, manifest = cache.store(KEY, b"plan")
    assert check_engine(path, manifest, ORIN) == []
    assert check_engine(path, manifest, ORIN, blob=b"plan") == []  # bytes already read: hashed, not re-read
    assert [m.field for m in check_engine(path, manifest, ORIN, blob=b"PLAN")] == ["engine sha256"]
    problems = {m.field for m in check_engine(path, manifest, Platform("10.3.0", "NVIDIA H100 80GB HBM3", "9.0"))}
    assert problems == {"GPU", "compute capability"}
    assert any(m.field == "platform" for m in check_engine(path, manifest, Platform("10.3.0", "unknown", "unknown")))


def test_diff_keys_is_empty_for_equal_keys_and_names_profiles() -> None:
    assert diff_keys(KEY, KEY) == []
    wider = dataclasses.replace(KEY, profiles=(Profile("image", (1, 1, 96, 128), (1, 1, 192, 256), (1, 1, 384, 512)),))
    (only,) = diff_keys(KEY, wider)
    assert only.field == "profiles" and "96x128" in only.wanted


def test_profiles_are_checked() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        Profile("x", (1, 3, 8, 8), (1, 3, 4, 4), (1, 3, 8, 8))
    with pytest.raises(ValueError, match="same, non-zero rank"):
        Profile("x", (1, 3), (1, 3, 4), (1, 3, 4))


def test_unreadable_manifests_are_reported(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(EngineCacheError, match="cannot read the engine manifest"):
        Manifest.read(tmp_path / "m.json")
    (tmp_path / "m.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(EngineCacheError, match="not an edgert engine manifest"):
        Manifest.read(tmp_path / "m.json")
