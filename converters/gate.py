"""The accuracy gate shared by every precision: build a candidate from a set of lowered units (nodes in FP16,
ops in INT8), run it on the evaluation data, compare with the FP32 reference (decoded by the card's task head, as
the daemon decodes), and if it fails, find the fewest units to keep in higher precision.

The search is sensitivity first, not graph order:

1. **Rank.** Each unit's sensitivity is what keeping it alone in higher precision recovers, with every other unit
   lowered: that is the model that will ship, so interactions between layers count. It costs one evaluation per
   unit, on the first `rank_samples` evaluation frames (8 by default: the ranking only orders units; every
   decision after it is made on all frames). When no single fallback recovers anything (the damage is spread over many layers), the ranking falls back
   to quantizing each unit alone in an otherwise higher-precision model, which costs as much and still orders them.
2. **Bisect over the ranking.** The shortest prefix of the ranking kept in higher precision that passes the gate,
   assuming more higher precision never hurts: O(log n) evaluations.
3. **Prune.** Each kept unit, least sensitive first, is lowered again; if the gate still passes without it, it goes,
   and the pass repeats until no kept unit can go. A fallback that does not help is never kept.

Every evaluation is cached by its set of lowered units, so no candidate is built or run twice.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx

from converters.data import EvalData
from converters.evaluate import Comparison, Outputs, compare, run_model
from converters.progress import Eta
from edge_runtime.backends.sessions import CpuSetup
from edge_runtime.core.tasks import TaskHead

Build = Callable[[Sequence[str]], onnx.ModelProto]


class SensitivityMethod(str, enum.Enum):
    FALLBACK_ALONE = "fallback-alone"  # metric gained by keeping the unit alone in higher precision
    LOWER_ALONE = "lower-alone"  # metric lost by lowering the unit alone


@dataclass(frozen=True)
class Sensitivity:
    node: str
    op: str
    score: float  # higher = more sensitive (the metric change it is responsible for)


@dataclass
class Fallback:
    node: str
    op: str
    metric_before: float  # the final candidate with this unit lowered too
    metric_after: float  # the final candidate (this unit kept in higher precision)


@dataclass
class SearchResult:
    lowered: list[str]  # units left in the lower precision
    fallbacks: list[Fallback]
    first: Comparison  # with every unit lowered
    final: Comparison
    passed: bool
    evaluations: int
    ranking: list[Sensitivity] = field(default_factory=list)  # most sensitive first; empty if no search was needed
    ranking_method: SensitivityMethod | None = None


class Gate:
    def __init__(
        self,
        build: Build,
        data: EvalData,
        reference: list[Outputs],
        head: TaskHead | None,
        tolerance: float,
        optimize: bool = True,
        rank_samples: int = 8,
        cpu: CpuSetup = CpuSetup(),
    ) -> None:
        self.build, self.data, self.reference, self.optimize, self.cpu = build, data, reference, optimize, cpu
        self.rank_samples = rank_samples
        self.head = head  # the daemon's decoder for this task: the model is judged as it will run
        self.required = 1.0 - tolerance
        self.evaluations = 0
        self._cache: dict[tuple[frozenset[str], int], Comparison] = {}

    def evaluate(self, lowered: Sequence[str], samples: int | None = None) -> Comparison:
        """The candidate with `lowered` units, on all evaluation frames or the first `samples`."""
        n = len(self.data.feeds) if samples is None else min(samples, len(self.data.feeds))
        key = (frozenset(lowered), n)
        if key not in self._cache:
            self.evaluations += 1
            outputs = run_model(self.build(lowered), self.data.feeds[:n], self.optimize, self.cpu)
            self._cache[key] = compare(self.reference[:n], outputs, self.head)
        return self._cache[key]

    def evaluate_model(self, model: onnx.ModelProto) -> Comparison:
        """A whole candidate model (not built from units) on every search frame."""
        self.evaluations += 1
        return compare(self.reference, run_model(model, self.data.feeds, self.optimize, self.cpu), self.head)

    def passes(self, c: Comparison) -> bool:
        """The worst class's lower bound clears the requirement (classes too rare to judge are left to the
        verify split, which refuses them)."""
        return c.lower_bound >= self.required

    def rank(
        self, units: Sequence[str], op_of: dict[str, str], say: Callable[[str], None]
    ) -> tuple[list[Sensitivity], SensitivityMethod]:
        """Units ordered most sensitive first (ties keep graph order)."""
        everything = list(units)
        n = self.rank_samples
        base = self.evaluate(everything, n).metric
        say(f"  sensitivity: keeping each of {len(units)} units alone in higher precision ({n} frames)")
        eta = Eta(say, "sensitivity", len(units))
        scores: dict[str, float] = {}
        for i, u in enumerate(units):
            scores[u] = self.evaluate([v for v in everything if v != u], n).metric - base
            eta.step(i + 1)
        method = SensitivityMethod.FALLBACK_ALONE
        if max(scores.values(), default=0.0) <= 1e-9:  # no single fallback helps: order by what each breaks alone
            say(f"  no single fallback helps; lowering each of {len(units)} units alone instead")
            top = self.evaluate([], n).metric
            eta = Eta(say, "sensitivity", len(units))
            for i, u in enumerate(units):
                scores[u] = top - self.evaluate([u], n).metric
                eta.step(i + 1)
            method = SensitivityMethod.LOWER_ALONE
        order = sorted(range(len(everything)), key=lambda i: -scores[everything[i]])
        return [Sensitivity(everything[i], op_of.get(everything[i], "?"), scores[everything[i]]) for i in order], method

    def search(
        self,
        units: Sequence[str],
        budget: int,
        op_of: dict[str, str],
        say: Callable[[str], None],
        first: Comparison | None = None,  # the comparison with every unit lowered, if already measured
    ) -> SearchResult:
        everything = list(units)
        if first is not None:
            self._cache.setdefault((frozenset(everything), len(self.data.feeds)), first)
        first = self.evaluate(everything)
        if self.passes(first) or not everything:
            return SearchResult(everything, [], first, first, self.passes(first), self.evaluations)
        say(f"  {first.metric_name} {first.metric:.4f} < {self.required:.4f}: searching for the units to keep")
        if not self.passes(self.evaluate([])):  # even with nothing lowered it fails: not a precision problem
            return SearchResult(everything, [], first, first, False, self.evaluations)
        ranking, method = self.rank(everything, op_of, say)
        ranked = [s.node for s in ranking]

        def without(kept: Sequence[str]) -> list[str]:
            drop = set(kept)
            return [u for u in everything if u not in drop]

        lo, hi = 1, len(ranked)  # keeping every unit passes (checked above)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.passes(self.evaluate(without(ranked[:mid]))):
                hi = mid
            else:
                lo = mid + 1
        kept = ranked[:lo]
        say(f"  the {lo} most sensitive unit(s) kept in higher precision pass; pruning those that do not help")
        pruned = True
        while pruned:  # until no kept unit can go: removing one can make another unnecessary (cached: cheap)
            pruned = False
            for unit in reversed(list(kept)):  # least sensitive first
                trial = [u for u in kept if u != unit]
                if self.passes(self.evaluate(without(trial))):
                    kept, pruned = trial, True
        if len(kept) > budget:
            say(f"  {len(kept)} fallbacks needed, over the budget of {budget}")
            kept = kept[:budget]
        lowered = without(kept)
        final = self.evaluate(lowered)
        fallbacks = [Fallback(u, op_of.get(u, "?"), self.evaluate([*lowered, u]).metric, final.metric) for u in kept]
        for f in fallbacks:
            say(
                f"  kept {f.op} '{f.node}' in higher precision: {f.metric_before:.4f} without it, {f.metric_after:.4f} with"
            )
        return SearchResult(lowered, fallbacks, first, final, self.passes(final), self.evaluations, ranking, method)
