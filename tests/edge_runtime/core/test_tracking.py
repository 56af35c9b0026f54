"""The box tracker on scripted sequences, and the flicker count."""

from __future__ import annotations

from edge_runtime.core.package import TrackerSpec
from edge_runtime.core.protocol import Box
from edge_runtime.core.tracking import BoxTracker, flicker_events


def _box(x: float, cls: int = 0, score: float = 0.9) -> Box:
    return Box(x, 10.0, x + 20.0, 30.0, cls, score)


def test_a_box_shows_after_k_of_n_frames_with_one_track_id() -> None:
    tracker = BoxTracker(TrackerSpec(min_hits=3, window=5, max_missed=2))
    shown = [tracker.update(frame) for frame in ([_box(0)], [], [_box(1)], [_box(2)], [_box(3)])]
    assert [len(s) for s in shown] == [0, 0, 0, 1, 1]  # the third hit within five frames confirms it
    assert shown[3][0].track_id == shown[4][0].track_id == 1
    assert shown[4][0].x1 == 3.0  # the newest box, not a smoothed one


def test_a_confirmed_box_persists_for_m_missed_frames_then_goes() -> None:
    tracker = BoxTracker(TrackerSpec(min_hits=1, window=1, max_missed=2))
    assert tracker.update([_box(0)])[0].track_id == 1
    assert [len(tracker.update([])) for _ in range(3)] == [1, 1, 0]  # kept twice, then gone
    assert tracker.update([_box(0)])[0].track_id == 2  # a new object gets a new id


def test_boxes_match_within_their_class_only_and_keep_their_ids() -> None:
    tracker = BoxTracker(TrackerSpec(min_hits=1, window=1, max_missed=0))
    first = tracker.update([_box(0, cls=0), _box(100, cls=1)])
    ids = {b.class_id: b.track_id for b in first}
    second = tracker.update([_box(102, cls=1), _box(2, cls=0)])
    assert {b.class_id: b.track_id for b in second} == ids
    third = tracker.update([_box(2, cls=1)])  # a class-1 box where the class-0 object was: not its track
    assert [b.track_id for b in third] == [3]


def test_a_one_frame_false_positive_never_shows() -> None:
    tracker = BoxTracker(TrackerSpec(min_hits=2, window=3, max_missed=1))
    assert [tracker.update(f) for f in ([_box(50)], [], [], [])] == [(), (), (), ()]


def test_flicker_counts_appearances_and_disappearances() -> None:
    blinking = [[_box(0)], [], [_box(0)], [], [_box(0)]]
    counted = flicker_events(blinking)
    assert (counted.appeared, counted.disappeared) == (2, 2)
    assert counted.per_second(fps=30) == 4 * 30 / 4
    tracker = BoxTracker(TrackerSpec(min_hits=1, window=1, max_missed=1))
    steady = flicker_events([tracker.update(f) for f in blinking])
    assert (steady.appeared, steady.disappeared) == (0, 0)  # the tracker bridges one-frame gaps
