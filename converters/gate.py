"""The accuracy gate shared by every precision: build a candidate from a set of lowered units (nodes in FP16,
ops in INT8), run it on the evaluation data, compare with the FP32 reference, and if it fails, find the units
to keep in higher precision.

The search bisects over the units in graph order: the shortest prefix kept in higher precision that makes the gate
pass ends in a unit that is needed; keep it, and repeat. That finds each necessary unit in O(log n) evaluations,
under the assumption that more higher precision never makes a model less accurate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx

from converters.data import EvalData
from converters.evaluate import Comparison, Outputs, compare, run_model
from edge_runtime.tasks import TaskHead

Build = Callable[[Sequence[str]], onnx.ModelProto]


@dataclass
class Fallback:
    node: str
    op: str
    metric_before: float
    metric_after: float


@dataclass
class SearchResult:
    lowered: list[str]  # units left in the lower precision
    fallbacks: list[Fallback]
    first: Comparison  # with every unit lowered
    final: Comparison
    passed: bool
    evaluations: int


class Gate:
    def __init__(
        self,
        build: Build,
        data: EvalData,
        reference: list[Outputs],
        head: TaskHead | None,
        tolerance: float,
        optimize: bool = True,
    ) -> None:
        self.build, self.data, self.reference, self.optimize = build, data, reference, optimize
        self.head = head  # the daemon's decoder for this task: the model is judged as it will run
        self.required = 1.0 - tolerance
        self.evaluations = 0

    def evaluate(self, lowered: Sequence[str]) -> Comparison:
        self.evaluations += 1
        outputs = run_model(self.build(lowered), self.data.feeds, optimize=self.optimize)
        return compare(self.reference, outputs, self.head)

    def passes(self, c: Comparison) -> bool:
        return c.metric >= self.required

    def _culprit(self, units: list[str]) -> int | None:
        if not self.passes(self.evaluate([])):
            return None  # even with nothing lowered it fails: not a precision problem
        lo, hi = 1, len(units)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.passes(self.evaluate(units[mid:])):
                hi = mid
            else:
                lo = mid + 1
        return lo - 1

    def search(
        self,
        units: Sequence[str],
        budget: int,
        op_of: dict[str, str],
        say: Callable[[str], None],
        first: Comparison | None = None,  # the comparison with every unit lowered, if already measured
    ) -> SearchResult:
        lowered = list(units)
        first = result = first if first is not None else self.evaluate(lowered)
        fallbacks: list[Fallback] = []
        while not self.passes(result) and lowered and len(fallbacks) < budget:
            say(f"  {result.metric_name} {result.metric:.4f} < {self.required:.4f}: searching for the node to keep")
            index = self._culprit(lowered)
            if index is None:
                break
            node = lowered.pop(index)
            after = self.evaluate(lowered)
            fallbacks.append(Fallback(node, op_of.get(node, "?"), result.metric, after.metric))
            say(
                f"  kept {op_of.get(node, '?')} '{node}' in higher precision: {result.metric:.4f} -> {after.metric:.4f}"
            )
            result = after
        return SearchResult(lowered, fallbacks, first, result, self.passes(result), self.evaluations)
