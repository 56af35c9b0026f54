"""Progress lines with an ETA for the counted loops of a conversion (calibration frames, sensitivity evaluations).

Library code never prints: it calls a `Progress` callback (the CLI prints the lines with elapsed time). `Eta`
turns "item i of n done" into at most one line every few seconds, with the time left estimated from the mean so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Progress = Callable[[str], None]


class Eta:
    """Reports `what: i/n, ETA s` for a loop of `total` items, at most once every `every_s` seconds."""

    def __init__(self, say: Progress, what: str, total: int, every_s: float = 5.0) -> None:
        self.say, self.what, self.total, self.every_s = say, what, total, every_s
        self.started = self.last = time.perf_counter()

    def step(self, done: int) -> None:
        now = time.perf_counter()
        if done >= self.total or now - self.last < self.every_s or done <= 0:
            return
        self.last = now
        left = (now - self.started) / done * (self.total - done)
        self.say(f"  {self.what}: {done}/{self.total}, about {left:.0f} s left")
