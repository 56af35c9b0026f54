"""`edgert build` without a GPU: the build plan per TensorRT version, the trtexec command line, profiles, the
calibration cache check, the layer report parser, and the CLI's one-line answer where TensorRT is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from calibration.calibrators import CalibrationMethod
from converters.convert import ConvertOptions, Precision, convert_model, write_result
from converters.engine import (
    BuildError,
    BuildOptions,
    HardwareCompat,
    Int8Path,
    Sparse,
    TrtVersion,
    installed_version,
    parse_layer_info,
    parse_shapes,
    plan_build,
    shape_profiles,
    trtexec_command,
    trtexec_version,
)
from converters.int8 import QuantTarget
from edge_runtime.backends.engine_cache import Platform, Profile
from edge_runtime.cli import main
from edge_runtime.core.package import ModelPackage, load_package

HAS_TENSORRT = installed_version() is not None


@pytest.fixture(scope="module")
def packages(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelPackage]:
    root = tmp_path_factory.mktemp("packages")
    common = {"data": "synthetic:clip=1", "samples": 8, "search_samples": 16, "verify_samples": 48, "min_support": 5,
              "tolerance": 0.05}  # fmt: skip  # the engine plans, not the verdict, are under test here
    conversions = {
        "fp16": ConvertOptions(precision=Precision.FP16, **common),  # type: ignore[arg-type]
        "int8": ConvertOptions(
            precision=Precision.INT8,
            target=QuantTarget.TENSORRT,
            trt_version="10.3.0",
            latency=False,
            calib_method=CalibrationMethod.MINMAX,
            **common,  # type: ignore[arg-type]
        ),  # fmt: skip
    }
    out = {"fp32": load_package(demo_model)}
    for name, options in conversions.items():
        result = convert_model(demo_model, options)
        assert result.passed, result.report.failure
        write_result(result, root / name)
        out[name] = load_package(root / name)
    return out


def _with_card(package: ModelPackage, tmp_path: Path, **conversion: object) -> ModelPackage:
    """A copy of `package` whose card's conversion note has extra entries (e.g. 2:4 layers)."""
    target = tmp_path / package.root.name
    shutil.copytree(package.root, target)
    card = json.loads((target / "model.json").read_text())
    card["conversion"] = {**card.get("conversion", {}), **conversion}
    (target / "model.json").write_text(json.dumps(card))
    return load_package(target)


def test_fp16_packages_are_built_strongly_typed_from_10_and_with_the_fp16_flag_before(
    packages: dict[str, ModelPackage],
) -> None:
    fp16 = packages["fp16"]
    old = plan_build(fp16, BuildOptions(), "8.6.1")
    assert not old.strongly_typed and old.builder_flags == ("FP16",) and old.precision.value == "fp16"
    assert any("no strongly typed networks" in n for n in old.notes)
    ten = plan_build(fp16, BuildOptions(), "10.3.0")
    assert ten.strongly_typed and ten.builder_flags == () and ten.onnx == fp16.onnx_path
    eleven = plan_build(fp16, BuildOptions(), "11.4.1")
    assert eleven.strongly_typed and "FP16" not in eleven.builder_flags


def test_int8_packages_build_their_qdq_graph_unless_the_dla_needs_the_calibration_cache(
    packages: dict[str, ModelPackage],
) -> None:
    int8 = packages["int8"]
    explicit = plan_build(int8, BuildOptions(), "10.3.0")
    assert explicit.precision.value == "int8" and explicit.strongly_typed and not explicit.implicit_int8
    assert plan_build(int8, BuildOptions(), "8.6.1").builder_flags == ("INT8",)  # Q/DQ needs the flag before 10
    dla = plan_build(int8, BuildOptions(dla_core=0), "10.3.0")
    assert dla.implicit_int8 and dla.onnx.name == "prepared_fp32.onnx" and not dla.strongly_typed
    assert set(dla.builder_flags) == {"FP16", "INT8", "GPU_FALLBACK"}
    assert dla.calibration_cache == int8.root / "calibration.cache"
    assert dla.key(Platform("10.3.0", "Orin", "8.7")) != explicit.key(Platform("10.3.0", "Orin", "8.7"))
    dla11 = plan_build(int8, BuildOptions(dla_core=0), "11.4.1")  # no calibrators in 11: the Q/DQ graph
    assert not dla11.implicit_int8 and dla11.onnx == int8.onnx_path
    with pytest.raises(BuildError, match="no implicit INT8"):
        plan_build(int8, BuildOptions(int8_path=Int8Path.IMPLICIT), "11.4.1")


def test_a_calibration_cache_for_another_tensorrt_is_refused_by_name(packages: dict[str, ModelPackage]) -> None:
    """TensorRT silently ignores a cache from another version: say so before the build does nothing useful."""
    with pytest.raises(BuildError, match=r"for TensorRT 10.3.0 \(code 100300\), this is 8.6.1 \(code 8601\)"):
        plan_build(packages["int8"], BuildOptions(int8_path=Int8Path.IMPLICIT), "8.6.1")


def test_options_that_the_version_or_the_package_cannot_honour_are_refused(
    packages: dict[str, ModelPackage], tmp_path: Path
) -> None:
    fp16, fp32 = packages["fp16"], packages["fp32"]
    with pytest.raises(BuildError, match="too old"):
        plan_build(fp16, BuildOptions(), "8.4.3")
    with pytest.raises(BuildError, match="--opt-level needs TensorRT 8.6"):
        plan_build(fp16, BuildOptions(opt_level=4), "8.5.2")
    with pytest.raises(BuildError, match="same-compute-capability compatibility needs TensorRT 10"):
        plan_build(fp16, BuildOptions(hardware_compat=HardwareCompat.SAME_COMPUTE_CAPABILITY), "8.6.1")
    with pytest.raises(BuildError, match="DLA runs FP16 or INT8"):
        plan_build(fp32, BuildOptions(dla_core=0), "10.3.0")
    with pytest.raises(BuildError, match="for GPUs, not the DLA"):
        plan_build(fp16, BuildOptions(dla_core=0, hardware_compat=HardwareCompat.AMPERE_PLUS), "10.3.0")
    with pytest.raises(BuildError, match="implicit INT8 needs calibration.cache"):
        plan_build(_int8_card_on(fp32, tmp_path), BuildOptions(int8_path=Int8Path.IMPLICIT), "10.3.0")
    with pytest.raises(BuildError, match="outside 0..5"):
        BuildOptions(opt_level=6)
    with pytest.raises(BuildError, match="must be positive"):
        BuildOptions(workspace_mib=0)


def _int8_card_on(package: ModelPackage, tmp_path: Path) -> ModelPackage:
    """A copy of `package` (in `tmp_path`, never beside the source package) whose card says INT8."""
    path = tmp_path / "int8card"
    shutil.copytree(package.root, path)
    card = json.loads((path / "model.json").read_text())
    card["conversion"] = {"precision": "int8"}
    (path / "model.json").write_text(json.dumps(card))
    return load_package(path)


def test_sparse_weights_follow_the_card(packages: dict[str, ModelPackage], tmp_path: Path) -> None:
    dense = plan_build(packages["fp16"], BuildOptions(), "10.3.0")
    assert "SPARSE_WEIGHTS" not in dense.builder_flags
    sparse_pkg = _with_card(packages["fp16"], tmp_path, sparse_2_4={"layers": ["enc1.conv", "enc2.conv"]})
    sparse = plan_build(sparse_pkg, BuildOptions(), "10.3.0")
    assert "SPARSE_WEIGHTS" in sparse.builder_flags and sparse.sparse_layers == ("enc1.conv", "enc2.conv")
    assert "--sparsity=enable" in trtexec_command(sparse, Path("e.plan"))
    assert "SPARSE_WEIGHTS" not in plan_build(sparse_pkg, BuildOptions(sparse=Sparse.OFF), "10.3.0").builder_flags


def test_trtexec_command_lines_follow_the_version(packages: dict[str, ModelPackage], tmp_path: Path) -> None:
    options = BuildOptions(workspace_mib=1024, opt_level=4, timing_cache=tmp_path / "t.cache", version_compatible=True)
    cmd10 = trtexec_command(plan_build(packages["fp16"], options, "10.3.0"), tmp_path / "e.plan", tmp_path / "l.json")
    assert cmd10[:3] == ["trtexec", f"--onnx={packages['fp16'].onnx_path}", f"--saveEngine={tmp_path / 'e.plan'}"]
    for flag in ("--skipInference", "--stronglyTyped", "--memPoolSize=workspace:1024", "--builderOptimizationLevel=4",
                 f"--timingCacheFile={tmp_path / 't.cache'}", "--versionCompatible", "--profilingVerbosity=detailed",
                 f"--exportLayerInfo={tmp_path / 'l.json'}"):  # fmt: skip
        assert flag in cmd10
    assert "--fp16" not in cmd10
    cmd86 = trtexec_command(plan_build(packages["fp16"], BuildOptions(), "8.6.1"), tmp_path / "e.plan")
    assert "--fp16" in cmd86 and "--stronglyTyped" not in cmd86
    assert "--buildOnly" in trtexec_command(plan_build(packages["fp16"], BuildOptions(), "8.5.2"), Path("e.plan"))
    cmd11 = trtexec_command(plan_build(packages["int8"], BuildOptions(), "11.4.1"), Path("e.plan"))
    assert not {"--int8", "--fp16", "--stronglyTyped"} & set(cmd11)  # removed or implied in 11
    dla = trtexec_command(plan_build(packages["int8"], BuildOptions(dla_core=1), "10.3.0"), Path("e.plan"))
    assert {"--int8", "--fp16", "--useDLACore=1", "--allowGPUFallback"} <= set(dla)
    assert f"--calib={packages['int8'].root / 'calibration.cache'}" in dla


def test_shapes_parse_like_trtexec_and_only_dynamic_inputs_get_profiles(
    packages: dict[str, ModelPackage], tmp_path: Path
) -> None:
    assert parse_shapes("image:1x1x192x256, 'in:0':2x3") == {"image": (1, 1, 192, 256), "in:0": (2, 3)}
    for bad in ("image", "image:1xax3", ""):
        with pytest.raises(BuildError, match="shapes"):
            parse_shapes(bad)
    profiles = shape_profiles({"image": (1, 1, 192, 256)}, max_={"image": (1, 1, 384, 512)})
    assert profiles == (Profile("image", (1, 1, 192, 256), (1, 1, 192, 256), (1, 1, 384, 512)),)
    with pytest.raises(BuildError, match="min <= opt <= max"):
        shape_profiles({"image": (1, 1, 192, 256)}, min_={"image": (1, 1, 384, 512)})
    fp16 = packages["fp16"]
    assert plan_build(fp16, BuildOptions(), "10.3.0").profiles == ()  # static input: no profile needed
    with pytest.raises(BuildError, match="does not fit the graph"):
        plan_build(fp16, BuildOptions(shapes=shape_profiles({"image": (1, 1, 96, 128)})), "10.3.0")
    with pytest.raises(BuildError, match="not an input of the graph"):
        plan_build(fp16, BuildOptions(shapes=shape_profiles({"input": (1, 1, 192, 256)})), "10.3.0")


def test_dynamic_inputs_take_the_cards_shape_or_the_given_profile(demo_model: Path, tmp_path: Path) -> None:
    import onnx

    target = tmp_path / "dynamic"
    shutil.copytree(demo_model, target)
    model = onnx.load(str(target / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save(model, str(target / "model.onnx"))
    card = json.loads((target / "model.json").read_text())
    card.pop("onnx_sha256")
    (target / "model.json").write_text(json.dumps(card))
    package = load_package(target)
    (profile,) = plan_build(package, BuildOptions(), "10.3.0").profiles
    assert profile == Profile("image", (1, 1, 192, 256), (1, 1, 192, 256), (1, 1, 192, 256))
    ranged = shape_profiles({"image": (1, 1, 192, 256)}, {"image": (1, 1, 96, 128)}, {"image": (1, 1, 384, 512)})
    plan = plan_build(package, BuildOptions(shapes=ranged), "10.3.0")
    cmd = trtexec_command(plan, Path("e.plan"))
    assert "--minShapes=image:1x1x96x128" in cmd and "--maxShapes=image:1x1x384x512" in cmd


def test_versions_from_codes_and_trtexec_banners() -> None:
    assert TrtVersion.from_code(8601) == TrtVersion(8, 6, 1)
    assert TrtVersion.from_code(100300) == TrtVersion(10, 3, 0)
    assert TrtVersion.from_code(110401) == TrtVersion(11, 4, 1)
    assert trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help") == TrtVersion(10, 3)
    assert TrtVersion.parse("10.3.0.26") == TrtVersion(10, 3, 0) and TrtVersion(8, 6, 1) < TrtVersion(10, 0)
    with pytest.raises(BuildError, match="banner"):
        trtexec_version("trtexec: command not found")


def test_layer_reports_read_both_inspector_schemas() -> None:
    ten = {"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution", "Outputs": [{"Name": "a", "Format/DataType": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "conv2", "LayerType": "CaskConvolution", "Outputs": [{"Name": "b", "Format/DataType": "Row major Int8 format"}]},
        {"Name": "head", "LayerType": "CaskConvolution", "Outputs": [{"Name": "c", "Format/DataType": "Row major linear FP32"}]},
    ], "Bindings": ["image", "logits"]}  # fmt: skip
    eleven = {"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution", "Outputs": [{"Name": "a", "Format": "kHWC8", "DataType": "Half"}]},
        {"Name": "conv2", "LayerType": "CaskConvolution", "Outputs": [{"Name": "b", "Format": "kLINEAR", "DataType": "Int8"}]},
        {"Name": "head", "LayerType": "CaskConvolution", "Outputs": [{"Name": "c", "Format": "kLINEAR", "DataType": "Float"}]},
    ], "I/O Tensors": []}  # fmt: skip
    for data in (ten, eleven):
        report = parse_layer_info(json.dumps(data))
        assert [layer.precision for layer in report.layers] == ["fp16", "int8", "fp32"]
        assert report.counts == {"fp16": 1, "int8": 1, "fp32": 1}
    names_only = parse_layer_info(json.dumps({"Layers": ["conv1", "conv2"]}))
    assert names_only.counts == {"unknown": 2}
    with pytest.raises(BuildError, match="not JSON"):
        parse_layer_info("{")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the missing-TensorRT message cannot show")
def test_build_and_the_tensorrt_backends_say_one_line_without_tensorrt(
    packages: dict[str, ModelPackage], capsys: pytest.CaptureFixture[str]
) -> None:
    fp16 = str(packages["fp16"].root)
    for argv in (["build", fp16], ["bench", fp16, "--backend", "tensorrt"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "TensorRT is not installed" in err[0] and "JetPack" in err[0], err
        assert "Traceback" not in err[0]


def test_print_trtexec_needs_no_tensorrt(packages: dict[str, ModelPackage], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(packages["int8"].root), "--print-trtexec", "--trt-version", "10.3.0", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trt_version"] == "10.3.0" and "--stronglyTyped" in result["command"]
    if not HAS_TENSORRT:
        assert main(["build", str(packages["int8"].root), "--print-trtexec"]) == 2
        assert "give --trt-version" in capsys.readouterr().err


def test_onnxruntimes_tensorrt_provider_is_told_what_the_converted_graph_carries(
    packages: dict[str, ModelPackage],
) -> None:
    from edge_runtime.backends.onnxruntime import graph_precisions

    assert graph_precisions(packages["fp32"].onnx_path) == (False, False)
    assert graph_precisions(packages["fp16"].onnx_path) == (True, False)
    assert graph_precisions(packages["int8"].onnx_path) == (False, True)
