"""Latency-aware INT8 placement on ONNX Runtime's CPU provider.

INT8 is not free on every layer: a layer between float ops pays a QuantizeLinear in front and a
DequantizeLinear behind it, small and depthwise convolutions gain little from integer kernels, and a Q/DQ pattern
that ORT does not fuse runs the float op *plus* the quantize/dequantize work. So before the accuracy search (a
layer slower in INT8 is never worth its accuracy cost), this stage measures what each layer costs in INT8 on
the backend that will run it:

1. **Profile** the FP32 model and the INT8 candidate with ORT's profiler, as ORT optimizes them (fusions, layout
   changes). Each optimized node is attributed to the weighted op it came from, by its weight initializer or its
   name. A layer's INT8 cost is its integer kernel plus the Q/DQ (and layout Transpose) nodes at its own
   boundaries; its FP32 cost is the fused float kernel.
2. **Check fusion.** A quantized layer whose weight still goes through a DequantizeLinear into a float op in ORT's
   optimized graph did not fuse; the report says which and why.
3. **Propose** every layer whose INT8 cost is not below its FP32 cost (or that did not fuse), and **verify** the
   proposal end to end: the candidate without those layers in INT8 is timed against the candidate with them, in
   interleaved rounds, and kept only if the whole model is faster. Per-node profiles guide; the stopwatch decides.

Layers only leave INT8 here; the accuracy gate then searches over the layers that stay.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from converters.evaluate import Feed
from converters.graph import ConversionError, consumers, initializers, producers
from converters.timing import Outcome, SpeedComparison, Stopwatch, compare_samples
from edge_runtime.backends.sessions import CpuSetup, cpu_session, ort_error

# Float ops ORT fuses into the weighted op before them (FP32: FusedConv/NCHWc; INT8: absorbed by requantization).
_FUSED_AFTER = ("Relu", "Clip", "BatchNormalization", "HardSigmoid", "LeakyRelu", "Sigmoid", "Tanh")
_BOUNDARY_OPS = ("QuantizeLinear", "DequantizeLinear", "Transpose")
_SUFFIX = re.compile(r"(_token_\d+|_nchwc)+$")


@dataclass(frozen=True)
class LayerCost:
    node: str
    op: str
    fp32_us: float | None  # median time per run of its fused float kernel; None if not found in the profile
    int8_us: float | None  # its integer kernel plus the Q/DQ/Transpose nodes at its boundaries
    fused: bool  # ORT turned its Q/DQ pattern into an integer kernel
    reason: str = ""  # why not, when not fused
    speed: SpeedComparison | None = None  # INT8 time over FP32 time, run by run, with its interval

    @property
    def pays(self) -> bool | None:
        """Whether INT8 is faster for this layer beyond the noise of its runs; None when either time is unknown
        or the runs cannot tell them apart."""
        if not self.fused:
            return False
        if self.fp32_us is None or self.int8_us is None or self.speed is None:
            return None
        if self.speed.high < 1.0:
            return True
        if self.speed.low > 1.0:
            return False
        return None


@dataclass(frozen=True)
class Trial:
    """One whole-model timing of the latency stage: the candidate with `int8_layers` layers in INT8."""

    int8_layers: int
    ms: float  # median per run


@dataclass(frozen=True)
class TimedChoice:
    """One decision of the latency stage: the candidate with `int8_layers` INT8 layers against the one with
    `against_layers` (0: FP32), and the timing behind it."""

    int8_layers: int
    against_layers: int
    speed: SpeedComparison

    @property
    def outcome(self) -> Outcome:
        return self.speed.outcome


@dataclass
class LatencyReport:
    """What the latency stage measured and decided (times are medians per run on this machine)."""

    layers: list[LayerCost] = field(default_factory=list)
    proposed: list[str] = field(default_factory=list)  # layers whose INT8 did not pay in the profile
    kept_fp32_for_speed: list[str] = field(default_factory=list)  # proposed and confirmed end to end
    int8_ms: float = 0.0  # every quantizable layer INT8
    fp32_ms: float = 0.0
    trials: list[Trial] = field(default_factory=list)  # every candidate timed, most INT8 layers first, FP32 last
    chosen_ms: float | None = None  # the fastest candidate (what the accuracy search starts from)
    final_ms: float | None = None  # the model that ships (after the accuracy search), timed beside FP32
    unfused: list[str] = field(default_factory=list)
    decisions: list[TimedChoice] = field(default_factory=list)  # every timed decision, in order
    seconds: float = 0.0


def profile_nodes(
    model: onnx.ModelProto, feeds: Sequence[Feed], runs: int, cpu: CpuSetup = CpuSetup()
) -> tuple[onnx.ModelProto, dict[str, float]]:
    """(ORT's optimized graph, median microseconds per run of each of its nodes) over `runs` runs of `feeds`."""
    optimized, per_run = _profile(model, feeds, runs, cpu)
    return optimized, {n: statistics.median(d) for n, d in per_run.items() if d}


def _profile(
    model: onnx.ModelProto, feeds: Sequence[Feed], runs: int, cpu: CpuSetup
) -> tuple[onnx.ModelProto, dict[str, list[float]]]:
    with tempfile.TemporaryDirectory(prefix="edgert-profile-") as tmp:
        try:
            sess = cpu_session(
                model.SerializeToString(), cpu,
                profile_prefix=Path(tmp) / "profile", optimized_path=Path(tmp) / "optimized.onnx",
            )  # fmt: skip
        except Exception as exc:  # ORT's own exception types
            raise ConversionError(f"ONNX Runtime cannot load the model to profile it: {ort_error(exc)}") from None
        names = [o.name for o in sess.get_outputs()]
        sess.run(names, feeds[0])  # warm-up (first-run allocations), then drop it from the profile below
        for i in range(runs):
            sess.run(names, feeds[i % len(feeds)])
        events = json.loads(Path(sess.end_profiling()).read_text())
        optimized = onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False)
    per_node: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_node[e["name"][: -len("_kernel_time")]].append(float(e["dur"]))
    # The warm-up run is the first event of each node; the rest are the timed runs.
    return optimized, {n: d[1:] if len(d) > 1 else d for n, d in per_node.items()}


def profile_runs(
    model: onnx.ModelProto, feeds: Sequence[Feed], runs: int, cpu: CpuSetup = CpuSetup()
) -> tuple[onnx.ModelProto, dict[str, list[float]]]:
    """Like `profile_nodes`, but every timed run's microseconds per node (runs in order)."""
    return _profile(model, feeds, runs, cpu)


@dataclass(frozen=True)
class _Keys:
    names: dict[str, str]  # node name, its output and those of the activations ORT fuses into it -> unit
    weights: dict[str, str]  # its weight initializer (float, or as converters.int8 names the INT8 one) -> unit


def _unit_keys(model: onnx.ModelProto, units: Sequence[str]) -> _Keys:
    """Names by which an optimized node can be traced back to a unit."""
    g = model.graph
    uses = consumers(g)
    inits = initializers(g)
    keys = _Keys({}, {})
    by_name = {n.name: n for n in g.node}
    for unit in units:
        node = by_name[unit]
        keys.names[unit] = unit
        out = node.output[0]
        while True:
            keys.names[out] = unit
            after = uses.get(out, [])
            if len(after) != 1 or after[0].op_type not in _FUSED_AFTER:
                break
            out = after[0].output[0]
        if len(node.input) > 1 and node.input[1] in inits:
            keys.weights[node.input[1]] = unit
            keys.weights[f"{node.input[1]}_int8"] = unit
    return keys


def _attribute(optimized: onnx.ModelProto, keys: _Keys) -> dict[str, list[onnx.NodeProto]]:
    """Optimized nodes of each unit: by a weight they read, else by name or suffix-stripped name (ORT names fused
    and re-laid-out nodes after the node or the output they replace). Activation inputs never count: they belong
    to the layer before."""
    found: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in optimized.graph.node:
        if node.op_type in _BOUNDARY_OPS and node.op_type != "DequantizeLinear":
            continue
        unit = next((keys.weights[t] for t in node.input if t in keys.weights), None)
        if unit is None and node.op_type != "DequantizeLinear":
            unit = keys.names.get(node.name) or keys.names.get(_SUFFIX.sub("", node.name))
        if unit is not None:
            found[unit].append(node)
    return found


def _boundary_us(optimized: onnx.ModelProto, kernel: onnx.NodeProto, times: Mapping[str, float]) -> float:
    """Q/DQ/Transpose nodes right before the kernel's activation input and right after its outputs."""
    made = producers(optimized.graph)
    uses = consumers(optimized.graph)
    total = 0.0
    t = kernel.input[0] if kernel.input else ""
    for _ in range(2):  # Q, then possibly a layout Transpose in front of it
        p = made.get(t)
        if p is None or p.op_type not in _BOUNDARY_OPS or len(uses.get(t, [])) != 1:
            break
        total += times.get(p.name, 0.0)
        t = p.input[0]
    frontier = list(kernel.output)
    for _ in range(2):
        nxt = []
        for out in frontier:
            for c in uses.get(out, []):
                if c.op_type in _BOUNDARY_OPS and c.op_type != "QuantizeLinear":
                    total += times.get(c.name, 0.0)
                    nxt.extend(c.output)
        frontier = nxt
    return total


_ORT_FUSES = (
    "Conv",
    "MatMul",
    "Gemm",
)  # weighted ops whose DQ -> op -> Q ORT's CPU provider turns into integer kernels


def _why_not_fused(int8: onnx.ModelProto, unit: str) -> str:
    node = next(n for n in int8.graph.node if n.name == unit)
    if node.op_type not in _ORT_FUSES:
        return f"ONNX Runtime's CPU provider has no integer kernel for {node.op_type}: its Q/DQ only adds work"
    made, uses = producers(int8.graph), consumers(int8.graph)
    src = made.get(node.input[0])
    if src is None or src.op_type != "DequantizeLinear":
        return "its input is not quantized (no calibrated range, or the op before it stays float)"
    after = uses.get(node.output[0], [])
    if not any(c.op_type == "QuantizeLinear" for c in after):
        ops = sorted({c.op_type for c in after}) or ["a graph output"]
        return f"its output goes to float ({', '.join(ops)}); ORT's QDQ fusion of {node.op_type} needs a QuantizeLinear after it"
    return f"ONNX Runtime did not fuse this {node.op_type} (attributes or shapes its QDQ fusion does not take)"


def layer_times(
    model: onnx.ModelProto, units: Sequence[str], feeds: Sequence[Feed], runs: int, cpu: CpuSetup = CpuSetup()
) -> dict[str, float]:
    """Median microseconds per run of each unit's fused float kernel(s) as ORT optimizes `model`; units that could
    not be traced to a kernel are left out."""
    optimized, times = profile_nodes(model, feeds, runs, cpu)
    nodes = _attribute(optimized, _unit_keys(model, units))
    out = {}
    for unit in units:
        timed = [n for n in nodes.get(unit, []) if n.name in times]
        if timed:
            out[unit] = sum(times[n.name] for n in timed)
    return out


def layer_costs(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    units: Sequence[str],
    feeds: Sequence[Feed],
    runs: int,
    cpu: CpuSetup = CpuSetup(),
) -> list[LayerCost]:
    """Per-unit FP32 and INT8 cost: medians over the runs, and INT8 over FP32 run by run with its interval."""
    per_run: list[tuple[list[float], list[float]]] = []
    ops = {n.name: n.op_type for n in fp32.graph.node}
    fp32_opt, fp32_runs = profile_runs(fp32, feeds, runs, cpu)
    int8_opt, int8_runs = profile_runs(int8, feeds, runs, cpu)
    fp32_nodes = _attribute(fp32_opt, _unit_keys(fp32, units))
    int8_nodes = _attribute(int8_opt, _unit_keys(fp32, units))
    costs = []

    def pick(d: Sequence[float], run_index: int | None) -> float:
        return statistics.median(d) if run_index is None else d[min(run_index, len(d) - 1)]

    for run_index in (None, *range(runs)):  # None: medians; then each run alone, for the interval
        fp32_times = {n: pick(d, run_index) for n, d in fp32_runs.items() if d}
        int8_times = {n: pick(d, run_index) for n, d in int8_runs.items() if d}
        for k, unit in enumerate(units):
            f32 = [n for n in fp32_nodes.get(unit, []) if n.name in fp32_times]
            fp32_us = sum(fp32_times[n.name] for n in f32) if f32 else None
            mine = int8_nodes.get(unit, [])
            float_kernels = [n for n in mine if n.op_type not in _BOUNDARY_OPS]
            unfused = any(n.op_type == "DequantizeLinear" for n in mine) or any(
                n.op_type == ops[unit] for n in float_kernels
            )
            kernels = [n for n in float_kernels if n.name in int8_times]
            int8_us = (
                sum(int8_times[n.name] + _boundary_us(int8_opt, n, int8_times) for n in kernels) if kernels else None
            )
            if unfused and int8_us is not None:
                int8_us += sum(int8_times.get(n.name, 0.0) for n in mine if n.op_type == "DequantizeLinear")
            if run_index is None:
                reason = _why_not_fused(int8, unit) if unfused else ""
                costs.append(LayerCost(unit, ops[unit], fp32_us, int8_us, not unfused, reason))
                per_run.append(([], []))
            elif fp32_us is not None and int8_us is not None:
                per_run[k][0].append(int8_us)
                per_run[k][1].append(fp32_us)
    return [
        replace(c, speed=compare_samples(i8, f32, 0.0)) if len(i8) == runs and all(f32) else c
        for c, (i8, f32) in zip(costs, per_run)
    ]


def place_for_latency(
    fp32: onnx.ModelProto,
    build: Callable[[Sequence[str]], onnx.ModelProto],
    lowered: Sequence[str],
    feeds: Sequence[Feed],
    say: Callable[[str], None] = lambda _m: None,
    runs: int = 10,
    rounds: int = 7,
    min_gain: float = 0.03,
    cpu: CpuSetup = CpuSetup(),
) -> tuple[list[str], LatencyReport]:
    """The INT8 units worth keeping for speed, of `lowered`, and what was measured. `build(units)` makes the INT8
    candidate with `units` quantized; `fp32` is the prepared float model.

    The stopwatch chooses between nested candidates, each with fewer INT8 layers: every layer INT8; without the
    layers the profile found slower in INT8; also without the layers it could not attribute (cost unknown); no
    INT8 at all. Leaving INT8 for a smaller set must make the whole model at least `min_gain` faster, and the INT8
    candidate chosen must be at least `min_gain` faster than FP32, or the model stays FP32; "faster" means beyond
    the noise (`converters.timing`), and a tie keeps the rule's safer side."""
    started = time.perf_counter()
    report = LatencyReport()
    if not lowered:
        return [], report
    feeds = list(feeds[: max(1, min(len(feeds), 4))])
    candidate = build(lowered)
    say(f"  profiling FP32 and INT8 per layer ({runs} runs each)")
    report.layers = layer_costs(fp32, candidate, lowered, feeds, runs, cpu)
    report.unfused = [c.node for c in report.layers if not c.fused]
    report.proposed = [c.node for c in report.layers if c.pays is False]
    unknown = [c.node for c in report.layers if c.pays is None]
    sets: list[list[str]] = [list(lowered)]
    for leave in (report.proposed, report.proposed + unknown):
        trial = [u for u in lowered if u not in set(leave)]
        if trial and len(trial) < len(sets[-1]):
            sets.append(trial)
    sets.append([])  # FP32: the first model timed
    say(
        f"  {len(report.proposed)} layer(s) slower in INT8, {len(unknown)} undecided or unattributed; timing the "
        f"whole model with {', '.join(str(len(t)) for t in sets)} INT8 layers (interleaved rounds until the "
        "differences clear the noise)"
    )
    index = [1, *range(2, len(sets)), 0]  # the Stopwatch's model for each set: FP32 is model 0
    watch = Stopwatch([fp32, candidate, *[build(t) for t in sets[1:-1]]], feeds, runs, cpu)
    pairs = [(index[i], index[j]) for i in range(1, len(sets)) for j in range(i)] + [(index[0], 0)]
    pairs = [(a, b) for a, b in pairs if a != b]
    settled = watch.settle(pairs, min_gain, first=rounds)
    by_set = [watch.median_ms(m) for m in index]
    report.fp32_ms, report.int8_ms = round(by_set[-1], 3), round(by_set[0], 3)
    report.trials = [Trial(len(t), round(ms, 3)) for t, ms in zip(sets, by_set)]

    def verdict(i: int, j: int) -> SpeedComparison:
        return (
            settled[(index[i], index[j])]
            if (index[i], index[j]) in settled
            else watch.compare(index[i], index[j], min_gain)
        )

    choice = 0
    for i in range(1, len(sets) - 1):  # fewer INT8 layers only for a real gain over the best so far
        c = verdict(i, choice)
        report.decisions.append(TimedChoice(len(sets[i]), len(sets[choice]), c))
        if c.outcome is Outcome.FASTER:
            choice = i
    if choice != len(sets) - 1:  # INT8 costs accuracy: it must be really faster than FP32
        c = verdict(choice, len(sets) - 1)
        report.decisions.append(TimedChoice(len(sets[choice]), 0, c))
        if c.outcome is not Outcome.FASTER:
            choice = len(sets) - 1
    keep = sets[choice]
    report.kept_fp32_for_speed = [u for u in lowered if u not in set(keep)]
    report.chosen_ms = round(by_set[choice], 3)
    report.seconds = round(time.perf_counter() - started, 2)
    return keep, report


__all__ = [
    "LatencyReport",
    "LayerCost",
    "Trial",
    "layer_times",
    "layer_costs",
    "place_for_latency",
    "profile_nodes",
    "profile_runs",
    "TimedChoice",
]
