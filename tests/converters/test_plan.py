"""Reproducible conversion: the same command gives the same bytes, the plan replays them, lossy steps refuse
random data, and the report's first line says what shipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from converters.convert import ConversionResult, ConvertOptions, Precision, convert_model, summary_text, write_result
from converters.graph import ConversionError
from converters.plan import load_plan
from converters.prune import Budget
from converters.report import PruneMethod

DATA = "synthetic:size=32x32"
SMALL = {"samples": 8, "search_samples": 16, "verify_samples": 32, "min_support": 4, "tolerance": 0.5}


def _bytes(result: ConversionResult) -> bytes:
    model = result.model
    assert model is not None
    return bytes(model.SerializeToString())


def test_the_same_conversion_twice_gives_the_same_bytes(tiny_models: dict[str, Path]) -> None:
    for options in (
        ConvertOptions(precision=Precision.INT8, data=DATA, latency=False, **SMALL),  # type: ignore[arg-type]
        ConvertOptions(prune=PruneMethod.CHANNELS, data=DATA, prune_multiple=1, prune_by=Budget.FLOPS, **SMALL),  # type: ignore[arg-type]
    ):
        first, second = convert_model(tiny_models["unet_bn"], options), convert_model(tiny_models["unet_bn"], options)
        assert first.passed and second.passed
        assert _bytes(first) == _bytes(second) and first.card == second.card
        assert first.report.prune is None or first.report.prune.used > 0  # pruning did prune: nothing trivial
        assert first.report.plan is not None and first.report.plan.to_json() == second.report.plan.to_json()  # type: ignore[union-attr]


def test_a_plan_replays_byte_identically_without_measuring(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    options = ConvertOptions(precision=Precision.INT8, prune=PruneMethod.CHANNELS, data=DATA, prune_multiple=1,
                             prune_by=Budget.FLOPS, fallback=Precision.FP16, latency=False, **SMALL)  # type: ignore[arg-type]  # fmt: skip
    made = convert_model(tiny_models["unet_bn"], options)
    assert made.passed and made.report.plan is not None
    write_result(made, tmp_path / "made")
    plan = load_plan(tmp_path / "made" / "report.json")  # the plan is read back from the report
    assert plan.pruned and plan.int8 is not None and plan.int8.amax and plan.int8.nodes
    assert plan.output_sha256 == made.report.output.sha256  # type: ignore[union-attr]
    said: list[str] = []
    replayed = convert_model(tiny_models["unet_bn"], ConvertOptions(), progress=said.append, plan=plan)
    assert replayed.passed and _bytes(replayed) == _bytes(made) and replayed.card == made.card
    assert replayed.report.replay is not None and replayed.report.replay.identical
    assert not any("sensitivity" in line or "profiling" in line or "timing" in line for line in said)
    assert replayed.report.verify is not None and replayed.report.verify.passed  # the verdict still runs
    write_result(replayed, tmp_path / "replayed")
    assert (tmp_path / "made" / "model.onnx").read_bytes() == (tmp_path / "replayed" / "model.onnx").read_bytes()


def test_a_plan_for_another_model_is_refused(tiny_models: dict[str, Path]) -> None:
    made = convert_model(tiny_models["unet_bn"], ConvertOptions(precision=Precision.FP16, data=DATA, **SMALL))  # type: ignore[arg-type]
    assert made.report.plan is not None
    with pytest.raises(ConversionError, match="the plan was made from a model with sha256"):
        convert_model(tiny_models["residual"], plan=made.report.plan)


@pytest.mark.parametrize(
    "options",
    [
        ConvertOptions(precision=Precision.INT8, data="random"),
        ConvertOptions(prune=PruneMethod.CHANNELS, data="random:seed=3"),
        ConvertOptions(prune=PruneMethod.SPARSE_2_4, data="synthetic", calib="random"),
        ConvertOptions(precision=Precision.INT8, data="synthetic", verify="random"),
    ],
)
def test_lossy_steps_refuse_random_data(tiny_models: dict[str, Path], options: ConvertOptions) -> None:
    with pytest.raises(ConversionError, match="cannot be judged on random tensors.*--data SOURCE"):
        convert_model(tiny_models["unet_bn"], options)


def test_fp16_may_still_check_numbers_on_random_data(tiny_models: dict[str, Path]) -> None:
    result = convert_model(tiny_models["unet_bn"], ConvertOptions(precision=Precision.FP16, data="random", **SMALL))  # type: ignore[arg-type]
    assert result.report.data is not None and not result.report.data.representative


def test_a_symbolic_batch_is_named_with_its_fix(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(tiny_models["unet_bn"] / "model.onnx"))
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, str(tmp_path / "dynamic.onnx"))
    card = tiny_models["unet_bn"] / "model.json"
    options = ConvertOptions(prune=PruneMethod.CHANNELS, data=DATA, prune_by=Budget.FLOPS, prune_multiple=1, **SMALL)  # type: ignore[arg-type]
    with pytest.raises(ConversionError) as err:
        convert_model(tmp_path / "dynamic.onnx", options, card_path=card)
    message = str(err.value)
    assert "'batch'" in message and "--fix-shapes" in message and "--input-shape 1,1,32,32" in message
    assert "\n" not in message and len(message) < 200
    fixed = convert_model(
        tmp_path / "dynamic.onnx", ConvertOptions(**{**options.__dict__, "fix_shapes": True}), card_path=card
    )
    assert fixed.report.prune is not None


def test_the_first_line_says_what_shipped(tiny_models: dict[str, Path]) -> None:
    result = convert_model(
        tiny_models["unet_bn"], ConvertOptions(precision=Precision.INT8, data=DATA, latency=False, **SMALL)
    )  # type: ignore[arg-type]
    report = result.report
    assert report.int8 is not None and report.int8.int8_ops > 0
    assert report.headline() == (
        f"edgert convert: INT8 requested -> INT8 ({report.int8.int8_ops} of {report.int8.quantizable_ops} weighted "
        "ops) shipped: PASSED"
    )
    refused = convert_model(
        tiny_models["unet_bn"],
        ConvertOptions(precision=Precision.INT8, data=DATA, latency=False, **{**SMALL, "tolerance": 0.0}),
    )  # type: ignore[arg-type]
    assert refused.report.headline().startswith("edgert convert: INT8 requested -> nothing shipped: FAILED (")
    # Every layer left INT8 for speed: the line says FP32 shipped and why, not "INT8: PASSED".
    report.int8.int8_ops = 0
    report.latency = __import__("converters.latency", fromlist=["LatencyReport"]).LatencyReport(
        kept_fp32_for_speed=["a"] * report.int8.quantizable_ops, int8_ms=7.0, fp32_ms=6.0
    )
    assert report.headline() == (
        "edgert convert: INT8 requested -> FP32 shipped: PASSED (INT8 does not pay here (FP32 6.00 ms, all-INT8 7.00 ms))"
    )


def test_the_report_names_every_split_and_they_do_not_overlap(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = convert_model(
        tiny_models["unet_bn"], ConvertOptions(precision=Precision.INT8, data=DATA, latency=False, **SMALL)
    )  # type: ignore[arg-type]
    write_result(result, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    seeds = [
        report[k]["description"].split("(seed ")[1].split(")")[0] for k in ("calibration_data", "data", "verify_data")
    ]
    assert seeds == ["0", "1", "2"]
    assert [report[k]["samples"] for k in ("calibration_data", "data", "verify_data")] == [8, 16, 32]
    verdict = report["verify"]["comparison"]["verdict"]
    assert verdict["frames"] == 32 and verdict["lower_bound"] <= verdict["metric"]
    assert {c["name"] for c in verdict["classes"]} == {"dark", "bright"}


def test_conversions_time_as_the_cart_runs(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """--config's [cpu] and model.threads reach every timed session, are recorded in the plan and read back."""
    from converters.options import options_from_json, options_to_json
    from converters.timing import Stopwatch
    from edge_runtime.backends import CpuOptions, Spin
    from edge_runtime.backends.sessions import CpuSetup
    from edge_runtime.daemon.config import load_config

    config = tmp_path / "daemon.toml"
    config.write_text('[model]\npackage = "pkg"\nthreads = 1\n[cpu]\nspin = "run"\n')
    loaded = load_config(config)
    setup = loaded.cpu.setup(loaded.threads)
    assert setup == CpuSetup(1, CpuOptions(Spin.RUN))
    model = onnx.load(str(tiny_models["unet_bn"] / "model.onnx"))
    watch = Stopwatch([model], [{"image": np.zeros((1, 1, 32, 32), np.float32)}], runs=1, cpu=setup)
    used = watch.sessions[0].get_session_options()
    assert used.intra_op_num_threads == 1 and used.get_session_config_entry("session.force_spinning_stop") == "1"
    options = ConvertOptions(precision=Precision.INT8, data=DATA, cpu=setup, **SMALL)  # type: ignore[arg-type]
    result = convert_model(tiny_models["unet_bn"], options)
    assert result.report.latency is not None and result.report.plan is not None
    recorded = result.report.to_json()["options"]["cpu"]
    assert recorded == {"threads": 1, "options": {"spin": "run", "worker_cpus": []}}
    assert options_from_json(options_to_json(options)) == options
    assert "1 threads, spin run" in summary_text(result.report)


def test_a_raw_card_takes_real_frames_and_judges_the_outputs_as_numbers(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A model edgert has no decoder for: the card gives its input and preprocessing only (task `raw`), so lossy
    steps still run on real frames, and the verdict is the worst output's cosine on the verify split."""
    from edge_runtime.core.package import PackageError, load_package

    card = json.loads((tiny_models["unet_bn"] / "model.json").read_text())
    raw = {k: v for k, v in card.items() if k != "output"} | {"task": "raw"}
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    options = ConvertOptions(precision=Precision.INT8, data=DATA, latency=False, **SMALL)  # type: ignore[arg-type]
    result = convert_model(tiny_models["unet_bn"] / "model.onnx", options, card_path=tmp_path / "raw.json")
    assert result.passed and result.report.data is not None and result.report.data.representative
    assert result.report.verify is not None
    verdict = result.report.verify.comparison
    assert verdict.task is None and verdict.metric_name == "worst-output cosine similarity"
    assert all(o.max_abs >= 0 for o in verdict.outputs) and verdict.samples == SMALL["verify_samples"]
    assert "preprocessed as the daemon does" in result.report.verify_data.description  # type: ignore[union-attr]
    write_result(result, tmp_path / "out")
    with pytest.raises(PackageError, match="describes the input only"):  # never served: no decoder
        load_package(tmp_path / "out")
