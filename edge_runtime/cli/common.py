"""What every subcommand shares: exit codes, the output (`Output`: lines, progress, `--json`), the one-line
errors, and the argument groups declared once (keys, `--json`, `--dicom`, the CPU group, sampling).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from calibration.kinds import SampleOrder, Sampling
from calibration.preprocessing import DicomOutput
from edge_runtime.backends.base import BackendKind, Spin
from edge_runtime.backends.sessions import CpuSetup
from edge_runtime.core.errors import EdgertError

log = logging.getLogger("edgert")

Run = Callable[[argparse.Namespace, "Output"], int]  # a subcommand: its parsed arguments and its output
Command = Callable[[str, str, Run], argparse.ArgumentParser]  # registers a subcommand, returns its parser


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # the command failed (bad input, unreachable daemon, unhealthy daemon, ...)
    USAGE = 2  # the command line itself is wrong (argparse's status)
    GATE_FAILED = 3  # a conversion or comparison was refused by the accuracy gate: not a crash
    CHAIN_BROKEN = 4  # `audit verify` found an edited, inserted or deleted record
    PIPE_CLOSED = 141  # the reader of stdout went away (`| head`): 128 + SIGPIPE, as a shell reports it
    INTERRUPTED = 130


ERROR_CHARS = 4000  # an error is one line: long enough for any of ours, escaped so no file name breaks it


EXIT_CODES_HELP = (
    "exit status: 0 ok, 1 error, 2 usage error, 3 accuracy gate failed (convert, compare --tolerance, bench with a "
    "conversion), 4 audit chain broken (audit verify)"
)


SOURCE_HELP = (
    "a frame source: a DICOM file or folder, images (PNG/JPEG/TIFF, 8 or 16 bit), a video, a .npy/.npz array, a "
    "folder of these, or synthetic[:frames=N,size=HxW,seed=S,fps=F,clip=K]; random[:seed=S] gives standard-normal "
    "tensors (numeric checks only)"
)


BACKENDS = [b.value for b in BackendKind]


BACKEND_HELP = (
    "onnxruntime (CPU, default), onnxruntime-cuda / onnxruntime-tensorrt (onnxruntime-gpu's providers), tensorrt "
    "(an engine built on this device, see `edgert build`), triton (the model on a Triton server: [triton], "
    "--triton-url)"
)


def choices_of(kind: type[enum.Enum]) -> list[str]:
    """A CLI's choices: the values of the library's enum, never spelled again here."""
    return [str(e.value) for e in kind]


class CliError(EdgertError):
    """An expected failure of a subcommand: printed as one line, exit status 1, no traceback."""


class UsageError(EdgertError):
    """A command line that parsed but makes no sense: printed as one line, exit status 2."""


class Output:
    """Where a subcommand's lines go: stdout, or stderr when the JSON result goes to stdout; progress lines only
    without -q."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json_target: str | None = getattr(args, "json", None)
        self.quiet = _verbosity(args) < 0
        self.text: TextIO = sys.stderr if self.json_target == "-" else sys.stdout
        self._started = time.perf_counter()

    def say(self, line: str) -> None:
        print(line, file=self.text, flush=True)

    def progress(self, line: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self._started:6.1f}s] {line}", file=sys.stderr, flush=True)

    def result(self, payload: Mapping[str, Any]) -> None:
        """Write the JSON result where --json says (nothing without --json)."""
        if self.json_target is None:
            return
        text = json.dumps(payload, indent=2, default=str) + "\n"
        if self.json_target == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            Path(self.json_target).write_text(text)


def _verbosity(args: argparse.Namespace) -> int:
    return int(
        getattr(args, "verbose", 0)
        + getattr(args, "verbose_sub", 0)
        - getattr(args, "quiet", 0)
        - getattr(args, "quiet_sub", 0)
    )


VIEW_PORT = 8080  # edgert view's HTTP port, ViewOptions.port (light here for parsing; a test holds them equal)


def _ingest_argument(p: argparse.ArgumentParser, help: str) -> None:
    """`--ingest`: the daemon's ingest endpoint, one name in every command (replay's `--to` kept as an alias)."""
    from edge_runtime.daemon.config import DEFAULT_INGEST  # parsing `serve` imports the config schema anyway

    p.add_argument("--ingest", default=DEFAULT_INGEST, metavar="ENDPOINT", help=help)
    p.add_argument("--to", dest="ingest_alias", metavar="ENDPOINT", help=argparse.SUPPRESS)


def _ingest(args: argparse.Namespace) -> str:
    if getattr(args, "ingest_alias", None):
        log.warning("--to is deprecated: use --ingest")
        return str(args.ingest_alias)
    return str(args.ingest)


def _key_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-key", type=Path, help="CURVE: the daemon's public .key file")
    p.add_argument("--client-key", type=Path, help="CURVE: this client's .key_secret file (its .key in the "
                   "daemon's authorized_clients folder)")  # fmt: skip


def _client_keys(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from edge_runtime.sdk.security import ClientKeys

    if not args.server_key and not args.client_key:
        return None
    if not (args.server_key and args.client_key):
        raise UsageError("CURVE needs both --server-key (the daemon's .key) and --client-key (your .key_secret)")
    return ClientKeys.from_files(args.server_key, args.client_key)


@contextlib.contextmanager
def _stop_on_signal() -> Iterator[threading.Event]:
    """An event that SIGINT or SIGTERM sets while the block runs (the long-running clients' way to end cleanly);
    the previous handlers come back after it."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _dicom_argument(p: argparse.ArgumentParser, from_card: bool = False) -> None:
    p.add_argument(
        "--dicom",
        choices=[o.value for o in DicomOutput],
        default=None if from_card else DicomOutput.DISPLAY8.value,
        help="how gray DICOM images are sent: the displayed image in 8 or 16 bits (modality, window and "
        "MONOCHROME1 applied), or the stored values unchanged "
        + ("(default: the model card's preprocessing.dicom, else display8)" if from_card else "(default display8)"),
    )


def _json_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", nargs="?", const="-", metavar="PATH|-",
                   help=f"write {what} as JSON to PATH, or to stdout with '-' or no value (text then goes to stderr)")  # fmt: skip


def _input_shape_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=_shape, metavar="DIMS",
                   help="fix the model input's dims, e.g. 1,3,224,224 (for dynamic models)")  # fmt: skip


def _cpu_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the cart's CPUs (every timing, as the daemon will run the model)")
    g.add_argument(
        "--config",
        type=Path,
        metavar="DAEMON_TOML",
        help="time as this daemon config runs: its model.threads and [cpu] (spin, inference_cpus)",
    )
    g.add_argument("--threads", type=int, help="intra-op threads (default: the config's, else 0 = one per core)")
    g.add_argument("--spin", choices=[s.value for s in Spin], help="when ONNX Runtime's workers busy-wait "
                   "(default: the config's, else always)")  # fmt: skip


def _cpu_setup(args: argparse.Namespace) -> CpuSetup:
    """--config, then --threads and --spin over it: the sessions every timing of the command uses."""
    setup = CpuSetup()
    if args.config is not None:
        from edge_runtime.daemon.config import load_config

        config = load_config(args.config)
        setup = config.cpu.setup(config.threads)
    if args.spin is not None:
        setup = CpuSetup(setup.threads, dataclasses.replace(setup.options, spin=Spin(args.spin)))
    if args.threads is not None:
        setup = CpuSetup(args.threads, setup.options)
    return setup


def _sampling_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, samples: int = 32) -> None:
    p.add_argument(
        "--samples", type=int, default=samples, help=f"frames taken from the data source (default {samples})"
    )
    p.add_argument("--stride", type=int, default=Sampling.stride, help="consider every Nth frame of the source only")
    p.add_argument("--sample-order", choices=choices_of(SampleOrder), default=Sampling.order.value,
                   help="spread: a seeded uniform sample over the whole source (default); first: its first frames")  # fmt: skip
    p.add_argument("--seed", type=int, default=Sampling.seed, help="seed of the spread sample")


def _sampling(args: argparse.Namespace) -> Sampling:
    return Sampling(args.samples, args.stride, SampleOrder(args.sample_order), args.seed)


def _shape(text: str) -> list[int]:
    try:
        dims = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of integers, e.g. 1,3,224,224"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"'{text}': every dimension must be a positive integer")
    return dims
