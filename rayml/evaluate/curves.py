"""Evaluation of binary classifiers: mergeable score histograms, curves, metrics and report.

Scores are never collected into one process. Each batch is summarized by ``histogram`` into a fixed-size
count of positives and negatives per score bin, partial histograms are summed by ``merge``, and every
ranking metric (ROC AUC, average precision, the best-F1 threshold) is read from the merged histogram.
Threshold metrics (precision, recall, F1, accuracy) come from exact per-batch ``confusion`` counts, which
also merge by summing.

Bins are uniform in logit space over ``[-LOGIT_RANGE, LOGIT_RANGE]``: a fraud model with 1-2% positives
puts most of its scores near 0, where uniform probability bins would lump them together, while logit bins
keep the same relative resolution there as around 0.5. Bin ``i`` holds exactly the scores ``p`` with
``edges[i] <= p < edges[i + 1]`` (``edges = bin_edges_probability(bins)``; the last bin also holds 1.0),
so "predicted positive iff ``p >= edges[i]``" can be read off the histogram with no rounding error.

Undefined ranking metrics (ROC AUC with one class missing, average precision with no positives) are
``nan`` from the metric functions and ``None`` (JSON ``null``) in ``report``: a stand-in such as 0.5
would look like a measurement and could pass a quality gate on a broken evaluation split.

This module is the pure core; it imports no Ray. The ROC and PR plots are drawn by ``rayml.evaluate.plots``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayml.errors import RaymlError

LOGIT_RANGE = 16.0
DEFAULT_BINS = 8192
# A histogram travels between Ray tasks as JSON; past ~1M bins it stops being a small summary.
MAX_BINS = 1 << 20
CONFUSION_KEYS = ("tp", "fp", "tn", "fn")


@dataclass(eq=False)
class ScoreHistogram:
    """Counts of positive and negative examples per logit bin; ``pos[i]``/``neg[i]`` count bin ``i``."""

    pos: np.ndarray
    neg: np.ndarray

    def __post_init__(self) -> None:
        self.pos = _as_counts(self.pos, "pos")
        self.neg = _as_counts(self.neg, "neg")
        if self.pos.shape != self.neg.shape:
            raise RaymlError(
                f"ScoreHistogram has {self.pos.size} positive bins but {self.neg.size} negative bins; "
                "both must have the same length"
            )
        _check_bins(self.pos.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoreHistogram):
            return NotImplemented
        return np.array_equal(self.pos, other.pos) and np.array_equal(self.neg, other.neg)

    @property
    def bins(self) -> int:
        """Number of bins."""
        return int(self.pos.size)

    @property
    def positives(self) -> int:
        """Number of positive examples counted."""
        return int(self.pos.sum())

    @property
    def negatives(self) -> int:
        """Number of negative examples counted."""
        return int(self.neg.sum())

    @property
    def n(self) -> int:
        """Number of examples counted."""
        return self.positives + self.negatives

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serializable dict (plain lists of ints) that ``from_json`` reads back."""
        return {"logit_range": LOGIT_RANGE, "pos": self.pos.tolist(), "neg": self.neg.tolist()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ScoreHistogram:
        """Rebuild a histogram from ``to_json`` output (e.g. after ``json.loads`` in another Ray task)."""
        if not isinstance(d, Mapping):
            raise RaymlError(f"ScoreHistogram.from_json expects a dict, got {type(d).__name__}")
        missing = [key for key in ("pos", "neg") if key not in d]
        if missing:
            raise RaymlError(f"ScoreHistogram JSON is missing {missing}; pass the output of to_json()")
        # Bins of a histogram written with another logit range mean different scores: refuse to mix them.
        if d.get("logit_range", LOGIT_RANGE) != LOGIT_RANGE:
            raise RaymlError(
                f"ScoreHistogram JSON has logit_range {d['logit_range']!r}, this rayml {LOGIT_RANGE}; "
                "recompute the histogram with the same rayml version"
            )
        return cls(pos=d["pos"], neg=d["neg"])


def histogram(probabilities: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> ScoreHistogram:
    """Summarize one batch of predicted probabilities and 0/1 labels into a ``ScoreHistogram``.

    An empty batch gives an all-zero histogram. Probabilities beyond the logit range land in the end bins.
    """
    p, y = _validate_batch(probabilities, labels)
    edges = bin_edges_probability(bins)
    # searchsorted against the probability edges (not arithmetic on logits) makes bin membership agree
    # bit for bit with the comparison `p >= threshold` used by `confusion`.
    index = np.searchsorted(edges, p, side="right") - 1
    return ScoreHistogram(
        pos=np.bincount(index[y], minlength=bins),
        neg=np.bincount(index[~y], minlength=bins),
    )


def merge(histograms: Iterable[ScoreHistogram]) -> ScoreHistogram:
    """Sum histograms of disjoint batches. Merging nothing gives an empty ``DEFAULT_BINS`` histogram."""
    pos: np.ndarray | None = None
    neg: np.ndarray | None = None
    for h in histograms:
        if not isinstance(h, ScoreHistogram):
            raise RaymlError(f"merge expects ScoreHistogram objects, got {type(h).__name__}")
        if pos is None or neg is None:
            pos, neg = h.pos.copy(), h.neg.copy()
            continue
        if h.bins != pos.size:
            raise RaymlError(
                f"cannot merge histograms with {pos.size} and {h.bins} bins; compute all with the same bins"
            )
        pos += h.pos
        neg += h.neg
    if pos is None or neg is None:
        return ScoreHistogram(pos=np.zeros(DEFAULT_BINS, np.int64), neg=np.zeros(DEFAULT_BINS, np.int64))
    return ScoreHistogram(pos=pos, neg=neg)


def bin_edges_probability(bins: int) -> np.ndarray:
    """Probability at each bin's lower edge, ascending, shape ``[bins]``.

    Edge ``i`` is ``sigmoid(-LOGIT_RANGE + i * 2 * LOGIT_RANGE / bins)``, except edge 0, which is 0.0
    because the first bin also holds every score clipped below ``-LOGIT_RANGE``.
    """
    _check_bins(bins)
    logits = -LOGIT_RANGE + np.arange(bins, dtype=np.float64) * (2.0 * LOGIT_RANGE / bins)
    edges = 1.0 / (1.0 + np.exp(-logits))
    edges[0] = 0.0
    return edges


def roc_curve(h: ScoreHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)`` at every bin edge, thresholds descending.

    The first point is ``(0, 0)`` at threshold ``inf`` (nothing predicted positive); the last is ``(1, 1)``
    at threshold 0. Rates are 0 where a class is missing.
    """
    tp, fp, thresholds = _cumulative(h)
    return _rate(fp, h.negatives), _rate(tp, h.positives), thresholds


def pr_curve(h: ScoreHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall points ``(precision, recall, thresholds)`` at every bin edge, thresholds descending.

    Where nothing is predicted positive (threshold ``inf`` and above the highest score) precision is 1.0,
    the usual convention that anchors the curve at recall 0.
    """
    tp, fp, thresholds = _cumulative(h)
    predicted = tp + fp
    precision = np.ones(predicted.size, dtype=np.float64)
    np.divide(tp, predicted, out=precision, where=predicted > 0)
    return precision, _rate(tp, h.positives), thresholds


def roc_auc(h: ScoreHistogram) -> float:
    """Area under the bin-level ROC curve; ``nan`` when there are no positives or no negatives.

    Trapezoids over the bin-level curve count a positive and a negative in the same bin as half a correct
    ranking, so this is the Mann-Whitney AUC with scores rounded to their bin.
    """
    n_pos, n_neg = h.positives, h.negatives
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Positives in strictly higher bins than each bin, counted from the top.
    pos_above = np.cumsum(h.pos[::-1])[::-1] - h.pos
    wins = float(np.dot(h.neg.astype(np.float64), pos_above + 0.5 * h.pos))
    return wins / (float(n_pos) * float(n_neg))


def average_precision(h: ScoreHistogram) -> float:
    """PR AUC as average precision: sum over bin edges of precision times the step in recall.

    All scores within a bin share one step. ``nan`` with no positives; 1.0 with positives but no negatives.
    """
    if h.positives == 0:
        return float("nan")
    precision, recall, _ = pr_curve(h)
    return float(np.sum(np.diff(recall) * precision[1:]))


def best_f1_threshold(h: ScoreHistogram) -> float:
    """The bin edge maximizing F1 when predicting positive iff ``probability >= threshold``.

    A run of bin edges with no scores between them gives the same F1; the edge in the logit middle of that
    run is returned, the largest margin the data allows. With no positives F1 is 0 everywhere and 0.5 is
    returned.
    """
    if h.positives == 0:
        return 0.5
    edges = bin_edges_probability(h.bins)
    # Counts at threshold edges[i] for i = 0..bins-1, i.e. bins i and above predicted positive.
    tp = np.cumsum(h.pos[::-1])[::-1]
    fp = np.cumsum(h.neg[::-1])[::-1]
    f1 = 2.0 * tp / (tp + fp + h.positives)
    best = f1.max()
    top = int(np.flatnonzero(f1 == best)[-1])
    low = top
    while low > 0 and f1[low - 1] == best:
        low -= 1
    if low == 0:
        # No score lies below the tied run, so there is no gap to centre in: keep the tightest edge.
        return float(edges[top])
    return float(edges[(low + top + 1) // 2])


def confusion(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, int]:
    """Exact ``tp, fp, tn, fn`` for one batch, predicting positive iff ``probability >= threshold``.

    Counts of disjoint batches merge by summing them key by key.
    """
    t = _check_threshold(threshold)
    p, y = _validate_batch(probabilities, labels)
    predicted = p >= t
    tp = int(np.count_nonzero(predicted & y))
    fp = int(np.count_nonzero(predicted & ~y))
    fn = int(np.count_nonzero(~predicted & y))
    return {"tp": tp, "fp": fp, "tn": int(p.size) - tp - fp - fn, "fn": fn}


def confusion_from_histogram(h: ScoreHistogram, threshold: float) -> dict[str, int]:
    """Exact confusion counts read from ``h`` when ``threshold`` is one of its bin edges.

    This equals ``confusion`` over the same data (e.g. at ``best_f1_threshold(h)``) without a second pass.
    Any other threshold falls inside a bin and raises.
    """
    t = _check_threshold(threshold)
    edges = bin_edges_probability(h.bins)
    i = int(np.searchsorted(edges, t))
    if i >= h.bins or edges[i] != t:
        raise RaymlError(
            f"threshold {t!r} is not a bin edge of this {h.bins}-bin histogram, so its confusion counts "
            "cannot be read from it; use confusion() on the scores or a threshold from best_f1_threshold()"
        )
    tp, fp = int(h.pos[i:].sum()), int(h.neg[i:].sum())
    return {"tp": tp, "fp": fp, "tn": h.negatives - fp, "fn": h.positives - tp}


def threshold_metrics(confusion: Mapping[str, int]) -> dict[str, float]:
    """Precision, recall, F1 and accuracy from confusion counts; 0.0 wherever a ratio is 0/0."""
    tp, fp, tn, fn = _check_confusion(confusion)
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
    }


def report(
    h: ScoreHistogram,
    confusion: Mapping[str, int],
    threshold: float,
    reference: ScoreHistogram | None = None,
) -> dict[str, Any]:
    """JSON-ready evaluation report; undefined AUCs are ``None``.

    ``confusion`` must count the same examples as ``h``; ``reference`` is another model's histogram on
    the same data (e.g. the previous registered version) and adds ``reference_roc_auc``/``reference_pr_auc``.
    """
    counts = _check_confusion(confusion)
    if sum(counts) != h.n or counts[0] + counts[3] != h.positives:
        raise RaymlError(
            f"confusion counts {dict(zip(CONFUSION_KEYS, counts))} do not cover the {h.n} examples "
            f"({h.positives} positive) of the histogram; compute both over the same data"
        )
    out: dict[str, Any] = {
        "n": h.n,
        "positives": h.positives,
        "roc_auc": _json_float(roc_auc(h)),
        "pr_auc": _json_float(average_precision(h)),
        "threshold": _check_threshold(threshold),
        **threshold_metrics(confusion),
        "confusion_matrix": dict(zip(CONFUSION_KEYS, counts)),
    }
    if reference is not None:
        out["reference_roc_auc"] = _json_float(roc_auc(reference))
        out["reference_pr_auc"] = _json_float(average_precision(reference))
    return out


def exact_roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC by ranks (Mann-Whitney U, tied scores share their mean rank); ``nan`` for one class.

    Needs every score in one array: for tests and small data, not for the distributed path.
    """
    p, y = _validate_batch(probabilities, labels)
    n_pos = int(np.count_nonzero(y))
    n_neg = int(p.size) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    # 1-based mean rank of each distinct score: the ranks it spans are (end - count, end].
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    rank_sum = float(mean_rank[inverse][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (float(n_pos) * float(n_neg))


def _validate_batch(probabilities: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(float64 probabilities, bool labels)`` or raise one error listing every problem."""
    p = _as_column(probabilities, "probabilities")
    y = _as_column(labels, "labels")
    problems: list[str] = []
    if p.shape != y.shape:
        problems.append(f"got {p.size} probabilities but {y.size} labels; pass one label per probability")
    if p.dtype.kind not in "biuf":
        problems.append(f"probabilities must be numeric, got dtype {p.dtype}")
    else:
        p = p.astype(np.float64, copy=False)
        bad = ~((p >= 0.0) & (p <= 1.0))  # written this way so NaN counts as bad
        if bad.any():
            problems.append(
                f"{int(bad.sum())} probabilities are outside [0, 1] (first: {p[bad][0].item()!r}); "
                "pass probabilities, e.g. sigmoid(logits), not raw logits"
            )
    if y.dtype.kind not in "biuf":
        problems.append(f"labels must be 0/1 (int, bool or float), got dtype {y.dtype}")
    else:
        bad = ~((y == 0) | (y == 1))
        if bad.any():
            problems.append(f"{int(bad.sum())} labels are not 0 or 1 (first: {y[bad][0].item()!r})")
    if problems:
        raise RaymlError("invalid evaluation batch: " + "; ".join(problems))
    return p, y == 1


def _as_column(values: Any, name: str) -> np.ndarray:
    """A 1-D array; an ``[n, 1]`` column (a typical single-logit model output) is flattened."""
    a = np.asarray(values)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise RaymlError(f"{name} must be 1-D (or shape [n, 1]), got shape {a.shape}")
    return a


def _as_counts(values: Any, name: str) -> np.ndarray:
    """Non-negative int64 counts, 1-D."""
    a = np.asarray(values)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise RaymlError(f"ScoreHistogram.{name} must be 1-D integer counts, got {a.dtype} {a.shape}")
    a = a.astype(np.int64)
    if (a < 0).any():
        raise RaymlError(f"ScoreHistogram.{name} has negative counts; counts must be >= 0")
    return a


def _check_bins(bins: Any) -> None:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= MAX_BINS:
        raise RaymlError(f"bins must be an integer in [1, {MAX_BINS}], got {bins!r}; default {DEFAULT_BINS}")


def _check_threshold(threshold: Any) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 <= t <= 1.0:
        raise RaymlError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    return t


def _check_confusion(confusion: Mapping[str, int]) -> tuple[int, int, int, int]:
    """``(tp, fp, tn, fn)`` as ints, after checking all four are present and non-negative integers."""
    problems: list[str] = []
    counts: list[int] = []
    for key in CONFUSION_KEYS:
        value = confusion.get(key) if isinstance(confusion, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            problems.append(f"{key}={value!r}")
        else:
            counts.append(int(value))
    if problems:
        raise RaymlError(
            f"confusion counts need non-negative integers tp, fp, tn, fn; bad: {', '.join(problems)}"
        )
    return counts[0], counts[1], counts[2], counts[3]


def _cumulative(h: ScoreHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative ``tp, fp`` from the top bin down, with thresholds ``[inf, edges descending...]``."""
    tp = np.concatenate([[0], np.cumsum(h.pos[::-1])])
    fp = np.concatenate([[0], np.cumsum(h.neg[::-1])])
    thresholds = np.concatenate([[np.inf], bin_edges_probability(h.bins)[::-1]])
    return tp, fp, thresholds


def _rate(count: np.ndarray, total: int) -> np.ndarray:
    if total == 0:
        return np.zeros(count.size, dtype=np.float64)
    return count / float(total)


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
