"""Evaluation of multiclass classifiers and regressors: mergeable accumulators and JSON reports.

As in ``rayml.evaluate.curves``, rows are never collected into one process. Each batch updates an
accumulator that holds only fixed-size sums (a K x K confusion matrix and log-loss / top-2 totals for
multiclass; error sums, running target moments and a bounded random sample for regression). Accumulators of
disjoint batches ``merge`` by adding, travel between Ray tasks as JSON (``to_json`` / ``from_json``), and
``report()`` turns them into a JSON-ready dict. ``multiclass_report`` and ``regression_report`` are the
one-shot forms over in-memory arrays.

Undefined values are ``None`` (JSON ``null``), never NaN and never a stand-in: precision of a class that was
never predicted, recall of a class absent from the labels, F1 of a class in neither, R^2 of a constant target.
Undefined per-class values are left out of macro and weighted averages (scikit-learn's
``zero_division=np.nan`` convention), so a class missing from a small split does not drag an average to 0.

This module is the pure core; it imports no Ray. Plots are drawn by ``rayml.evaluate.task_plots``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rayml.errors import RaymlError

LOG_LOSS_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps] so one confident miss costs 34.5, not inf
ROW_SUM_TOLERANCE = 1e-2  # a softmax row sums to 1 within float rounding; logits do not
DEFAULT_SAMPLE = 5_000  # (target, prediction) pairs a regression accumulator keeps for its plot


class MulticlassAccumulator:
    """Confusion counts, log-loss sum and top-2 hits over batches of ``(labels, probabilities)``."""

    def __init__(self, classes: Sequence[str]) -> None:
        names = [str(c) for c in classes]
        if len(names) < 2 or len(set(names)) != len(names):
            raise RaymlError(
                f"a multiclass evaluation needs at least 2 distinct class names, got {names!r}; pass the "
                "label vocabulary of the featurizer"
            )
        self.classes = names
        self.confusion = np.zeros((len(names), len(names)), dtype=np.int64)  # rows = true, columns = predicted
        self.log_loss_sum = 0.0
        self.top2_hits = 0

    @property
    def rows(self) -> int:
        return int(self.confusion.sum())

    def update(self, labels: np.ndarray, probabilities: np.ndarray) -> MulticlassAccumulator:
        """Add one batch: ``labels`` are class indexes ``[n]``, ``probabilities`` rows of a softmax ``[n, K]``."""
        y, p = _check_multiclass(labels, probabilities, len(self.classes))
        k = len(self.classes)
        predicted = np.argmax(p, axis=1)
        self.confusion += np.bincount(y * k + predicted, minlength=k * k).reshape(k, k)
        true_p = np.clip(p[np.arange(y.size), y], LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
        self.log_loss_sum += float(-np.log(true_p).sum())
        if y.size and k > 2:
            top2 = np.argpartition(-p, 1, axis=1)[:, :2]
            self.top2_hits += int((top2 == y[:, None]).any(axis=1).sum())
        return self

    def merge(self, other: MulticlassAccumulator) -> MulticlassAccumulator:
        """Add the counts of ``other`` (disjoint rows, same classes) into this one; returns self."""
        if not isinstance(other, MulticlassAccumulator) or other.classes != self.classes:
            raise RaymlError("can only merge multiclass accumulators with the same classes in the same order")
        self.confusion += other.confusion
        self.log_loss_sum += other.log_loss_sum
        self.top2_hits += other.top2_hits
        return self

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict that ``from_json`` reads back (e.g. in another Ray task)."""
        return {"classes": self.classes, "confusion": self.confusion.tolist(),
                "log_loss_sum": self.log_loss_sum, "top2_hits": self.top2_hits}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MulticlassAccumulator:
        acc = cls(_required(d, "classes", "MulticlassAccumulator"))
        confusion = np.asarray(_required(d, "confusion", "MulticlassAccumulator"))
        if confusion.shape != acc.confusion.shape or (confusion.size and confusion.dtype.kind not in "iu"):
            raise RaymlError(
                f"MulticlassAccumulator JSON has a confusion matrix of shape {confusion.shape} for "
                f"{len(acc.classes)} classes; pass the output of to_json()"
            )
        acc.confusion = confusion.astype(np.int64)
        acc.log_loss_sum = float(d.get("log_loss_sum", 0.0))
        acc.top2_hits = int(d.get("top2_hits", 0))
        return acc

    def report(self) -> dict[str, Any]:
        """Accuracy, balanced accuracy, macro/weighted/per-class precision, recall and F1, the confusion
        matrix (rows = true class), log loss, top-2 accuracy (None with 2 classes) and the row count."""
        c = self.confusion.astype(np.float64)
        n = self.rows
        tp = np.diag(c)
        support = c.sum(axis=1)
        predicted = c.sum(axis=0)
        precision = _safe_divide(tp, predicted)
        recall = _safe_divide(tp, support)
        f1 = _safe_divide(2.0 * tp, support + predicted)
        per_class = {}
        for i, name in enumerate(self.classes):
            per_class[name] = {"precision": _json(precision[i]), "recall": _json(recall[i]),
                               "f1": _json(f1[i]), "support": int(support[i])}
        return {
            "task": "multiclass",
            "rows": n,
            "classes": list(self.classes),
            "accuracy": _json(tp.sum() / n if n else math.nan),
            # The mean recall over classes present in the labels (as scikit-learn defines it).
            "balanced_accuracy": _json(_nanmean(recall)),
            "macro": {"precision": _json(_nanmean(precision)), "recall": _json(_nanmean(recall)),
                      "f1": _json(_nanmean(f1))},
            "weighted": {"precision": _json(_nanaverage(precision, support)),
                         "recall": _json(_nanaverage(recall, support)), "f1": _json(_nanaverage(f1, support))},
            "per_class": per_class,
            "confusion_matrix": self.confusion.tolist(),
            "log_loss": _json(self.log_loss_sum / n if n else math.nan),
            "top_2_accuracy": _json(self.top2_hits / n if n and len(self.classes) > 2 else math.nan),
        }


class RegressionAccumulator:
    """Error sums of the model and of a constant ``baseline`` prediction, running moments of the target
    (for R^2, merged with Chan et al.'s parallel update) and a bounded uniform sample of rows for plots."""

    def __init__(self, baseline: float, sample_size: int = DEFAULT_SAMPLE) -> None:
        if not math.isfinite(float(baseline)):
            raise RaymlError(f"baseline must be a finite number (the train-split target mean), got {baseline!r}")
        self.baseline = float(baseline)
        self.sample_size = int(sample_size)
        self.n = 0
        self.sse = 0.0
        self.sae = 0.0
        self.max_error = 0.0
        self.baseline_sse = 0.0
        self.baseline_sae = 0.0
        self.target_mean = 0.0
        self.target_m2 = 0.0  # sum of squared deviations from the mean
        # A row's pseudo-random priority (a hash of its values) decides whether it is in the sample: keeping
        # the smallest priorities of a union is a uniform sample of the union, so merged samples stay uniform,
        # and the sample does not depend on how rows were split into batches.
        self._sample = np.zeros((0, 3), dtype=np.float64)  # columns: priority, target, prediction

    def update(self, targets: np.ndarray, predictions: np.ndarray) -> RegressionAccumulator:
        """Add one batch of ``targets`` and model ``predictions`` (1-D, or ``[n, 1]``)."""
        y, p = _check_regression(targets, predictions)
        if y.size == 0:
            return self
        err = p - y
        base_err = self.baseline - y
        batch = RegressionAccumulator(self.baseline, self.sample_size)
        batch.n = int(y.size)
        batch.sse, batch.sae = float(err @ err), float(np.abs(err).sum())
        batch.max_error = float(np.abs(err).max())
        batch.baseline_sse, batch.baseline_sae = float(base_err @ base_err), float(np.abs(base_err).sum())
        batch.target_mean = float(y.mean())
        batch.target_m2 = float(((y - batch.target_mean) ** 2).sum())
        batch._sample = _smallest(np.column_stack([_priority(y, p), y, p]), self.sample_size)
        return self.merge(batch)

    def merge(self, other: RegressionAccumulator) -> RegressionAccumulator:
        """Add ``other`` (disjoint rows, same baseline) into this one; returns self."""
        if not isinstance(other, RegressionAccumulator) or other.baseline != self.baseline:
            raise RaymlError("can only merge regression accumulators with the same baseline")
        n = self.n + other.n
        if other.n:
            delta = other.target_mean - self.target_mean
            self.target_m2 += other.target_m2 + delta * delta * self.n * other.n / n
            self.target_mean += delta * other.n / n
        self.n = n
        self.sse += other.sse
        self.sae += other.sae
        self.max_error = max(self.max_error, other.max_error)
        self.baseline_sse += other.baseline_sse
        self.baseline_sae += other.baseline_sae
        self._sample = _smallest(np.concatenate([self._sample, other._sample]), self.sample_size)
        return self

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """``(targets, predictions)`` of up to ``sample_size`` rows drawn uniformly from all rows seen."""
        return self._sample[:, 1].copy(), self._sample[:, 2].copy()

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict that ``from_json`` reads back (e.g. in another Ray task)."""
        return {"baseline": self.baseline, "sample_size": self.sample_size, "n": self.n, "sse": self.sse,
                "sae": self.sae, "max_error": self.max_error, "baseline_sse": self.baseline_sse,
                "baseline_sae": self.baseline_sae, "target_mean": self.target_mean,
                "target_m2": self.target_m2, "sample": self._sample.tolist()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RegressionAccumulator:
        acc = cls(_required(d, "baseline", "RegressionAccumulator"), int(d.get("sample_size", DEFAULT_SAMPLE)))
        acc.n = int(_required(d, "n", "RegressionAccumulator"))
        for key in ("sse", "sae", "max_error", "baseline_sse", "baseline_sae", "target_mean", "target_m2"):
            setattr(acc, key, float(_required(d, key, "RegressionAccumulator")))
        sample = np.asarray(d.get("sample", []), dtype=np.float64)
        acc._sample = sample.reshape(-1, 3) if sample.size else np.zeros((0, 3), dtype=np.float64)
        return acc

    def report(self) -> dict[str, Any]:
        """RMSE, MAE, R^2 (None for a constant target), max error and rows, plus the RMSE and MAE of always
        predicting ``baseline`` and the model's RMSE as a fraction of it (below 1 = better than the mean)."""
        n = self.n
        rmse = math.sqrt(self.sse / n) if n else math.nan
        base_rmse = math.sqrt(self.baseline_sse / n) if n else math.nan
        return {
            "task": "regression",
            "rows": n,
            "rmse": _json(rmse),
            "mae": _json(self.sae / n if n else math.nan),
            "r2": _json(1.0 - self.sse / self.target_m2 if n and self.target_m2 > 0 else math.nan),
            "max_error": _json(self.max_error if n else math.nan),
            "baseline": {"prediction": self.baseline, "rmse": _json(base_rmse),
                         "mae": _json(self.baseline_sae / n if n else math.nan)},
            "rmse_vs_baseline": _json(rmse / base_rmse if n and base_rmse > 0 else math.nan),
        }


def multiclass_report(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The ``MulticlassAccumulator.report`` of one in-memory batch."""
    return MulticlassAccumulator(classes).update(labels, probabilities).report()


def regression_report(targets: np.ndarray, predictions: np.ndarray, baseline: float) -> dict[str, Any]:
    """The ``RegressionAccumulator.report`` of one in-memory batch; ``baseline`` is the train-split mean."""
    return RegressionAccumulator(baseline).update(targets, predictions).report()


def _check_multiclass(labels: Any, probabilities: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(probabilities)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    problems: list[str] = []
    if y.ndim != 1:
        problems.append(f"labels must be 1-D class indexes, got shape {y.shape}")
    if p.ndim != 2 or p.shape[1] != k:
        problems.append(f"probabilities must have shape [n, {k}] (one column per class), got {p.shape}")
    elif y.ndim == 1 and p.shape[0] != y.size:
        problems.append(f"got {p.shape[0]} probability rows but {y.size} labels; pass one label per row")
    if y.size and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= k):
        problems.append(f"labels must be integer class indexes in [0, {k}), got {y.dtype} "
                        f"from {y.min()!r} to {y.max()!r}")
    if p.dtype.kind not in "biuf":
        problems.append(f"probabilities must be numeric, got dtype {p.dtype}")
    elif p.size and not problems:
        p = p.astype(np.float64, copy=False)
        bad = ~((p >= 0.0) & (p <= 1.0))  # NaN counts as bad
        if bad.any():
            problems.append(f"{int(bad.sum())} probabilities are outside [0, 1] (first: {p[bad][0].item()!r}); "
                            "pass softmax(logits), not raw logits")
        elif (np.abs(p.sum(axis=1) - 1.0) > ROW_SUM_TOLERANCE).any():
            problems.append("probability rows must sum to 1; pass softmax(logits) over the class dimension")
    if problems:
        raise RaymlError("invalid multiclass evaluation batch: " + "; ".join(problems))
    return y.astype(np.int64), p.astype(np.float64, copy=False)


def _check_regression(targets: Any, predictions: Any) -> tuple[np.ndarray, np.ndarray]:
    columns: list[np.ndarray] = []
    problems: list[str] = []
    for name, values in (("targets", targets), ("predictions", predictions)):
        a = np.asarray(values)
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 1 or a.dtype.kind not in "biuf":
            problems.append(f"{name} must be 1-D numbers (or shape [n, 1]), got {a.dtype} {a.shape}")
            continue
        a = a.astype(np.float64, copy=False)
        if not np.isfinite(a).all():
            problems.append(f"{name} hold {int((~np.isfinite(a)).sum())} NaN or infinite values")
        columns.append(a)
    if not problems and columns[0].size != columns[1].size:
        problems.append(f"got {columns[0].size} targets but {columns[1].size} predictions")
    if problems:
        raise RaymlError("invalid regression evaluation batch: " + "; ".join(problems))
    return columns[0], columns[1]


def _smallest(rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` rows with the smallest first column (the sample priority)."""
    if rows.shape[0] <= k:
        return rows
    return rows[np.argpartition(rows[:, 0], k - 1)[:k]]


def _priority(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per row, from the bits of its target and prediction (splitmix64)."""
    with np.errstate(over="ignore"):
        z = y.view(np.uint64) ^ (p.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _required(d: Mapping[str, Any], key: str, what: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise RaymlError(f"{what} JSON is missing {key!r}; pass the output of to_json()")
    return d[key]


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _nanaverage(values: np.ndarray, weights: np.ndarray) -> float:
    keep = ~np.isnan(values)
    total = weights[keep].sum()
    return float((values[keep] * weights[keep]).sum() / total) if total > 0 else math.nan


def _json(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
