"""The verdict: per class, the worst class, drawn components, support and the bootstrap lower bound."""

from __future__ import annotations

import numpy as np
import pytest

from converters.evaluate import compare
from converters.judge import JudgeOptions, judge
from edge_runtime.core.package import Activation, BoxFormat, BoxLayout, DetectionSpec, OutputSpec
from edge_runtime.core.tasks import ClassificationHead, DetectionHead, SegmentationHead

SEG = SegmentationHead(OutputSpec("y", ("bg", "big", "small"), ((0, 0, 0), (255, 0, 0), (0, 255, 0))))


def _scores(labels: np.ndarray, classes: int = 3) -> dict[str, np.ndarray]:
    """One-hot scores [1, C, H, W] that argmax back to `labels`."""
    return {"y": np.eye(classes, dtype=np.float32)[labels].transpose(2, 0, 1)[None]}


def _frames(n: int, small: bool = True) -> list[np.ndarray]:
    out = []
    for i in range(n):
        m = np.zeros((48, 64), np.int64)
        m[4:40, 4:40] = 1  # a big structure
        if small:
            m[42 - i % 3 : 47 - i % 3, 50:56] = 2  # a small one, 30 px: drawn (>= 12 px)
        out.append(m)
    return out


def test_a_collapsing_small_class_is_the_verdict_not_hidden_by_the_mean() -> None:
    ref = [_scores(m) for m in _frames(20)]
    lost = []
    for m in _frames(20):
        m = m.copy()
        m[m == 2] = 0  # the candidate never draws the small structure
        lost.append(_scores(m))
    c = compare(ref, lost, SEG)
    assert c.summary is not None and c.summary == pytest.approx(0.5)  # mean over the two classes
    assert c.verdict is not None and c.verdict.worst == "small" and c.metric == 0.0 and c.lower_bound == 0.0
    big = next(v for v in c.verdict.classes if v.name == "big")
    assert big.measures == {"dice": 1.0, "components": 1.0} and big.support == 20 and big.unit == "frames"


def test_a_drawn_component_lost_is_counted_by_the_components_measure() -> None:
    frames = _frames(20)
    ref, cand = [], []
    for i, m in enumerate(frames):
        r = m.copy()
        r[2:8, 44:50] = 2  # a second small component of 36 px in every reference frame
        ref.append(_scores(r))
        cand.append(_scores(m if i < 10 else r))  # the candidate loses it in 10 of 20 frames
    v = judge(SEG, ref, cand)
    small = next(x for x in v.classes if x.name == "small")
    # 40 drawn in the reference, 30 of them found; the candidate's 30, all found: (30 + 30) / (40 + 30)
    assert small.measures["components"] == pytest.approx(60 / 70)
    assert 0.0 < small.measures["dice"] < 1.0
    assert v.worst == "small" and v.lower_bound <= v.metric


def test_the_bound_is_reproducible_and_narrows_with_more_frames() -> None:
    rng = np.random.default_rng(3)

    def noisy(n: int) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        ref, cand = [], []
        for m in _frames(n):
            c = m.copy()
            flip = rng.random(m.shape) < 0.01
            c[flip] = 0
            ref.append(_scores(m))
            cand.append(_scores(c))
        return ref, cand

    small_ref, small_cand = noisy(12)
    a, b = judge(SEG, small_ref, small_cand), judge(SEG, small_ref, small_cand)
    assert a.lower_bound == b.lower_bound and a.classes == b.classes  # a fixed seed: same outputs, same bound
    big_ref, big_cand = noisy(120)
    wide = a.metric - a.lower_bound
    narrow = judge(SEG, big_ref, big_cand)
    assert 0.0 <= narrow.metric - narrow.lower_bound < wide


def test_a_class_seen_too_rarely_is_not_judged_and_the_verdict_asks_for_data() -> None:
    frames = [_frames(1, small=i < 3)[0] for i in range(20)]  # the small class in 3 frames only
    ref = [_scores(m) for m in frames]
    v = judge(SEG, ref, ref, JudgeOptions(min_support=5))
    assert v.insufficient == ["small"] and not v.judged
    small = next(x for x in v.classes if x.name == "small")
    assert not small.judged and "only 3 frames" in small.note
    assert "'small' (3 frames)" in v.shortfall() and "--verify-samples" in v.shortfall()
    assert judge(SEG, ref, ref, JudgeOptions(min_support=3)).judged


def test_a_class_the_candidate_hallucinates_is_judged() -> None:
    frames = _frames(12, small=False)
    ref = [_scores(m) for m in frames]
    cand = []
    for m in frames:
        c = m.copy()
        c[42:47, 50:56] = 2  # the reference never has it; the candidate draws it in every frame
        cand.append(_scores(c))
    v = judge(SEG, ref, cand, JudgeOptions(min_support=10))
    small = next(x for x in v.classes if x.name == "small")
    assert small.judged and small.support == 0 and small.metric == 0.0 and v.worst == "small"


def test_classification_judges_per_class_recall_and_top1() -> None:
    head = ClassificationHead(OutputSpec("p", ("a", "b", "c"), ((0, 0, 0),) * 3))
    ref_ids = np.array([0] * 30 + [1] * 30 + [2] * 12)
    cand_ids = ref_ids.copy()
    cand_ids[-6:] = 0  # half of class c goes to a
    ref = [{"p": np.eye(3, dtype=np.float32)[[k]] * 5} for k in ref_ids]
    cand = [{"p": np.eye(3, dtype=np.float32)[[k]] * 5} for k in cand_ids]
    v = judge(head, ref, cand)
    by = {x.name: x for x in v.classes}
    assert by["c"].metric == 0.5 and by["a"].metric == 1.0 and v.worst == "c"
    assert by["top-1 (every frame)"].metric == pytest.approx(66 / 72) and by["top-1 (every frame)"].support == 72


def test_detection_judges_per_class_f1_on_decoded_boxes() -> None:
    spec = OutputSpec("det", ("polyp", "tool"), ((0, 0, 0),) * 2, Activation.SIGMOID,
                      detection=DetectionSpec(BoxLayout.NMS, BoxFormat.XYXY, scores="s", classes="c"))  # fmt: skip
    head = DetectionHead(spec, (64, 64))

    def out(boxes: list[tuple[float, float, float, float, int]]) -> dict[str, np.ndarray]:
        b = np.asarray([x[:4] for x in boxes], np.float32).reshape(1, -1, 4)
        return {"det": b, "s": np.full((1, len(boxes)), 0.9, np.float32),
                "c": np.asarray([[x[4] for x in boxes]], np.int64).reshape(1, -1)}  # fmt: skip

    ref = [out([(2, 2, 20, 20, 0), (30, 30, 50, 50, 1)]) for _ in range(12)]
    cand = [out([(2, 2, 20, 20, 0)] + ([(30, 30, 50, 50, 1)] if i % 2 else [])) for i in range(12)]
    v = judge(head, ref, cand)
    by = {x.name: x for x in v.classes}
    assert by["polyp"].metric == 1.0 and by["tool"].measures["f1"] == pytest.approx(12 / 18) and v.worst == "tool"
    assert by["tool"].support == 12 and by["tool"].unit == "boxes"


def test_numeric_verdict_is_the_worst_output_cosine() -> None:
    ref = [{"a": np.ones(8, np.float32), "b": np.arange(8, dtype=np.float32)} for _ in range(3)]
    cand = [{"a": np.ones(8, np.float32), "b": -np.arange(8, dtype=np.float32)} for _ in range(3)]
    v = judge(None, ref, cand, JudgeOptions(min_support=1))
    assert v.worst == "b" and v.metric == pytest.approx(-1.0)
