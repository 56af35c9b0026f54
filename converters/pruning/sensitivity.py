"""Sensitivity: each family's loss at each of its steps with only that family pruned, from a local proxy (the
error least squares leaves in its consumers) at every step and the whole model at a few anchors, interpolated."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from converters.evaluate import Feed, Outputs, compare, run_model
from converters.graph import ConversionError, initializers
from converters.patches import frames, im2col, plain_conv, sample_positions
from converters.progress import Eta, Progress
from converters.pruning.cost import Family
from converters.pruning.groups import ChannelStats, Role, tensor_shapes
from converters.pruning.options import PruneOptions, SensitivityCost
from converters.pruning.repair import NormalEquations, kept_columns, local_error, remove_groups
from edge_runtime.core.tasks import TaskHead


def anchors(steps: int, count: int) -> list[int]:
    """The steps measured on the whole model: one anchor is the most aggressive step (it scales the proxy); more
    spread from the least aggressive (the step the allocation takes most often) to the most."""
    if count == 1:
        return [steps - 1]
    return sorted({int(i) for i in np.round(np.linspace(0, steps - 1, min(count, steps)))})


def interpolate(proxy: Sequence[float], measured: Mapping[int, float]) -> list[float]:
    """Each step's loss from its local proxy, piecewise linear through (0, 0) and the measured anchors, made
    non-decreasing in the step (removing more never costs less)."""
    points = sorted({(0.0, 0.0), *((proxy[i], loss) for i, loss in measured.items())})
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    out: list[float] = []
    for i, e in enumerate(proxy):
        loss = measured[i] if i in measured else float(np.interp(e, xs, ys)) if xs[-1] > 0 else ys[-1]
        out.append(max(loss, out[-1] if out else 0.0))
    return out


def measure_sensitivity(
    model: onnx.ModelProto,
    families: Sequence[Family],
    stats: Mapping[str, ChannelStats],
    feeds: Sequence[Feed],
    options: PruneOptions,
    head: TaskHead | None,
    say: Progress,
) -> SensitivityCost:
    """Each family's loss at each of its steps with only that family pruned, judged with the task's metric
    against the unpruned model.

    Running the whole model at every step of every family is families x steps x frames model runs (500 s on a
    7 MB detector). Instead each step gets a local proxy, the relative error it leaves in its consumers' outputs
    after the least-squares refit (exact sums from the normal equations, no activations kept; without plain-conv
    consumers, the removed share of the family's importance), and the whole model is run at `anchors` steps only
    (the least and the most aggressive); the other steps are interpolated in the proxy. The allocation needs the ranking
    and the rough size of each loss; the gate then judges every pruned model for real."""
    started = time.perf_counter()
    reference = run_model(model, feeds)
    compare(reference, reference, head)  # timed with the run: an anchor is a run and a judgement
    one_pass = time.perf_counter() - started
    g = WeightedGraph.of(model)
    cost = SensitivityCost(families=len(families), steps=sum(len(f.kept) for f in families), frames=len(feeds))
    runs = sum(len(anchors(len(f.kept), options.anchors)) for f in families)
    consumers_of = [_refit_consumers(fam, g) for fam in families]
    batches = _batches(consumers_of, g, _EQS_BYTES)
    estimate = one_pass * (runs + 2 * len(batches))  # + the activation passes (x2: the probe)
    cost.estimated_s = round(estimate, 1)
    say(f"  sensitivity: {len(families)} layer families, {cost.steps} steps, {runs} whole-model runs and "
        f"{len(batches)} activation passes over {len(feeds)} frames: about {cost.estimated_s:.0f} s")  # fmt: skip
    if options.time_budget_s is not None and estimate > options.time_budget_s:  # unrounded: a tiny budget still holds
        raise ConversionError(
            f"pruning's sensitivity pass would take about {cost.estimated_s:.0f} s ({len(families)} layer families, "
            f"{one_pass:.1f} s per pass over {len(feeds)} frames), over its budget of {options.time_budget_s:.0f} s: "
            "raise --prune-time-budget or give fewer --prune-frames"
        )
    eta = Eta(say, "sensitivity", len(families))
    done = 0
    for batch in batches:
        cost.activation_passes += 1
        shared = _normal_equations(g, feeds, sorted({c for fi in batch for c in consumers_of[fi]}), options)
        for fi in batch:
            fam, eqs = families[fi], {c: shared[c] for c in consumers_of[fi]}
            fam.losses = _family_losses(g, fam, eqs, stats, reference, feeds, options, head, cost)
            done += 1
            eta.step(done)
    cost.seconds = round(time.perf_counter() - started, 2)
    return cost


_EQS_BYTES = 256 * 1024 * 1024  # normal equations held at once: families share an activation pass up to this


@dataclass(frozen=True)
class WeightedGraph:
    """A model with its nodes by name, initializers as arrays and tensor shapes, read once."""

    model: onnx.ModelProto
    nodes: Mapping[str, onnx.NodeProto]
    arrays: Mapping[str, np.ndarray]
    shapes: Mapping[str, list[int]]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> WeightedGraph:
        arrays = {name: numpy_helper.to_array(t) for name, t in initializers(model.graph).items()}
        return cls(model, {n.name: n for n in model.graph.node}, arrays, tensor_shapes(model))

    def weight(self, node: str) -> np.ndarray:
        return self.arrays[self.nodes[node].input[1]]

    def bias(self, node: str) -> np.ndarray | float:
        n = self.nodes[node]
        return self.arrays[n.input[2]].astype(np.float64) if len(n.input) > 2 and n.input[2] else 0.0


def _refit_consumers(fam: Family, g: WeightedGraph) -> list[str]:
    """The family's consumers the least-squares refit (and the local error) knows how to unfold: plain convs."""
    consumers = sorted({u.node for grp in fam.groups for u in grp.uses if u.role is Role.CONSUMER})
    return [c for c in consumers if plain_conv(g.nodes[c], g.weight(c))]


def _batches(consumers_of: Sequence[Sequence[str]], g: WeightedGraph, limit: int) -> list[list[int]]:
    """Families in order, grouped so that one batch's normal equations (X^T X of every consumer) fit in `limit`
    bytes; a family larger than that is a batch of its own."""
    out: list[list[int]] = []
    used, seen = limit + 1, set[str]()
    for fi, consumers in enumerate(consumers_of):
        size = 0
        for c in consumers:
            if c not in seen:
                w = g.weight(c)
                size += 8 * (w[0].size ** 2 + w[0].size * w.shape[0])
        if out and used + size <= limit:
            out[-1].append(fi)
            used += size
        else:
            out.append([fi])
            used, seen = size, set()
        seen.update(consumers)
    return out


def _normal_equations(
    g: WeightedGraph, feeds: Sequence[Feed], consumers: Sequence[str], options: PruneOptions
) -> dict[str, NormalEquations]:
    """Each consumer conv's normal equations over the frames, in one activation pass (a generator per consumer,
    seeded alike: the sampled positions do not depend on which consumers share the pass)."""
    if not consumers:
        return {}
    rngs = {c: np.random.default_rng(0) for c in consumers}
    eqs: dict[str, NormalEquations] = {}
    for values in frames(g.model, feeds, {g.nodes[c].input[0] for c in consumers}):
        for c in consumers:
            node, w = g.nodes[c], g.weight(c)
            picks = sample_positions(g.shapes[node.output[0]][2:], options.positions, rngs[c])
            cols = im2col(values[node.input[0]], node, w.shape, picks)
            flat = w.reshape(w.shape[0], -1).astype(np.float64)
            eqs.setdefault(c, NormalEquations(flat.shape[1], flat.shape[0])).add(cols, cols @ flat.T + g.bias(c))
    return eqs


def _family_losses(
    g: WeightedGraph,
    fam: Family,
    eqs: Mapping[str, NormalEquations],
    stats: Mapping[str, ChannelStats],
    reference: Sequence[Outputs],
    feeds: Sequence[Feed],
    options: PruneOptions,
    head: TaskHead | None,
    cost: SensitivityCost,
) -> list[float]:
    """One family's loss per step: the local proxy at every step, the whole model at the anchors."""
    energy = sum(eq.energy() for eq in eqs.values())
    total_score = sum(g.score for g in fam.groups) or 1.0
    proxy: list[float] = []
    refits_of: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    for step in range(len(fam.kept)):
        chosen = fam.groups[: fam.removed(step)]
        refits, residual = {}, 0.0
        for c, eq in eqs.items():
            w = g.weight(c)
            drop = [u.index for grp in chosen for u in grp.uses if u.node == c and u.role is Role.CONSUMER]
            keep = kept_columns(w.shape[1], drop, w.shape[2] * w.shape[3])
            prior = w.reshape(w.shape[0], -1)[:, keep].astype(np.float64)
            if options.repair:
                refits[c] = eq.solve(keep, prior, options.ridge)
                residual += local_error(eq, keep, *refits[c])
            else:
                bias = np.broadcast_to(g.bias(c), (w.shape[0],)).astype(np.float64)
                residual += local_error(eq, keep, prior, bias)
        refits_of.append(refits if options.repair else {})
        proxy.append(max(residual, 0.0) / energy if energy > 0 else sum(g.score for g in chosen) / total_score)
    measured = {}
    for step in anchors(len(fam.kept), options.anchors):
        candidate = remove_groups(g.model, fam.groups[: fam.removed(step)], stats, refits_of[step], g.shapes).model
        measured[step] = 1.0 - compare(reference, run_model(candidate, feeds), head).metric
        cost.whole_model_runs += 1
    return interpolate(proxy, measured)
