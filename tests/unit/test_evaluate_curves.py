"""Unit tests for rayml.evaluate: the pure histogram core (no Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rayml.evaluate import curves as ev
from rayml.evaluate import plots
from rayml.errors import RaymlError


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _fraud_like(n: int = 100_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """1.5% positives, most scores far below 1e-3 and some below sigmoid(-16) ~ 1e-7 (clipped)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.015).astype(np.int64)
    probabilities = _sigmoid(rng.normal(-9.0, 2.5, n) + 1.5 * labels)
    return probabilities, labels


def _exact_average_precision(p: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(-p, kind="stable")
    hits = y[order].astype(bool)
    precision = np.cumsum(hits) / np.arange(1, p.size + 1)
    return float(precision[hits].mean())


def test_binned_auc_matches_exact_on_imbalanced_near_zero_scores() -> None:
    p, y = _fraud_like()
    assert 0.01 < y.mean() < 0.02
    assert np.median(p) < 1e-3 and p.min() < 1e-7
    h = ev.histogram(p, y)
    assert h.n == p.size and h.positives == int(y.sum())
    exact = ev.exact_roc_auc(p, y)
    assert 0.6 < exact < 0.75
    assert abs(ev.roc_auc(h) - exact) < 1e-3
    assert abs(ev.average_precision(h) - _exact_average_precision(p, y)) < 1e-3


def test_exact_roc_auc_counts_ties_half() -> None:
    # Pairs (pos, neg): (0.9 > 0.1) win, (0.9 > 0.5) win, (0.5 = 0.5) half, (0.5 > 0.1) win -> 3.5 / 4.
    p = np.array([0.9, 0.5, 0.5, 0.1])
    y = np.array([1, 1, 0, 0])
    assert ev.exact_roc_auc(p, y) == pytest.approx(3.5 / 4)
    assert ev.roc_auc(ev.histogram(p, y)) == pytest.approx(3.5 / 4)


def test_merge_of_chunks_equals_whole() -> None:
    p, y = _fraud_like(n=20_000, seed=1)
    parts = [ev.histogram(p[i : i + 3_000], y[i : i + 3_000]) for i in range(0, p.size, 3_000)]
    parts.append(ev.histogram(np.array([]), np.array([])))  # an empty batch is all zeros
    merged = ev.merge(parts)
    whole = ev.histogram(p, y)
    assert merged == whole
    assert np.array_equal(merged.pos, whole.pos) and np.array_equal(merged.neg, whole.neg)
    assert ev.roc_auc(merged) == ev.roc_auc(whole)


def test_merge_edge_cases() -> None:
    empty = ev.merge([])
    assert empty.bins == ev.DEFAULT_BINS and empty.n == 0
    with pytest.raises(RaymlError, match="bins"):
        ev.merge([ev.histogram([0.5], [1], bins=16), ev.histogram([0.5], [1], bins=32)])


def test_json_round_trip() -> None:
    p, y = _fraud_like(n=5_000, seed=2)
    h = ev.histogram(p, y, bins=1024)
    text = json.dumps(h.to_json())
    back = ev.ScoreHistogram.from_json(json.loads(text))
    assert back == h and back.pos.dtype == np.int64 and back.bins == 1024
    with pytest.raises(RaymlError, match="logit_range"):
        ev.ScoreHistogram.from_json({**h.to_json(), "logit_range": 8.0})
    with pytest.raises(RaymlError, match="missing"):
        ev.ScoreHistogram.from_json({"pos": [1, 2]})


def test_bin_edges_and_threshold_semantics() -> None:
    edges = ev.bin_edges_probability(ev.DEFAULT_BINS)
    assert edges.shape == (ev.DEFAULT_BINS,) and edges[0] == 0.0
    assert np.all(np.diff(edges) > 0)
    assert edges[ev.DEFAULT_BINS // 2] == 0.5
    assert edges[1] == pytest.approx(_sigmoid(-ev.LOGIT_RANGE + 2 * ev.LOGIT_RANGE / ev.DEFAULT_BINS))
    # A score exactly on an edge belongs to the bin above it, as `p >= threshold` predicts positive.
    h = ev.histogram(np.array([edges[100], 0.0, 1.0]), np.array([1, 0, 1]))
    assert h.pos[100] == 1 and h.neg[0] == 1 and h.pos[-1] == 1


def test_curves_shape_and_ends() -> None:
    p, y = _fraud_like(n=5_000, seed=3)
    h = ev.histogram(p, y, bins=256)
    fpr, tpr, thr = ev.roc_curve(h)
    assert fpr.shape == tpr.shape == thr.shape == (257,)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert thr[0] == np.inf and thr[-1] == 0.0 and np.all(np.diff(thr) < 0)
    precision, recall, thr2 = ev.pr_curve(h)
    assert np.array_equal(thr, thr2) and recall[0] == 0.0 and recall[-1] == 1.0 and precision[0] == 1.0
    assert precision[-1] == pytest.approx(y.mean())


def test_best_f1_threshold_on_separable_toy() -> None:
    # Negatives at 0.2, positives at 0.8: every edge in the gap gives F1 = 1; logit(0.2) = -logit(0.8),
    # so the centre of the gap is logit 0, probability 0.5.
    p = np.array([0.2] * 50 + [0.8] * 10)
    y = np.array([0] * 50 + [1] * 10)
    h = ev.histogram(p, y)
    t = ev.best_f1_threshold(h)
    assert abs(t - 0.5) < 2e-3
    assert t in set(ev.bin_edges_probability(h.bins).tolist())
    cm = ev.confusion(p, y, t)
    assert cm == {"tp": 10, "fp": 0, "tn": 50, "fn": 0}
    assert ev.threshold_metrics(cm)["f1"] == 1.0


def test_best_f1_threshold_with_overlap_is_exact_optimum() -> None:
    p, y = _fraud_like(n=20_000, seed=4)
    h = ev.histogram(p, y, bins=512)
    t = ev.best_f1_threshold(h)
    best = ev.threshold_metrics(ev.confusion(p, y, t))["f1"]
    for edge in ev.bin_edges_probability(512):
        assert ev.threshold_metrics(ev.confusion(p, y, edge))["f1"] <= best + 1e-12
    assert ev.confusion_from_histogram(h, t) == ev.confusion(p, y, t)
    with pytest.raises(RaymlError, match="bin edge"):
        ev.confusion_from_histogram(h, 0.123456789)


def test_confusion_by_hand() -> None:
    p = np.array([0.95, 0.7, 0.5, 0.49, 0.3, 0.05], dtype=np.float32)
    y = np.array([True, False, True, True, False, False])
    assert ev.confusion(p, y, 0.5) == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    assert ev.confusion(p, y.astype(float), 0.0) == {"tp": 3, "fp": 3, "tn": 0, "fn": 0}
    assert ev.confusion(p.reshape(-1, 1), y.astype(int), 1.0) == {"tp": 0, "fp": 0, "tn": 3, "fn": 3}
    assert ev.confusion(np.array([]), np.array([]), 0.5) == {"tp": 0, "fp": 0, "tn": 0, "fn": 0}


def test_threshold_metrics_zero_division() -> None:
    assert ev.threshold_metrics({"tp": 0, "fp": 0, "tn": 0, "fn": 0}) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "accuracy": 0.0,
    }
    m = ev.threshold_metrics({"tp": 0, "fp": 0, "tn": 5, "fn": 3})  # nothing predicted positive
    assert m == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 5 / 8}
    m = ev.threshold_metrics({"tp": 0, "fp": 4, "tn": 6, "fn": 0})  # no positives at all
    assert m["recall"] == 0.0 and m["precision"] == 0.0 and m["accuracy"] == 0.6
    m = ev.threshold_metrics({"tp": 3, "fp": 1, "tn": 4, "fn": 2})
    assert m == pytest.approx({"precision": 0.75, "recall": 0.6, "f1": 6 / 9, "accuracy": 0.7})
    assert not any(math.isnan(v) for v in m.values())
    with pytest.raises(RaymlError, match="fn"):
        ev.threshold_metrics({"tp": 1, "fp": 1, "tn": 1})


def test_average_precision_perfect_and_random() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(100_000) < 0.015).astype(int)
    perfect = np.where(y == 1, rng.uniform(0.9, 1.0, y.size), rng.uniform(0.0, 0.1, y.size))
    assert ev.average_precision(ev.histogram(perfect, y)) == 1.0
    assert ev.roc_auc(ev.histogram(perfect, y)) == 1.0
    random_h = ev.histogram(rng.random(y.size), y)
    assert abs(ev.average_precision(random_h) - y.mean()) < 0.005
    assert abs(ev.roc_auc(random_h) - 0.5) < 0.03


def test_single_class_metrics_are_undefined_not_invented() -> None:
    negatives_only = ev.histogram([0.1, 0.2, 0.9], [0, 0, 0])
    assert math.isnan(ev.roc_auc(negatives_only)) and math.isnan(ev.average_precision(negatives_only))
    assert math.isnan(ev.exact_roc_auc([0.1, 0.2], [0, 0]))
    assert ev.best_f1_threshold(negatives_only) == 0.5
    positives_only = ev.histogram([0.1, 0.9], [1, 1])
    assert math.isnan(ev.roc_auc(positives_only)) and ev.average_precision(positives_only) == 1.0
    empty = ev.histogram([], [])
    assert empty.n == 0 and math.isnan(ev.roc_auc(empty))
    r = ev.report(empty, ev.confusion([], [], 0.5), 0.5)
    assert r["n"] == 0 and r["roc_auc"] is None and r["pr_auc"] is None
    json.dumps(r, allow_nan=False)


def test_input_validation_reports_every_problem() -> None:
    with pytest.raises(RaymlError) as info:
        ev.histogram(np.array([0.1, 1.5, np.nan]), np.array([0, 2]))
    message = str(info.value)
    assert "3 probabilities but 2 labels" in message
    assert "2 probabilities are outside [0, 1]" in message
    assert "1 labels are not 0 or 1" in message
    with pytest.raises(RaymlError, match="numeric"):
        ev.confusion(np.array(["a"]), np.array([1]), 0.5)
    with pytest.raises(RaymlError, match="threshold"):
        ev.confusion([0.5], [1], 1.5)
    with pytest.raises(RaymlError, match="bins"):
        ev.histogram([0.5], [1], bins=0)
    with pytest.raises(RaymlError, match="1-D"):
        ev.histogram(np.zeros((2, 2)), np.zeros((2, 2)))


def test_report_is_json_ready() -> None:
    p, y = _fraud_like(n=10_000, seed=6)
    h = ev.histogram(p, y)
    ref = ev.histogram(np.clip(p * 0.5, 0, 1), y)
    t = ev.best_f1_threshold(h)
    cm = ev.confusion(p, y, t)
    r = json.loads(json.dumps(ev.report(h, cm, t, reference=ref), allow_nan=False))
    expected = {"n", "positives", "roc_auc", "pr_auc", "threshold", "precision", "recall", "f1", "accuracy",
                "confusion_matrix", "reference_roc_auc", "reference_pr_auc"}
    assert set(r) == expected
    assert r["n"] == 10_000 and r["positives"] == int(y.sum()) and r["confusion_matrix"] == cm
    assert r["threshold"] == t and r["roc_auc"] == ev.roc_auc(h)
    assert "reference_roc_auc" not in ev.report(h, cm, t)
    with pytest.raises(RaymlError, match="same data"):
        ev.report(h, {"tp": 1, "fp": 0, "tn": 0, "fn": 0}, t)


def test_plot_curves_writes_pngs(tmp_path) -> None:
    p, y = _fraud_like(n=5_000, seed=7)
    h = ev.histogram(p, y)
    ref = ev.histogram(_sigmoid(np.log(p / (1 - p)) * 0.5), y)
    paths = plots.plot_curves(h, tmp_path / "plots", reference=ref)
    assert [x.name for x in paths] == ["roc.png", "pr.png"]
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
