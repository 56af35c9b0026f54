"""Stable boxes: IoU tracking with hysteresis, and the flicker measure it is judged by.

A detector run frame by frame makes boxes blink: an object near the threshold is found in one frame, missed in the
next. `BoxTracker` follows each object by IoU with the previous frame (same class), gives it a track id, shows it
only once it was found in `min_hits` of its last `window` frames, and keeps its last box for at most `max_missed`
frames without a match. The persistence is bounded on purpose: a box never outlives its object by more than
`max_missed` frames, so an overlay is never more stale than that.

`flicker_events` counts what a viewer sees blink: boxes that appear or disappear between consecutive frames.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from edge_runtime.core.package import TrackerSpec
from edge_runtime.core.protocol import Box
from edge_runtime.core.tasks import box_iou


def _xyxy(boxes: Sequence[Box]) -> np.ndarray:
    return np.asarray([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float64).reshape(-1, 4)


def match(previous: Sequence[Box], current: Sequence[Box], threshold: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching, highest IoU first, same class only, IoU at least `threshold`."""
    if not previous or not current:
        return []
    iou = box_iou(_xyxy(previous), _xyxy(current))
    same = np.asarray([[p.class_id == c.class_id for c in current] for p in previous])
    iou = np.where(same, iou, -1.0)
    pairs: list[tuple[int, int]] = []
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(current))
        if iou[i, j] < threshold or iou[i, j] <= 0:
            break
        if any(i == a or j == b for a, b in pairs):
            continue
        pairs.append((i, j))
    return pairs


@dataclass
class _Track:
    track_id: int
    box: Box
    hits: deque[bool]
    confirmed: bool = False
    missed: int = 0


@dataclass
class BoxTracker:
    """Per-stream state: feed each frame's detections to `update`, draw what it returns."""

    spec: TrackerSpec = field(default_factory=TrackerSpec)
    _tracks: list[_Track] = field(default_factory=list)
    _next_id: int = 1

    def update(self, boxes: Sequence[Box]) -> tuple[Box, ...]:
        """The boxes to show for this frame: confirmed tracks, each with its track id, best score first."""
        previous = [t.box for t in self._tracks]
        pairs = match(previous, boxes, self.spec.iou)
        matched_tracks = {i for i, _ in pairs}
        matched_boxes = {j for _, j in pairs}
        for i, j in pairs:
            track = self._tracks[i]
            track.box, track.missed = boxes[j], 0
            track.hits.append(True)
        for i, track in enumerate(self._tracks):
            if i not in matched_tracks:
                track.hits.append(False)
                track.missed += 1
        for j, box in enumerate(boxes):
            if j not in matched_boxes:
                self._tracks.append(_Track(self._next_id, box, deque([True], maxlen=self.spec.window)))
                self._next_id += 1
        alive: list[_Track] = []
        for track in self._tracks:
            track.confirmed = track.confirmed or sum(track.hits) >= self.spec.min_hits
            if track.confirmed and track.missed > self.spec.max_missed:
                continue  # gone for longer than we may keep showing it
            if not track.confirmed and not any(track.hits):
                continue  # never made it within its window
            alive.append(track)
        self._tracks = alive
        shown = [replace(t.box, track_id=t.track_id) for t in alive if t.confirmed and t.missed <= self.spec.max_missed]
        return tuple(sorted(shown, key=lambda b: -b.score))

    def reset(self) -> None:
        self._tracks.clear()


@dataclass(frozen=True)
class Flicker:
    frames: int
    appeared: int  # boxes with no match (IoU >= 0.5, same class) in the previous frame
    disappeared: int  # boxes of the previous frame with no match in this one

    def per_second(self, fps: float) -> float:
        """Appear + disappear events per second of video."""
        return (self.appeared + self.disappeared) * fps / max(1, self.frames - 1)


def flicker_events(frames: Sequence[Sequence[Box]], iou: float = 0.5) -> Flicker:
    """Count boxes appearing and disappearing between consecutive frames of what a display shows."""
    appeared = disappeared = 0
    for before, after in zip(frames[:-1], frames[1:]):
        n = len(match(before, after, iou))
        appeared += len(after) - n
        disappeared += len(before) - n
    return Flicker(len(frames), appeared, disappeared)
