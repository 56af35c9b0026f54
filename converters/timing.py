"""Decisions on measured time that noise cannot flip.

A shared 2-core machine varies 3-15% between runs of the same model, so a conversion never acts on one timing.
Models are timed in interleaved rounds (a slow spell hits them alike) and compared by the ratio of their times
round by round. The median ratio gets a distribution-free confidence interval from order statistics (no random
resampling: the same samples always give the same interval). "A is faster than B by `gain`" is decided only when
the whole interval lies below 1 - gain; "it is not" only when the whole interval lies above it. Undecided pairs
get more rounds, up to a limit; what is still undecided then is a tie, and a tie keeps the safer, simpler choice
(the caller's fixed rule: fewer INT8 layers never replace more without a real gain; INT8 never replaces FP32).
"""

from __future__ import annotations

import enum
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from converters.evaluate import Feed, session
from edge_runtime.backends.sessions import CpuSetup

_PARK_S = 0.05  # pause before each model's turn, so the others' spinning threads park (see Stopwatch)


class Outcome(str, enum.Enum):
    FASTER = "faster"  # the interval lies below 1 - gain
    NOT_FASTER = "not faster"  # the interval lies above 1 - gain
    TIE = "tie"  # undecided after the most rounds allowed


@dataclass(frozen=True)
class SpeedComparison:
    """Model a against model b: the median of a's time over b's, round by round, and its interval."""

    ratio: float
    low: float
    high: float
    rounds: int
    gain: float
    confidence: float

    @property
    def outcome(self) -> Outcome:
        if self.high < 1.0 - self.gain:
            return Outcome.FASTER
        if self.low > 1.0 - self.gain:
            return Outcome.NOT_FASTER
        return Outcome.TIE

    def describe(self) -> str:
        return f"{self.ratio:.3f}x (95% interval {self.low:.3f}-{self.high:.3f}, {self.rounds} rounds)"


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the order statistics that bracket the median with at least `confidence` (a
    binomial sign-test interval; with fewer than 6 values it is the whole range)."""
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    alpha = (1.0 - confidence) / 2.0
    k, below = 0, 0.0  # largest k with P(Binomial(n, 1/2) < k) <= alpha
    for j in range(n):
        below += math.comb(n, j) / 2.0**n
        if below > alpha:
            break
        k = j + 1
    k = max(k, 1)
    return statistics.median(x), x[k - 1], x[n - k]


def compare_samples(a: Sequence[float], b: Sequence[float], gain: float, confidence: float = 0.95) -> SpeedComparison:
    """a against b from paired rounds (a[i] and b[i] timed in the same round)."""
    ratios = [x / y for x, y in zip(a, b) if y > 0]
    mid, low, high = median_interval(ratios, confidence)
    return SpeedComparison(round(mid, 4), round(low, 4), round(high, 4), len(ratios), gain, confidence)


class Stopwatch:
    """Interleaved rounds over several models: each round runs every model `runs` times, after a pause that lets
    the other sessions' spinning worker threads park (on a 2-core machine they would otherwise steal cores and
    make the model timed look 1.7x slower than it runs alone)."""

    def __init__(
        self, models: Sequence[onnx.ModelProto], feeds: Sequence[Feed], runs: int, cpu: CpuSetup = CpuSetup()
    ) -> None:
        self.feeds, self.runs = list(feeds), runs
        self.sessions = []
        for m in models:
            sess = session(m, cpu=cpu)
            sess.run(None, self.feeds[0])
            self.sessions.append(sess)
        self.samples: list[list[float]] = [[] for _ in models]

    def rounds(self, count: int) -> None:
        for _ in range(count):
            for i, sess in enumerate(self.sessions):
                time.sleep(_PARK_S)
                sess.run(None, self.feeds[0])  # untimed: wakes this session's threads
                start = time.perf_counter()
                for k in range(self.runs):
                    sess.run(None, self.feeds[k % len(self.feeds)])
                self.samples[i].append((time.perf_counter() - start) * 1000.0 / self.runs)

    def median_ms(self, i: int) -> float:
        return statistics.median(self.samples[i])

    def compare(self, a: int, b: int, gain: float) -> SpeedComparison:
        return compare_samples(self.samples[a], self.samples[b], gain)

    def settle(
        self, pairs: Sequence[tuple[int, int]], gain: float, first: int = 7, most: int = 25, step: int = 6
    ) -> dict[tuple[int, int], SpeedComparison]:
        """Rounds until every pair (a, b) is decided (faster or not by `gain`) or `most` rounds are done."""
        self.rounds(first)
        while True:
            result = {p: self.compare(*p, gain) for p in pairs}
            done = len(self.samples[0])
            if all(c.outcome is not Outcome.TIE for c in result.values()) or done >= most:
                return result
            self.rounds(min(step, most - done))


def time_models(
    models: Sequence[onnx.ModelProto], feeds: Sequence[Feed], rounds: int, runs: int, cpu: CpuSetup = CpuSetup()
) -> list[float]:
    """Median ms per run of each model over interleaved rounds (for reporting; decisions use `Stopwatch.settle`)."""
    watch = Stopwatch(models, feeds, runs, cpu)
    watch.rounds(rounds)
    return [watch.median_ms(i) for i in range(len(models))]


__all__ = ["Outcome", "SpeedComparison", "Stopwatch", "compare_samples", "median_interval", "time_models"]
