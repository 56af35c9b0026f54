"""The `edgert` command line, run as a user would (subprocesses for the daemon's signal handling)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from edge_runtime.cli import main
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]


def edgert(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_runtime.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("demo", "serve", "replay", "convert", "compare", "bench", "ctl", "keys", "package"):
        assert f"    {name} " in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from edge_runtime import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"edgert {__version__}"


def test_package_command(tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["package", str(tiny_models["seg_tiny"])]) == 0
    assert "seg-tiny 0.0.1 (segmentation, fp32) - valid" in capsys.readouterr().out
    assert main(["package", str(tiny_models["seg_wrong_input"])]) == 1
    assert "error:" in capsys.readouterr().err


def test_replay_of_a_corrupt_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken_cine.dcm"
    bad.write_bytes(b"\0" * 64)
    assert main(["replay", str(bad), "--ingest", "tcp://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "broken_cine.dcm" in err and "not a DICOM file" in err


def test_replay_of_an_undecodable_file_prints_one_line_and_no_traceback() -> None:
    """JPEG-lossy.dcm's codestream defeats every decoder plugin; pydicom logs each failure with a traceback.
    Run as a real process: under pytest the root logger already has handlers and would hide a leak."""
    path = get_testdata_file("JPEG-lossy.dcm")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "replay", path, "--ingest", "tcp://127.0.0.1:9", "--frames", "1"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"error: {path}: cannot decode pixel data (JPEG Extended (Process 2 and 4))" in proc.stderr


def test_replay_without_a_daemon_drops_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    cine = get_testdata_file("examples_ybr_color.dcm")
    assert main(["replay", cine, "--to", "tcp://127.0.0.1:9", "--fps", "200", "--frames", "10"]) == 0
    assert "sent 0 frames" in capsys.readouterr().err


def test_serve_rejects_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "daemon.toml"
    cfg.write_text('[model]\npackage = "x"\n[ingest]\nendpoit = "tcp://127.0.0.1:1"\n')
    assert main(["serve", "--config", str(cfg)]) == 1
    assert "unknown key ingest.endpoit" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_answers_control_and_stops_cleanly_on_signal(
    sig: signal.Signals, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    ready = tmp_path / "ready.json"
    any_port = "tcp://127.0.0.1:*"
    proc = subprocess.Popen(
        edgert("serve", "--model", str(tiny_models["seg_tiny"]), "--ingest", any_port, "--results", any_port,
               "--control", any_port, "--ready-file", str(ready)),
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        control = json.loads(ready.read_text())["endpoints"]["control"]
        ctl = subprocess.run(edgert("ctl", "status", "--control", control), env=_env(), capture_output=True, timeout=30)
        assert ctl.returncode == 0 and json.loads(ctl.stdout)["state"] == "ready"
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        log = proc.stdout.read().decode() if proc.stdout else ""
        assert f"received {sig.name}" in log and "stopped:" in log
        assert not ready.exists()  # removed on shutdown: nothing points at a dead daemon
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctl_without_a_daemon_fails_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", "status", "--control", "tcp://127.0.0.1:9", "--timeout", "0.2"]) == 1
    assert "no answer from the daemon" in capsys.readouterr().err


def test_convert_fp16_command(tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fp16"
    code = main(["convert", str(tiny_models["fp16_cancellation"]), "--precision", "fp16", "--data",
                 "synthetic:clip=1,size=64x64", "--samples", "8", "-o", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "PASSED" in captured.out and "add_offset" in captured.out
    assert "accuracy gate" in captured.err  # progress goes to stderr
    assert json.loads((out / "report.json").read_text())["passed"] is True
    original = json.loads((tiny_models["fp16_cancellation"] / "model.json").read_text())["version"]
    assert main(["package", str(out)]) == 0  # the converted artifact names itself, and its own verdict
    shown = capsys.readouterr().out
    assert f"{original}+fp16 (segmentation, fp16)" in shown.splitlines()[0]
    assert "gate      passed: " in shown and "frames used for nothing else" in shown
    assert main(["bench", str(out), "--duration-s", "0.2", "--iterations", "3"]) == 0
    assert "+fp16 on onnxruntime (fp16, " in capsys.readouterr().out


def test_convert_gate_failure_exits_nonzero(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["convert", str(tiny_models["fp16_cancellation"]), "--precision", "fp16", "--data",
                 "synthetic:clip=1,size=64x64", "--samples", "8", "--max-fallback", "0", "-o", str(tmp_path)])  # fmt: skip
    assert code == 3  # refused by the gate: not a crash
    out = capsys.readouterr().out
    assert "FAILED" in out and "FP16 accuracy gate failed" in out
    assert not (tmp_path / "model.onnx").exists()


def test_convert_usage_errors(tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(tiny_models["residual"]), "--precision", "fp16", "-o", str(tmp_path)]) == 1
    assert "edgert convert: error: --precision fp16 without a model card needs --data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", str(tiny_models["unet_bn"]), "--input-shape", "1,x", "-o", str(tmp_path)])
    assert "comma-separated" in capsys.readouterr().err


def test_compare_command_tolerance_and_json(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "cmp.json"
    args = ["compare", str(tiny_models["fp16_overflow"]), str(tiny_models["fp16_cancellation"]), "--data",
            "synthetic:clip=1,size=64x64", "--samples", "4", "--json", str(report)]  # fmt: skip
    assert main(args) == 3  # no tolerance: the task's default, as convert's gate judges
    said = capsys.readouterr().out
    assert "mean foreground Dice" in said and "edgert compare: FAILED: " in said and "default tolerance" in said
    assert main([*args, "--tolerance", "0.01"]) == 3  # two unrelated models do not agree
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["task"] == "segmentation" and "per_class" in data
    assert data["tolerance"] == 0.01
    assert main([*args, "--tolerance", "1"]) == 0 and "edgert compare: PASSED: " in capsys.readouterr().out
    assert main(["compare", str(tiny_models["seg_tiny"]), str(tiny_models["seg_tiny"]), "--samples", "4"]) == 0
    assert "data: synthetic ultrasound, 4 frames" in capsys.readouterr().out  # no --data: what convert would take


def test_ctl_health_exit_status(start_daemon, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    daemon = start_daemon(tiny_models["seg_tiny"])
    assert main(["ctl", "health", "--control", daemon.endpoints["control"]]) == 0
    assert capsys.readouterr().out.strip() == "healthy: ready"
    assert main(["ctl", "health", "--control", "tcp://127.0.0.1:9", "--timeout", "0.2"]) == 1
    assert "unhealthy: no answer" in capsys.readouterr().out


COMMANDS = ("demo", "serve", "replay", "convert", "compare", "bench", "ctl", "keys", "package")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_takes_verbose_and_quiet_and_documents_exit_codes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_runtime.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[union-attr, index]
    flags = {s for a in sub._actions for s in a.option_strings}
    assert {"-v", "--verbose", "-q", "--quiet"} <= flags
    if command != "serve":  # every command that produces a result can write it as JSON
        assert "--json" in flags
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "0 ok, 1 error, 2 usage error, 3 accuracy gate failed" in capsys.readouterr().out.replace("\n", " ")


def test_one_flag_name_for_the_input_shape_and_one_source_help() -> None:
    from edge_runtime.cli import SOURCE_HELP, build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    for name in ("convert", "compare", "bench"):
        flags = {s for a in subs[name]._actions for s in a.option_strings}  # type: ignore[index]
        assert "--input-shape" in flags and "--shape" not in flags, name
    helps = [a.help or "" for name in ("replay", "convert", "compare", "bench", "demo")
             for a in subs[name]._actions if a.dest in ("source", "data")]  # type: ignore[index]  # fmt: skip
    assert len(helps) == 5 and all(SOURCE_HELP in h for h in helps)


def test_json_to_stdout_keeps_the_text_on_stderr(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["package", str(tiny_models["seg_tiny"]), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["card"]["name"] == "seg-tiny" and "valid" in err
    assert main(["compare", str(tiny_models["unet_bn"]), str(tiny_models["unet_bn"]), "--data", "synthetic:size=64x64",
                 "--samples", "2", "--json", "-", "-q"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert json.loads(out)["metric"] == 1.0 and json.loads(out)["task"] == "segmentation" and "Dice" in err
    assert main(["convert", str(tiny_models["unet_bn"]), "-o", str(tmp_path), "--json", "-q"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["passed"] is True and "PASSED" in err and "[" not in err.split("edgert convert")[0]


def test_quiet_silences_progress_and_verbose_keeps_it(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["convert", str(tiny_models["unet_bn"]), "-o", str(tmp_path)]
    assert main([*args, "-q"]) == 0
    assert "preparing the graph" not in capsys.readouterr().err
    assert main([*args, "-v"]) == 0
    assert "preparing the graph" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ctl", "status", "--control", "bogus"], "edgert ctl status: error: cannot connect to the daemon's control"),
        (["ctl", "stats", "--control", "tcp://127.0.0.1:9", "--timeout", "0.2"],
         "edgert ctl stats: error: no answer from the daemon at tcp://127.0.0.1:9 within 0.2 s"),
        (["replay", "synthetic:frames=1", "--ingest", "bogus"], "edgert replay: error: cannot connect frame sender to bogus"),
        (["serve", "--ingest", "bogus"], "edgert serve: error: command line: ingest.endpoint: 'bogus' must start"),
    ],
)  # fmt: skip
def test_bad_endpoints_and_absent_daemons_print_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run(edgert(*args), env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


def test_ctl_usage_errors_name_the_ctl_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", "reload", "--control", "tcp://127.0.0.1:9"]) == 2
    assert "edgert ctl reload: usage error: reload needs a model package path" in capsys.readouterr().err
    assert main(["ctl", "status", "extra", "--control", "tcp://127.0.0.1:9"]) == 2
    assert "edgert ctl status: usage error: status takes no package argument" in capsys.readouterr().err


def test_view_token_comes_from_a_file_then_the_flag_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.cli import CliError, build_parser
    from edge_runtime.cli.view import _view_token

    parser = build_parser()
    secret = tmp_path / "token"
    secret.write_text("from-the-file-123\nignored\n", encoding="utf-8")
    monkeypatch.setenv("EDGERT_VIEW_TOKEN", "from-the-environment")
    assert _view_token(parser.parse_args(["view", "--token-file", str(secret)])) == "from-the-file-123"
    assert _view_token(parser.parse_args(["view", "--token", "on-the-command-line"])) == "on-the-command-line"
    assert _view_token(parser.parse_args(["view"])) == "from-the-environment"
    monkeypatch.delenv("EDGERT_VIEW_TOKEN")
    assert _view_token(parser.parse_args(["view"])) is None
    secret.write_text("\n", encoding="utf-8")
    with pytest.raises(CliError, match="is empty"):
        _view_token(parser.parse_args(["view", "--token-file", str(secret)]))
    with pytest.raises(CliError, match="cannot read"):
        _view_token(parser.parse_args(["view", "--token-file", str(tmp_path / "missing")]))
    with pytest.raises(SystemExit):
        parser.parse_args(["view", "--token", "x" * 8, "--token-file", str(secret)])


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    """`edgert package --json - | head -c0`: the pipe closes before the output is written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.cli", "package", "--json", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_one_name_per_concept_across_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's ingest is `--ingest` and an HTTP port is `--port` wherever a command takes one; the defaults
    the parser shows are the ones the library uses."""
    from edge_runtime.cli import build_parser
    from edge_runtime.cli.common import VIEW_PORT
    from edge_runtime.integrations.view.server import ViewOptions

    assert VIEW_PORT == ViewOptions.port
    subs = next(a for a in build_parser()._actions if a.dest == "command").choices  # type: ignore[union-attr]
    for name, sub in subs.items():  # type: ignore[union-attr]
        for action in sub._actions:
            text = (action.help or "").lower()
            if "ingest" in text and action.help != "==SUPPRESS==" and action.option_strings:
                if "endpoint" in text or "the daemon's ingest" in text:
                    assert action.option_strings[-1].startswith("--ingest"), (name, action.option_strings)
            if action.dest in ("port", "view_port"):
                assert action.option_strings == ["--port"], name
    assert {"replay", "igtl", "serve"} <= {n for n, s in subs.items() if any(a.dest == "ingest" for a in s._actions)}  # type: ignore[union-attr]
    cine = get_testdata_file("examples_ybr_color.dcm")
    assert main(["replay", cine, "--to", "tcp://127.0.0.1:9", "--fps", "200", "--frames", "2"]) == 0  # the old name
    assert "sent 0 frames" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # keys go into the current folder unless --dir says otherwise
    assert main(["keys", "generate", "scanner-1"]) == 0
    assert (tmp_path / "scanner-1.key").exists() and (tmp_path / "scanner-1.key_secret").exists()


def test_the_example_config_serves_from_the_checkout_and_flags_paths_start_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.cli.serve import _from_cwd
    from edge_runtime.core.package import demo_package_path
    from edge_runtime.daemon.config import load_config

    example = load_config(ROOT / "docs" / "daemon.example.toml")
    assert example.model.resolve() == demo_package_path().resolve()  # relative to the file, as it says
    assert demo_package_path().resolve().parent in example.allowed_reload_dirs  # its own model is reloadable
    monkeypatch.chdir(tmp_path)
    assert _from_cwd("model.package", "out") == str(tmp_path / "out")  # a flag means this folder's, not the file's
    assert _from_cwd("control.reload_dirs", ["a", "b"]) == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert _from_cwd("ingest.endpoint", "tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"
    assert _from_cwd("model.package", None) is None
