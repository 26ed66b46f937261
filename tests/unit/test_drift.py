"""Unit tests for rayml.drift: reference profiles, live bucket counts, the rolling window and PSI (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayml import drift as D
from rayml.errors import DataValidationError, RegistryError


def training(n: int = 20_000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    amount = rng.normal(0.0, 1.0, n)
    amount[rng.random(n) < 0.02] = np.nan
    names = np.array(["grocery", "fuel", "travel", "online"], dtype=object)
    merchant = rng.choice(names, n, p=[0.4, 0.3, 0.2, 0.1])
    merchant[rng.random(n) < 0.01] = None
    return {"amount": amount, "merchant": merchant}


@pytest.fixture(scope="module")
def profile() -> dict:
    return D.reference_profile(training(), numeric=["amount"], categorical=["merchant"], bins=10)


def live(n: int, seed: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    cols = training(n, seed)
    cols["amount"] = cols["amount"] + shift
    return cols


def test_profile_layout(profile: dict) -> None:
    amount = profile["features"]["amount"]
    assert amount["kind"] == "numeric"
    edges = amount["edges"]
    assert len(edges) == 9 and edges == sorted(edges)
    assert len(amount["proportions"]) == len(edges) + 2  # open-ended outer bins + null
    assert sum(amount["proportions"]) == pytest.approx(1.0)
    assert amount["proportions"][-1] == pytest.approx(0.02, abs=0.005)  # the null bucket
    # quantile bins hold about equal shares of the non-null rows
    assert np.allclose(amount["proportions"][:-1], 0.098, atol=0.005)
    merchant = profile["features"]["merchant"]
    assert merchant["values"] == ["grocery", "fuel", "travel", "online"]  # most frequent first
    assert len(merchant["proportions"]) == 4 + 2  # values + other + null
    assert merchant["proportions"][-2] == 0.0
    assert merchant["proportions"][-1] == pytest.approx(0.01, abs=0.003)
    assert profile["rows"] == 20_000 and profile["version"] == D.PROFILE_VERSION


def test_profile_round_trips_through_json(profile: dict) -> None:
    text = json.dumps(profile)
    again = json.loads(text)
    assert again == profile
    batch = live(500, seed=5)
    for name, value in D.counts(again, batch).items():
        np.testing.assert_array_equal(value, D.counts(profile, batch)[name])


def test_quantile_edges_are_deduplicated() -> None:
    values = np.array([0.0] * 900 + list(range(1, 101)), dtype=float)  # 90% ties at zero
    p = D.reference_profile({"x": values}, numeric=["x"], categorical=[], bins=10)
    edges = p["features"]["x"]["edges"]
    assert edges == sorted(set(edges)) and len(edges) < 9
    assert sum(p["features"]["x"]["proportions"]) == pytest.approx(1.0)


def test_top_k_and_other_bucket() -> None:
    cols = {"c": np.array(list("aaaabbbccd"), dtype=object)}
    p = D.reference_profile(cols, numeric=[], categorical=["c"], top_k=2)
    spec = p["features"]["c"]
    assert spec["values"] == ["a", "b"]
    assert spec["proportions"] == pytest.approx([0.4, 0.3, 0.3, 0.0])  # a, b, other (c, d), null


def test_nulls_and_unseen_values_land_in_their_buckets(profile: dict) -> None:
    batch = {
        "amount": np.array([np.nan, None, -1e9, 1e9, np.inf, "not a number", 0.0], dtype=object),
        "merchant": np.array(
            ["grocery", None, np.nan, "casino", "space travel", "fuel", "grocery"], dtype=object
        ),
    }
    got = D.counts(profile, batch)
    amount = got["amount"]
    assert amount.sum() == 7
    assert amount[-1] == 3  # NaN, None, unparseable text
    assert amount[0] == 1  # -1e9 in the open-ended first bin
    assert amount[-2] == 2  # 1e9 and +inf in the open-ended last bin
    merchant = got["merchant"]
    values = profile["features"]["merchant"]["values"]
    assert merchant[values.index("grocery")] == 2 and merchant[values.index("fuel")] == 1
    assert merchant[-2] == 2  # 'casino' and 'space travel' were never seen: other
    assert merchant[-1] == 2  # None and NaN
    assert merchant.sum() == 7


def test_numeric_codes_match_text_categories() -> None:
    p = D.reference_profile({"c": np.array([7, 7, 8])}, numeric=[], categorical=["c"])
    assert p["features"]["c"]["values"] == ["7", "8"]
    got = D.counts(p, {"c": np.array(["7", "8", "9"], dtype=object)})["c"]
    np.testing.assert_array_equal(got, [1, 1, 1, 0])


def test_counts_of_missing_column_is_a_clear_error(profile: dict) -> None:
    with pytest.raises(DataValidationError, match="merchant"):
        D.counts(profile, {"amount": np.zeros(3)})


def test_bad_profile_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="version"):
        D.counts({"version": 99, "features": {}}, {})


def test_psi_of_identical_distributions_is_zero() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    assert D.psi(p, p) == pytest.approx(0.0, abs=1e-12)
    assert D.psi(p * 1000, p) == pytest.approx(0.0, abs=1e-12)  # counts and proportions alike


def test_psi_matches_formula_and_handles_empty_buckets() -> None:
    e = np.array([0.5, 0.5])
    a = np.array([0.6, 0.4])
    assert D.psi(e, a) == pytest.approx(0.1 * np.log(0.6 / 0.5) + (-0.1) * np.log(0.4 / 0.5))
    assert np.isfinite(D.psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))
    with pytest.raises(ValueError):
        D.psi(np.array([1.0, 0.0]), np.array([0.0, 0.0]))
    with pytest.raises(ValueError):
        D.psi(np.array([1.0, 0.0]), np.array([1.0, 0.0, 0.0]))


def test_same_distribution_sample_is_stable(profile: dict) -> None:
    batch = live(5_000, seed=11)
    window = D.RollingWindow(size=5_000)
    window.add(D.counts(profile, batch), 5_000)
    scores = D.psi_by_feature(profile, window.totals())
    assert set(scores) == {"amount", "merchant"}
    assert scores["amount"] < 0.05 and scores["merchant"] < 0.05, scores


def test_shifted_normal_is_significant_drift(profile: dict) -> None:
    batch = live(5_000, seed=12, shift=1.0)  # mean moves by one standard deviation
    scores = D.psi_by_feature(profile, D.counts(profile, batch))
    assert scores["amount"] > 0.25, scores
    assert scores["merchant"] < 0.05, scores  # untouched feature stays stable


def test_rolling_window_forgets_old_batches(profile: dict) -> None:
    window = D.RollingWindow(size=2_000, slots=4)
    for i in range(4):  # 2,000 rows of drifted traffic
        window.add(D.counts(profile, live(500, seed=100 + i, shift=3.0)), 500)
    assert D.psi_by_feature(profile, window.totals())["amount"] > 0.25
    for i in range(8):  # then 4,000 rows of normal traffic
        window.add(D.counts(profile, live(500, seed=200 + i)), 500)
    assert window.rows == 2_000
    assert int(window.totals()["amount"].sum()) == 2_000
    assert D.psi_by_feature(profile, window.totals())["amount"] < 0.05


def test_rolling_window_memory_is_bounded_for_tiny_batches() -> None:
    window = D.RollingWindow(size=1_000, slots=10)
    one = {"x": np.array([1, 0, 0], dtype=np.int64)}
    for _ in range(10_000):
        window.add(one, 1)
    assert 1_000 <= window.rows <= 1_000 + 100
    assert len(window._ring) <= 11
    np.testing.assert_array_equal(window.totals()["x"], [window.rows, 0, 0])


def test_rolling_window_covers_size_rows_exactly_with_aligned_batches() -> None:
    window = D.RollingWindow(size=300, slots=3)
    for i in range(10):
        window.add({"x": np.array([i, 100 - i])}, 100)
    assert window.rows == 300
    np.testing.assert_array_equal(window.totals()["x"], [7 + 8 + 9, 93 + 92 + 91])


def test_rolling_window_rejects_a_changed_profile() -> None:
    window = D.RollingWindow(size=10)
    window.add({"x": np.zeros(3, dtype=np.int64)}, 0)
    with pytest.raises(ValueError, match="same profile"):
        window.add({"x": np.zeros(4, dtype=np.int64)}, 1)


def test_psi_by_feature_skips_features_without_rows(profile: dict) -> None:
    window = D.RollingWindow(size=100)
    assert D.psi_by_feature(profile, window.totals()) == {}


def test_profile_of_no_rows_is_an_error() -> None:
    with pytest.raises(DataValidationError, match="no rows"):
        D.reference_profile({"x": np.zeros(0)}, numeric=["x"], categorical=[])
