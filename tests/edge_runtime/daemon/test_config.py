from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.daemon.config import ConfigError, IngestPattern, SocketMode, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    return path


def test_full_config_with_relative_package(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[model]
package = "models/us"
threads = 2
[ingest]
endpoint = "tcp://127.0.0.1:6000"
mode = "connect"
pattern = "sub"
[results]
endpoint = "ipc:///tmp/edgert-results"
[heartbeat]
interval_ms = 250
[limits]
max_width = 1920
""",
    )
    cfg = load_config(path)
    assert cfg.model == tmp_path / "models/us"
    assert cfg.threads == 2
    assert (cfg.ingest.mode, cfg.ingest.pattern) == (SocketMode.CONNECT, IngestPattern.SUB)
    assert cfg.results_endpoint == "ipc:///tmp/edgert-results"
    assert cfg.control_endpoint == "tcp://127.0.0.1:5557"  # default: loopback only
    assert cfg.heartbeat_ms == 250 and cfg.limits.max_width == 1920 and cfg.limits.max_height == 8192


def test_defaults_bind_to_loopback(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '[model]\npackage = "/m"\n'))
    for endpoint in (cfg.ingest.endpoint, cfg.results_endpoint, cfg.control_endpoint):
        assert endpoint.startswith("tcp://127.0.0.1:")


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '[model]\npackage = "/m"\n[ingest]\nendpoint = "tcp://127.0.0.1:1"\n')
    cfg = load_config(path, {"ingest.endpoint": "tcp://127.0.0.1:2", "model.threads": None})
    assert cfg.ingest.endpoint == "tcp://127.0.0.1:2" and cfg.threads == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ('[model]\npackage = "/m"\n[ingest]\nendpont = "x"\n', "unknown key ingest.endpont"),
        ('[model]\npackage = "/m"\n[telemetry]\nport = 1\n', r"unknown section \[telemetry\]"),
        ("[model]\nthreads = 1\n", "model.package is required"),
        ('[model]\npackage = "/m"\nthreads = "two"\n', "model.threads = 'two' should be int"),
        ('[model]\npackage = "/m"\n[ingest]\nmode = "listen"\n', "ingest.mode: 'listen' is not one of"),
        ('[model]\npackage = "/m"\nbackend = "tensorflow"\n', "model.backend"),
        ('[model]\npackage = "/m"\n[results]\nendpoint = "http://x"\n', "results.endpoint"),
        ('[model]\npackage = "/m"\n[heartbeat]\ninterval_ms = 5000\n', "at least once a second"),
        ('[model]\npackage = "/m"\n[limits]\nmax_width = 0\n', "limits"),
        ("[model\n", "not valid TOML"),
        ('[model]\npackage = "/m"\n[engine]\nbuild_on_start = "yes"\n', "engine.build_on_start = 'yes' should be bool"),
        ('[model]\npackage = "/m"\n[engine]\non_mismatch = "ignore"\n', "engine.on_mismatch: 'ignore' is not one of"),
        ('[model]\npackage = "/m"\n[engine]\nopt_level = 9\n', "engine.opt_level must be in 0..5"),
        ('[model]\npackage = "/m"\nthreads = true\n', "model.threads = True should be int"),
        ('[model]\npackage = "/m"\n[results]\nmask = "half"\n', "results.mask: 'half' is not one of"),
        ('[model]\npackage = "/m"\n[cpu]\nspin = "sometimes"\n', "cpu.spin: 'sometimes' is not one of"),
        ('[model]\npackage = "/m"\n[cpu]\nio_cpus = ["0"]\n', "cpu.io_cpus must be a list of CPU numbers"),
        ('[model]\npackage = "/m"\n[cpu]\ninference_cpus = [1, 1]\n', "cpu.inference_cpus: .* distinct"),
        ('[model]\npackage = "/m"\n[cpu]\nrealtime_priority = 100\n', "cpu.realtime_priority: 100 outside"),
        ('[model]\npackage = "/m"\n[decode]\nthreads = 0\n', "decode.threads: 0 outside"),
        ('[model]\npackage = "/m"\n[security]\ncurve_outputs = "no"\n', "security.curve_outputs = 'no' should be bool"),
        ('[model]\npackage = "/m"\n[streams]\nids = ["a"]\n', "streams.ids must be a list"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(info.value).count(str(path)) == 1  # named once, first


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_documented_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[3] / "docs" / "daemon.example.toml"
    cfg = load_config(example)
    assert cfg.model.resolve() == (example.parents[1] / "edge_runtime" / "models" / "us_seg_demo").resolve()
    assert cfg.limits.max_width == 4096 and cfg.heartbeat_ms == 500


def test_gpu_backends_and_the_engine_section(tmp_path: Path) -> None:
    from edge_runtime.backends import BackendKind
    from edge_runtime.backends.engine_cache import OnMismatch

    path = _write(
        tmp_path,
        """
[model]
package = "m"
backend = "tensorrt"
device = 1
[engine]
cache_dir = "engines"
build_on_start = false
on_mismatch = "refuse"
workspace_mib = 1024
dla_core = 0
timing_cache = "timing.cache"
""",
    )
    cfg = load_config(path)
    assert cfg.backend is BackendKind.TENSORRT and cfg.device == 1
    e = cfg.engine
    assert e.cache_dir == tmp_path / "engines" and e.timing_cache == tmp_path / "timing.cache"
    assert e.build_on_start is False and e.on_mismatch is OnMismatch.REFUSE
    assert (e.workspace_mib, e.dla_core, e.opt_level) == (1024, 0, None)
    default = load_config(_write(tmp_path, '[model]\npackage = "m"\nbackend = "onnxruntime-cuda"\n'))
    assert default.backend is BackendKind.ONNXRUNTIME_CUDA and default.engine.build_on_start is True


def test_the_tracker_section(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '[model]\npackage = "m"\n[tracker]\nmin_hits = 2\nwindow = 4\niou = 0.5\n'))
    assert cfg.tracker is not None and (cfg.tracker.min_hits, cfg.tracker.window, cfg.tracker.iou) == (2, 4, 0.5)
    assert cfg.tracker.max_missed == 2 and cfg.tracker_enabled is None
    off = load_config(_write(tmp_path, '[model]\npackage = "m"\n[tracker]\nenabled = false\n'))
    assert off.tracker is None and off.tracker_enabled is False
    with pytest.raises(ConfigError, match="min_hits <= window"):
        load_config(_write(tmp_path, '[model]\npackage = "m"\n[tracker]\nmin_hits = 5\nwindow = 3\n'))


def test_the_cpu_and_results_sections(tmp_path: Path) -> None:
    from edge_runtime.backends import Spin
    from edge_runtime.core.protocol import MaskResolution

    default = load_config(_write(tmp_path, '[model]\npackage = "/m"\n'))
    assert default.mask is MaskResolution.MODEL and default.cpu.spin is Spin.ALWAYS
    assert default.cpu.threads(0) == 0 and default.cpu.backend().worker_cpus == ()
    cfg = load_config(_write(tmp_path, '[model]\npackage = "/m"\n[results]\nmask = "frame"\n[cpu]\nspin = "never"\n'
                             'inference_cpus = [1, 2, 3]\nio_cpus = [0]\nrealtime_priority = 10\n'))  # fmt: skip
    assert cfg.mask is MaskResolution.FRAME and cfg.cpu.spin is Spin.NEVER
    assert cfg.cpu.io_cpus == (0,) and cfg.cpu.realtime_priority == 10
    assert cfg.cpu.threads(0) == 3 and cfg.cpu.threads(2) == 2  # one per inference CPU unless model.threads says
    assert cfg.cpu.backend().worker_cpus == (2, 3)  # the inference thread itself takes the first


def test_declared_stream_ids(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '[model]\npackage = "m"\n[streams]\nids = [0, 3]\n'))
    assert cfg.streams.ids == (0, 3)
    assert load_config(_write(tmp_path, '[model]\npackage = "m"\n')).streams.ids == ()  # default: any id
    for text, message in (
        ('[streams]\nids = ["0"]', "streams.ids must be a list of stream ids"),
        ("[streams]\nids = [-1]", "not a stream id"),
        ("[streams]\nids = [1, 1]", "declared twice"),
        ("[streams]\nmax_streams = 1\nids = [1, 2]", "max_streams is 1"),
        (
            '[ingest]\nformat = "imagezmq"\npattern = "rep"\nstreams = {probe = 4}\n[streams]\nids = [0]',
            "ingest.streams.probe: stream id 4 is not in streams.ids",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(_write(tmp_path, '[model]\npackage = "m"\n' + text + "\n"))


def _example_keys(text: str) -> set[tuple[str, str]]:
    """Every `section.key` the example shows, set or commented out (`# key = value`)."""
    import re

    found, section = set(), ""
    for line in text.splitlines():
        if m := re.match(r"#?\s*\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"#?\s*(\w+)\s*=", line):
            found.add((section, m.group(1)))
    return found


def test_example_config_shows_every_key_of_the_schema_and_no_other() -> None:
    from edge_runtime.core import schema
    from edge_runtime.daemon.config import SECTIONS

    example = (Path(__file__).resolve().parents[3] / "docs" / "daemon.example.toml").read_text()
    expected = {(s, k) for s, cls in SECTIONS.items() for k in schema.keys(s, cls)}
    shown = _example_keys(example)
    assert not expected - shown, f"keys the example does not show: {sorted(expected - shown)}"
    assert not shown - expected, f"keys the example shows that do not exist: {sorted(shown - expected)}"


def test_example_config_with_every_commented_key_turned_on_is_valid(tmp_path: Path) -> None:
    import re

    example = (Path(__file__).resolve().parents[3] / "docs" / "daemon.example.toml").read_text()
    on = "\n".join(re.sub(r"^#\s*(\[\w+\]|\w+\s*=)", r"\1", line) for line in example.splitlines())
    # ingest.streams is imagezmq's: the ingest those keys belong to
    on = on.replace('pattern = "pull"', 'pattern = "rep"').replace('format = "edgert"', 'format = "imagezmq"')
    cfg = load_config(_write(tmp_path, on))
    assert cfg.audit is not None and cfg.preview.enabled and cfg.server_key is not None
    assert cfg.tracker is not None and cfg.metrics_endpoint is not None and cfg.cpu.inference_cpus


def test_a_float_key_takes_an_integer_and_a_list_becomes_a_tuple(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '[model]\npackage = "m"\n[tracker]\niou = 1\n[control]\nreload_dirs = ["a"]\n'))
    assert cfg.tracker is not None and cfg.tracker.iou == 1.0 and isinstance(cfg.tracker.iou, float)
    assert cfg.reload_dirs == (tmp_path / "a",)
