"""Unit tests for rayml.evaluate.tasks (multiclass and regression metrics) and task_plots; checked against
scikit-learn on random data. No Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from rayml.errors import RaymlError
from rayml.evaluate import task_plots
from rayml.evaluate.tasks import (
    MulticlassAccumulator,
    RegressionAccumulator,
    multiclass_report,
    regression_report,
)

CLASSES = ["cat", "dog", "fox", "owl"]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _multiclass(n: int = 2_000, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels with unequal class frequencies and probabilities that are informative but often wrong."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(k, size=n, p=np.linspace(1.0, 2.0, k) / np.linspace(1.0, 2.0, k).sum())
    logits = rng.normal(0.0, 1.5, (n, k))
    logits[np.arange(n), labels] += 1.2
    return labels, _softmax(logits)


def _assert_matches_sklearn(report: dict, y: np.ndarray, p: np.ndarray, k: int) -> None:
    pred = p.argmax(axis=1)
    labels = list(range(k))
    assert report["rows"] == y.size
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    assert report["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=labels), rel=1e-9)
    for average in ("macro", "weighted"):
        expected = skm.precision_recall_fscore_support(y, pred, labels=labels, average=average,
                                                       zero_division=np.nan)
        got = report[average]
        assert [got["precision"], got["recall"], got["f1"]] == pytest.approx(list(expected[:3]))
    per = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=np.nan)
    for i, name in enumerate(report["classes"]):
        row = report["per_class"][name]
        for got, want in zip([row["precision"], row["recall"], row["f1"]], [m[i] for m in per[:3]]):
            assert (got is None and np.isnan(want)) or got == pytest.approx(want)
        assert row["support"] == per[3][i]


def test_multiclass_matches_sklearn_on_random_data() -> None:
    y, p = _multiclass()
    report = multiclass_report(y, p, CLASSES)
    _assert_matches_sklearn(report, y, p, 4)
    assert 0.4 < report["accuracy"] < 0.8  # informative but imperfect: every metric is exercised
    assert report["top_2_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=2, labels=range(4)))
    json.dumps(report, allow_nan=False)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_class_absent_from_labels_is_none_and_left_out_of_averages() -> None:
    y, p = _multiclass(n=500, seed=3)
    keep = y != 2  # "fox" never occurs, yet the model predicts it sometimes
    y, p = y[keep], p[keep]
    assert (p.argmax(axis=1) == 2).any()
    report = multiclass_report(y, p, CLASSES)
    _assert_matches_sklearn(report, y, p, 4)
    fox = report["per_class"]["fox"]
    assert fox["support"] == 0 and fox["recall"] is None and fox["precision"] == 0.0
    assert report["confusion_matrix"][2] == [0, 0, 0, 0]
    json.dumps(report, allow_nan=False)


def test_class_never_predicted_nor_present_is_all_none() -> None:
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    report = multiclass_report(y, p, ["a", "b", "c"])
    assert report["per_class"]["c"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    _assert_matches_sklearn(report, y, p, 3)


def test_single_row() -> None:
    report = multiclass_report(np.array([1]), np.array([[0.2, 0.5, 0.3]]), ["a", "b", "c"])
    assert report["rows"] == 1 and report["accuracy"] == 1.0 and report["top_2_accuracy"] == 1.0
    assert report["log_loss"] == pytest.approx(-np.log(0.5))
    assert report["per_class"]["a"]["recall"] is None and report["macro"]["recall"] == 1.0
    json.dumps(report, allow_nan=False)


def test_perfect_predictions_and_clipped_log_loss() -> None:
    y = np.array([0, 1, 2, 2])
    p = np.eye(3)[y]
    report = multiclass_report(y, p, ["a", "b", "c"])
    assert report["accuracy"] == report["balanced_accuracy"] == report["macro"]["f1"] == 1.0
    assert report["log_loss"] == pytest.approx(0.0, abs=1e-12)
    # A confident miss costs -log(1e-15), not infinity.
    wrong = multiclass_report(np.array([0]), np.array([[0.0, 1.0, 0.0]]), ["a", "b", "c"])
    assert wrong["log_loss"] == pytest.approx(-np.log(1e-15))


def test_two_classes_have_no_top2_and_empty_input_is_all_none() -> None:
    y, p = _multiclass(n=300, k=2, seed=4)
    report = multiclass_report(y, p, ["no", "yes"])
    assert report["top_2_accuracy"] is None
    _assert_matches_sklearn(report, y, p, 2)
    empty = MulticlassAccumulator(["no", "yes"]).report()
    assert empty["rows"] == 0 and empty["accuracy"] is None and empty["log_loss"] is None
    json.dumps(empty, allow_nan=False)


def test_multiclass_accumulator_over_batches_equals_one_shot() -> None:
    y, p = _multiclass(n=3_001, seed=5)
    parts = [MulticlassAccumulator(CLASSES).update(y[i : i + 700], p[i : i + 700]) for i in range(0, y.size, 700)]
    parts.append(MulticlassAccumulator(CLASSES).update(np.zeros(0, np.int64), np.zeros((0, 4))))
    merged = MulticlassAccumulator(CLASSES)
    for part in parts:  # through JSON, as partial results cross Ray tasks
        merged.merge(MulticlassAccumulator.from_json(json.loads(json.dumps(part.to_json()))))
    whole = multiclass_report(y, p, CLASSES)
    streamed = merged.report()
    assert streamed.pop("log_loss") == pytest.approx(whole.pop("log_loss"), rel=1e-12)
    assert streamed == whole


@pytest.mark.parametrize(
    ("labels", "probabilities", "message"),
    [
        (np.array([0, 4]), _softmax(np.zeros((2, 4))), "class indexes in [0, 4)"),
        (np.array([0, 1]), np.zeros((2, 4)) + 3.0, "outside [0, 1]"),
        (np.array([0, 1]), np.full((2, 4), 0.5), "sum to 1"),
        (np.array([0, 1, 2]), _softmax(np.zeros((2, 4))), "2 probability rows but 3 labels"),
        (np.array([0, 1]), _softmax(np.zeros((2, 3))), "shape [n, 4]"),
        (np.array([0.0, 1.0]), _softmax(np.zeros((2, 4))), "integer class indexes"),
    ],
)
def test_multiclass_bad_batches_say_what_is_wrong(labels, probabilities, message) -> None:
    with pytest.raises(RaymlError, match=message.replace("[", r"\[").replace(")", r"\)")):
        MulticlassAccumulator(CLASSES).update(labels, probabilities)


def test_merge_refuses_different_classes() -> None:
    with pytest.raises(RaymlError, match="same classes"):
        MulticlassAccumulator(["a", "b"]).merge(MulticlassAccumulator(["b", "a"]))
    with pytest.raises(RaymlError, match="at least 2 distinct"):
        MulticlassAccumulator(["a", "a"])


def _regression(n: int = 2_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.normal(50.0, 10.0, n)
    return targets, targets + rng.normal(0.0, 4.0, n)


def test_regression_matches_sklearn_and_beats_the_mean() -> None:
    y, p = _regression()
    baseline = 49.0  # the train mean; off from the test mean, as it usually is
    report = regression_report(y, p, baseline)
    assert report["rows"] == y.size
    assert report["rmse"] == pytest.approx(skm.root_mean_squared_error(y, p))
    assert report["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert report["r2"] == pytest.approx(skm.r2_score(y, p))
    assert report["max_error"] == pytest.approx(skm.max_error(y, p))
    constant = np.full(y.size, baseline)
    assert report["baseline"]["rmse"] == pytest.approx(skm.root_mean_squared_error(y, constant))
    assert report["baseline"]["mae"] == pytest.approx(skm.mean_absolute_error(y, constant))
    assert report["rmse_vs_baseline"] == pytest.approx(report["rmse"] / report["baseline"]["rmse"])
    assert report["rmse_vs_baseline"] < 0.5
    json.dumps(report, allow_nan=False)


def test_regression_single_row_perfect_and_constant_target() -> None:
    one = regression_report(np.array([3.0]), np.array([[2.5]]), baseline=1.0)
    assert one["rows"] == 1 and one["rmse"] == pytest.approx(0.5) and one["r2"] is None
    assert one["baseline"]["mae"] == pytest.approx(2.0)
    y, _ = _regression(n=100)
    perfect = regression_report(y, y.copy(), baseline=float(y.mean()))
    assert perfect["rmse"] == perfect["mae"] == perfect["max_error"] == 0.0 and perfect["r2"] == 1.0
    flat = regression_report(np.full(5, 2.0), np.full(5, 2.0), baseline=2.0)
    assert flat["r2"] is None and flat["rmse_vs_baseline"] is None  # both undefined (0 / 0)
    empty = RegressionAccumulator(0.0).report()
    assert empty["rows"] == 0 and empty["rmse"] is None
    for report in (one, perfect, flat, empty):
        json.dumps(report, allow_nan=False)


def test_regression_accumulator_over_batches_equals_one_shot() -> None:
    y, p = _regression(n=10_007, seed=1)
    y = y + 1e6  # a large offset: naive sum-of-squares variance would lose R^2 precision here
    p = p + 1e6
    merged = RegressionAccumulator(1e6 + 50.0, sample_size=500)
    for i in range(0, y.size, 1_500):
        part = RegressionAccumulator(1e6 + 50.0, sample_size=500).update(y[i : i + 1_500], p[i : i + 1_500])
        merged.merge(RegressionAccumulator.from_json(json.loads(json.dumps(part.to_json()))))
    whole = regression_report(y, p, 1e6 + 50.0)
    streamed = merged.report()
    for key in ("rmse", "mae", "r2", "max_error", "rmse_vs_baseline"):
        assert streamed[key] == pytest.approx(whole[key], rel=1e-9), key
    assert streamed["baseline"] == pytest.approx(whole["baseline"], rel=1e-9)
    assert streamed["rows"] == whole["rows"]
    sample_y, sample_p = merged.sample()
    assert sample_y.size == 500
    # The sample does not depend on the batching, and it is spread over the whole split.
    one_batch = RegressionAccumulator(1e6 + 50.0, sample_size=500).update(y, p).sample()
    assert sorted(one_batch[0].tolist()) == sorted(sample_y.tolist())
    positions = np.flatnonzero(np.isin(y, sample_y))
    assert positions.min() < 500 and positions.max() > y.size - 500 and abs(positions.mean() - y.size / 2) < 800
    # The sample holds real rows: each (target, prediction) pair comes from the data.
    pairs = set(zip(y.tolist(), p.tolist()))
    assert all((a, b) in pairs for a, b in zip(sample_y.tolist(), sample_p.tolist()))


def test_regression_bad_batches_say_what_is_wrong() -> None:
    acc = RegressionAccumulator(0.0)
    with pytest.raises(RaymlError, match="2 targets but 3 predictions"):
        acc.update(np.zeros(2), np.zeros(3))
    with pytest.raises(RaymlError, match="predictions hold 1 NaN"):
        acc.update(np.zeros(2), np.array([0.0, np.nan]))
    with pytest.raises(RaymlError, match="1-D numbers"):
        acc.update(np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(RaymlError, match="same baseline"):
        acc.merge(RegressionAccumulator(1.0))
    with pytest.raises(RaymlError, match="finite number"):
        RegressionAccumulator(float("nan"))


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plots_write_pngs_at_the_given_paths(tmp_path) -> None:
    y, p = _multiclass(n=400)
    report = multiclass_report(y, p, CLASSES)
    cm = task_plots.plot_confusion_matrix(report["confusion_matrix"], CLASSES, tmp_path / "a" / "confusion.png")
    assert cm == tmp_path / "a" / "confusion.png"
    width, height = _png_size(cm)
    assert width > 200 and height > 200
    ty, tp = _regression(n=300)
    acc = RegressionAccumulator(50.0, sample_size=100).update(ty, tp)
    reg = task_plots.plot_regression(*acc.sample(), tmp_path / "regression.png", total_rows=acc.n)
    width, height = _png_size(reg)
    assert width > height > 200  # two panels side by side
    empty = task_plots.plot_regression(np.zeros(0), np.zeros(0), tmp_path / "empty.png")
    assert _png_size(empty)[0] > 0
