"""ETA lines for the long loops of a conversion."""

from __future__ import annotations

import time

from converters.progress import Eta


def test_eta_says_how_far_and_how_long_is_left_at_most_every_few_seconds() -> None:
    lines: list[str] = []
    eta = Eta(lines.append, "calibration frames", 4, every_s=0.0)
    time.sleep(0.02)
    eta.step(1)
    assert len(lines) == 1 and lines[0].startswith("  calibration frames: 1/4, about ") and lines[0].endswith(" s left")
    eta.step(4)  # done: the caller's next line says so
    assert len(lines) == 1
    quiet = Eta(lines.append, "sensitivity", 100, every_s=60.0)
    for i in range(1, 100):
        quiet.step(i)
    assert len(lines) == 1  # nothing within the first minute
