"""The verdict on a candidate model: how it agrees with the reference class by class, its worst class, and a
lower confidence bound on that worst class from a bootstrap over frames.

A mean over classes lets a collapsing small class hide behind the large ones, and a figure measured on a few
frames says little about the next ones. So every task is reduced to per-frame counts per class, summed over the
frames (never a mean of per-frame ratios):

- **segmentation**: Dice per class from pixel intersections and sums, and agreement of the components the overlay
  draws (8-connected, at least the head's `min_contour_px` pixels at model resolution): each drawn component of
  the reference must be matched by a component of the same class in the candidate (IoU >= 0.5, or the smaller of
  the two at least half inside the other, and at least half the drawing size) and vice versa; a class scores the
  lower of Dice and components;
- **detection**: F1 per class at IoU 0.5 against the reference's boxes, at the card's score threshold;
- **classification**: per-class recall agreement (of the frames where the reference says class k, the share where
  the candidate says k too), and top-1 agreement over all frames as one more entry;
- **no task**: cosine similarity per output.

Support is counted in the reference (frames with the class, boxes, samples). A class the reference has on fewer
than `min_support` units is not judged, and the verdict says it needs more data: it never passes on a class it
could not see. A class the reference never shows but the candidate shows on `min_support` or more units (a
hallucinated class) is judged, and scores what it matched: nothing.

The bound resamples frames with replacement (`resamples` times, a fixed seed, so the same outputs give the same
bound) and takes the (1 - confidence) quantile of the worst judged class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from calibration.errors import OptionError
from edge_runtime.core.contours import label_components
from edge_runtime.core.heads import Outputs
from edge_runtime.core.tasks import (
    ClassificationHead,
    DetectionHead,
    Detections,
    SegmentationHead,
    TaskHead,
    box_iou,
)


@dataclass(frozen=True)
class JudgeOptions:
    min_support: int = 10  # reference units (frames, boxes, samples) a class needs to be judged
    confidence: float = 0.95  # one-sided: the bound is exceeded with this probability
    resamples: int = 400
    seed: int = 0
    component_iou: float = 0.5  # a drawn component is found when one of the other side overlaps it this much

    def __post_init__(self) -> None:
        if self.min_support < 1 or self.resamples < 1 or not 0.5 <= self.confidence < 1.0:
            raise OptionError("min support and resamples must be >= 1 and the confidence in [0.5, 1)")


@dataclass(frozen=True)
class ClassVerdict:
    name: str
    support: int  # in the reference, counted in `unit`
    unit: str
    metric: float  # the lowest of its measures, over every frame
    lower: float  # its bootstrap lower bound
    measures: dict[str, float]
    judged: bool
    note: str = ""  # why not judged


@dataclass
class Verdict:
    metric_name: str
    metric: float  # the worst judged class, over every frame
    lower_bound: float  # bootstrap lower bound of the worst judged class
    worst: str | None  # that class
    frames: int
    confidence: float
    resamples: int
    min_support: int
    classes: list[ClassVerdict] = field(default_factory=list)
    insufficient: list[str] = field(default_factory=list)  # classes seen too rarely in the reference to judge

    @property
    def judged(self) -> bool:
        return not self.insufficient

    def shortfall(self) -> str:
        """What data the verdict still needs, in one phrase ('' when none)."""
        if not self.insufficient:
            return ""
        rare = ", ".join(f"'{c.name}' ({c.support} {c.unit})" for c in self.classes if c.name in set(self.insufficient))
        return (
            f"too little support to judge {rare}: each class needs {self.min_support} in the verify split; give "
            "more frames that show them (--verify SOURCE, --verify-samples N) or lower --min-support"
        )


# Per-frame counts: S[frame, class, stat]. A task's measures map the summed counts [..., class, stat] to one array
# [..., class] per measure; support and the candidate's own count come from the totals.
Measures = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class _Counts:
    names: list[str]
    unit: str
    per_frame: np.ndarray  # [F, K, J]
    measures: Measures
    support: int  # stat index counted as the reference's support
    candidate: int  # stat index counted as the candidate's (hallucinated classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    return out


def _segmentation(head: SegmentationHead, reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> _Counts:
    """Stats: intersection, candidate pixels, reference pixels, reference components, of them found, candidate
    components, of them found, frames where the reference has the class."""
    k_all = len(head.spec.labels)
    rows: list[np.ndarray] = []
    for r, c in zip(reference, candidate):
        ref, cand = head.class_map(r[head.output]), head.class_map(c[head.output])
        for t_img, p_img in zip(ref, cand):
            row = np.zeros((k_all - 1, 8))
            for k in range(1, k_all):
                t, p = t_img == k, p_img == k
                tsum, psum = int(t.sum()), int(p.sum())
                row[k - 1, :3] = (int((t & p).sum()), psum, tsum)
                row[k - 1, 7] = 1.0 if tsum else 0.0
                if tsum or psum:
                    row[k - 1, 3:7] = _component_matches(t, p, head.min_contour_px, 0.5)
            rows.append(row)

    def measures(s: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "dice": _ratio(2 * s[..., 0], s[..., 1] + s[..., 2]),
            "components": _ratio(s[..., 4] + s[..., 6], s[..., 3] + s[..., 5]),
        }

    return _Counts(list(head.spec.labels[1:]), "frames", np.stack(rows), measures, support=7, candidate=5)


def _component_matches(t: np.ndarray, p: np.ndarray, min_px: int, iou: float) -> tuple[int, int, int, int]:
    """(drawn reference components, of them matched, drawn candidate components, of them matched)."""
    lt, at = label_components(t)
    lp, ap = label_components(p)
    drawn_t, drawn_p = at >= min_px, ap >= min_px
    drawn_t[0] = drawn_p[0] = False
    if not drawn_t.any() and not drawn_p.any():
        return 0, 0, 0, 0
    both = (lt > 0) & (lp > 0)
    pairs = lt[both].astype(np.int64) * len(ap) + lp[both]
    ids, inter = np.unique(pairs, return_counts=True)
    i, j = ids // len(ap), ids % len(ap)
    # Found: the two overlap (IoU), or the smaller lies mostly inside the larger (a 14 px lesion outlined as 30 px is
    # still the finding, outlined where it is); the match may be a little under the drawing size (11 px against 12
    # is the same blob, not a lost one), but a blob of under half of it is a finding lost.
    smaller = np.minimum(at[i], ap[j])
    good = ((inter / (at[i] + ap[j] - inter) >= iou) | (inter >= iou * smaller)) & (smaller * 2 >= min_px)
    found_t = np.zeros(len(at), bool)
    found_p = np.zeros(len(ap), bool)
    found_t[i[good]] = True
    found_p[j[good]] = True
    return int(drawn_t.sum()), int((found_t & drawn_t).sum()), int(drawn_p.sum()), int((found_p & drawn_p).sum())


def _detection(head: DetectionHead, reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> _Counts:
    """Stats: true positives, false positives, false negatives (the reference's boxes as ground truth)."""
    n = len(head.spec.labels)
    rows = [_frame_matches(head.detect(r), head.detect(c), n) for r, c in zip(reference, candidate)]

    def measures(s: np.ndarray) -> dict[str, np.ndarray]:
        tp, fp, fn = s[..., 0], s[..., 1], s[..., 2]
        return {"f1": _ratio(2 * tp, 2 * tp + fp + fn)}

    counts = np.stack(rows)
    support = np.concatenate(
        [counts, (counts[..., 0] + counts[..., 2])[..., None], (counts[..., 0] + counts[..., 1])[..., None]], axis=2
    )
    return _Counts(list(head.spec.labels), "boxes", support, measures, support=3, candidate=4)


def _frame_matches(ref: Detections, cand: Detections, n_classes: int, iou: float = 0.5) -> np.ndarray:
    """[classes, (tp, fp, fn)] of one frame: candidate boxes best score first, each matched to the unmatched
    reference box of its class with the highest IoU of at least `iou`."""
    out = np.zeros((n_classes, 3))
    for k in range(n_classes):
        gt = ref.boxes[ref.classes == k]
        mine = cand.classes == k
        boxes, scores = cand.boxes[mine], cand.scores[mine]
        used = np.zeros(len(gt), bool)
        tp = 0
        for b in boxes[np.argsort(-scores, kind="stable")]:
            if not len(gt):
                break
            ious = box_iou(b[None, :], gt)[0]
            ious[used] = -1.0
            best = int(ious.argmax())
            if ious[best] >= iou:
                used[best] = True
                tp += 1
        out[k] = (tp, len(boxes) - tp, len(gt) - tp)
    return out


def _classification(head: ClassificationHead, reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> _Counts:
    """Stats: reference says k, both say k, candidate says k; the last entry is every frame (top-1)."""
    ref = np.concatenate([head.class_ids(r[head.output]) for r in reference])
    cand = np.concatenate([head.class_ids(c[head.output]) for c in candidate])
    n = len(head.spec.labels)
    counts = np.zeros((len(ref), n + 1, 3))
    rows = np.arange(len(ref))
    counts[rows, ref, 0] = 1.0
    counts[rows, cand, 2] = 1.0
    counts[rows, ref, 1] = (ref == cand).astype(np.float64)
    counts[:, n] = (1.0, 0.0, 1.0)
    counts[:, n, 1] = (ref == cand).astype(np.float64)

    def measures(s: np.ndarray) -> dict[str, np.ndarray]:
        return {"recall agreement": _ratio(s[..., 1], s[..., 0])}

    names = [*head.spec.labels, "top-1 (every frame)"]
    return _Counts(names, "frames", counts, measures, support=0, candidate=2)


def _numeric(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> _Counts:
    """Stats per output: sum of products, of squares of the reference, of the candidate; frames."""
    names = list(reference[0])
    counts = np.zeros((len(reference), len(names), 4))
    for f, (r, c) in enumerate(zip(reference, candidate)):
        for k, name in enumerate(names):
            a, b = r[name].astype(np.float64).ravel(), c[name].astype(np.float64).ravel()
            if not np.isfinite(b).all():
                counts[f, k] = (0.0, 1.0, 1.0, 1.0)  # a non-finite output scores no agreement
                continue
            counts[f, k] = (a @ b, a @ a, b @ b, 1.0)

    def measures(s: np.ndarray) -> dict[str, np.ndarray]:
        den = np.sqrt(s[..., 1] * s[..., 2])
        same = (s[..., 1] == 0) & (s[..., 2] == 0)
        return {"cosine": np.where(same, 1.0, _ratio(s[..., 0], den))}

    return _Counts(names, "frames", counts, measures, support=3, candidate=3)


# Allowed shortfall of the worst class's lower bound below 1.0 by default. A drawn component lost or a box missed
# is what the surgeon sees; these say how much of that a conversion may cost on the verify split.
DEFAULT_TOLERANCE = {"segmentation": 0.02, "detection": 0.05, "classification": 0.02, "numeric": 1e-3}

METRIC_NAMES = {
    "segmentation": "worst-class Dice / drawn components vs reference",
    "detection": "worst-class F1@0.5 vs reference boxes",
    "classification": "worst-class recall agreement / top-1 vs reference",
    "numeric": "worst-output cosine similarity",
}


def judge(
    head: TaskHead | None,
    reference: Sequence[Outputs],
    candidate: Sequence[Outputs],
    options: JudgeOptions = JudgeOptions(),
) -> Verdict:
    """The candidate's verdict against the reference, both run on the same frames."""
    if isinstance(head, SegmentationHead):
        counts, kind = _segmentation(head, reference, candidate), "segmentation"
    elif isinstance(head, DetectionHead):
        counts, kind = _detection(head, reference, candidate), "detection"
    elif isinstance(head, ClassificationHead):
        counts, kind = _classification(head, reference, candidate), "classification"
    else:
        counts, kind = _numeric(reference, candidate), "numeric"
    return _verdict(counts, METRIC_NAMES[kind], options)


def _lowest(measures: dict[str, np.ndarray]) -> np.ndarray:
    out: np.ndarray = np.minimum.reduce(list(measures.values()))
    return out


def _verdict(counts: _Counts, metric_name: str, options: JudgeOptions) -> Verdict:
    s = counts.per_frame
    frames = s.shape[0]
    total = s.sum(axis=0)
    measures = counts.measures(total)
    metric = _lowest(measures)
    support = total[:, counts.support].astype(np.int64)
    shown = total[:, counts.candidate].astype(np.int64)
    judged = (support >= options.min_support) | ((support == 0) & (shown >= options.min_support))
    rare = (support > 0) & (support < options.min_support)
    rng = np.random.default_rng(options.seed)
    weights = rng.multinomial(frames, np.full(frames, 1.0 / frames), size=options.resamples).astype(np.float64)
    boot = _lowest(counts.measures(np.einsum("bf,fkj->bkj", weights, s)))  # [B, K]
    q = 1.0 - options.confidence
    lower = np.quantile(boot, q, axis=0, method="lower")
    classes = []
    for k, name in enumerate(counts.names):
        note = ""
        if rare[k]:
            note = f"only {support[k]} {counts.unit} in the reference (needs {options.min_support})"
        elif not judged[k]:
            note = "absent from the reference" + (f", shown {shown[k]} times by the candidate" if shown[k] else "")
        classes.append(
            ClassVerdict(
                name,
                int(support[k]),
                counts.unit,
                round(float(metric[k]), 6),
                round(float(lower[k]), 6),
                {m: round(float(v[k]), 6) for m, v in measures.items()},
                bool(judged[k]),
                note,
            )
        )
    scored = judged | rare  # rare classes still count against the candidate; they only cannot make it pass
    if scored.any():
        worst = int(np.flatnonzero(scored)[np.argmin(metric[scored])])
        worst_boot = boot[:, scored].min(axis=1)
        value, bound, worst_name = (
            float(metric[worst]),
            float(np.quantile(worst_boot, q, method="lower")),
            counts.names[worst],
        )
    else:
        value, bound, worst_name = 1.0, 1.0, None
    return Verdict(
        metric_name,
        round(value, 6),
        round(bound, 6),
        worst_name,
        frames,
        options.confidence,
        options.resamples,
        options.min_support,
        classes,
        [counts.names[k] for k in np.flatnonzero(rare)],
    )


__all__ = ["DEFAULT_TOLERANCE", "METRIC_NAMES", "ClassVerdict", "JudgeOptions", "Verdict", "judge"]
