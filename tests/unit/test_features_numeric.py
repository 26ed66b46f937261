"""Unit tests for rayml.features numeric featurizers and their mergeable statistics (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from rayml.errors import RegistryError
from rayml.features import registry
from rayml.features import stats as S
from rayml.features.base import FeatureInputError
from rayml.features.numeric import Clip, Impute, Log1p, MinMax, Standardize


def fit(featurizer, *batches):
    stats = None
    for batch in batches:
        part = featurizer.partial_fit(batch)
        json.dumps(part, allow_nan=False)  # statistics cross Ray workers as JSON
        stats = part if stats is None else featurizer.merge(stats, part)
    return featurizer.finalize(stats or {})


def splits(table: pa.Table, k: int) -> list[pa.Table]:
    bounds = np.linspace(0, table.num_rows, k + 1).astype(int)
    return [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]


def roundtrip(state):
    return registry.loads(registry.dumps(state))


@pytest.fixture(scope="module")
def data() -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.lognormal(3.0, 1.0, 3000)
    x[rng.random(3000) < 0.1] = np.nan
    values = [None if np.isnan(v) else float(v) for v in x]
    values[5] = float("inf")  # non-finite counts as missing
    x[5] = np.nan
    return pa.table({"x": pa.array(values, pa.float64())}), x


# ---------------------------------------------------------------- statistics


def test_moments_merge_exactly_even_far_from_zero():
    rng = np.random.default_rng(0)
    x = 1e9 + rng.normal(0, 1, 10_000)
    merged = [0.0, 0.0, 0.0]
    for part in np.array_split(x, 13):
        merged = S.merge_moments(merged, S.moments(part))
    assert merged[0] == x.size
    assert merged[1] == pytest.approx(x.mean(), rel=1e-15)
    assert S.std(merged) == pytest.approx(x.std(), rel=1e-6)


@pytest.mark.parametrize("dist", ["lognormal", "normal", "with_zeros", "integers"])
def test_sketch_quantiles_within_relative_error_of_exact_lower_quantile(dist):
    rng = np.random.default_rng(1)
    x = {
        "lognormal": rng.lognormal(0, 2, 20_000),
        "normal": rng.normal(-3, 10, 20_000),
        "with_zeros": np.concatenate([np.zeros(5000), rng.exponential(1, 15_000)]),
        "integers": rng.integers(-50, 50, 20_000).astype(float),
    }[dist]
    alpha = 0.01
    sketch = S.sketch(x, alpha)
    for q in (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0):
        exact = np.quantile(x, q, method="lower")
        got = S.quantile(sketch, q)
        assert abs(got - exact) <= alpha * abs(exact) + 1e-9, (q, got, exact)


def test_sketch_merge_equals_sketch_of_all_values_in_any_order():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 100, 5000)
    parts = [S.sketch(p, 0.005) for p in np.array_split(x, 5)]
    forward = parts[0]
    for p in parts[1:]:
        forward = S.merge_sketches(forward, p)
    backward = parts[-1]
    for p in reversed(parts[:-1]):
        backward = S.merge_sketches(p, backward)
    assert forward == backward == S.sketch(x, 0.005)
    with pytest.raises(ValueError, match="alpha"):
        S.merge_sketches(parts[0], S.sketch(x, 0.01))


def test_empty_sketch_has_no_quantile():
    assert S.quantile(S.sketch(np.array([np.nan]), 0.01), 0.5) is None


# ---------------------------------------------------------------- standardize / min-max


def test_standardize_matches_numpy_and_fits_the_same_in_splits(data):
    table, x = data
    featurizer = Standardize(column="x")
    state = fit(featurizer, table)
    finite = x[np.isfinite(x)]
    assert state["params"]["center"] == pytest.approx(finite.mean(), rel=1e-12)
    assert state["params"]["scale"] == pytest.approx(finite.std(), rel=1e-12)
    split = fit(featurizer, table.slice(0, 0), *splits(table, 3))
    assert split["params"]["center"] == pytest.approx(state["params"]["center"], rel=1e-12)
    assert split["params"]["scale"] == pytest.approx(state["params"]["scale"], rel=1e-12)
    out = registry.transform(state, table)["x"]
    np.testing.assert_allclose(out, (x - finite.mean()) / finite.std(), rtol=1e-9)  # NaN stays NaN
    assert np.isnan(out[5])


@pytest.mark.parametrize(
    "featurizer", [Standardize(column="x"), MinMax(column="x")], ids=["standardize", "min_max"]
)
@pytest.mark.parametrize(
    "column",
    [pa.nulls(4, pa.float64()), pa.nulls(4), pa.array([3.0, 3.0, 3.0, None])],
    ids=["null", "nulltype", "const"],
)
def test_degenerate_columns_scale_by_one(featurizer, column):
    state = fit(featurizer, pa.table({"x": column}))
    assert state["params"]["scale"] == 1.0
    out = registry.transform(state, pa.table({"x": column}))["x"]
    finite = out[np.isfinite(out)]
    assert (finite == 0.0).all()  # a constant maps to 0; nulls stay NaN for a later impute
    json.loads(registry.dumps(state))


def test_min_max_matches_numpy_and_clips_only_when_asked(data):
    table, x = data
    finite = x[np.isfinite(x)]
    state = fit(MinMax(column="x"), *splits(table, 4))
    assert state["params"] == {"center": finite.min(), "scale": finite.max() - finite.min()}
    out = registry.transform(state, table)["x"]
    assert np.nanmin(out) == 0.0 and np.nanmax(out) == 1.0
    beyond = pa.table({"x": [finite.max() * 2, finite.min() - 10]})
    assert (registry.transform(state, beyond)["x"][0] > 1.0)
    clipped = fit(MinMax(column="x", clip=True), table)
    assert registry.transform(clipped, beyond)["x"].tolist() == [1.0, 0.0]


# ---------------------------------------------------------------- log1p


def test_log1p_negative_policies():
    table = pa.table({"x": [0.0, np.e - 1, -3.0, None]})
    clip = registry.transform(fit(Log1p(column="x")), table)["x"]
    np.testing.assert_allclose(clip[:3], [0.0, 1.0, 0.0])
    assert np.isnan(clip[3])
    signed = registry.transform(fit(Log1p(column="x", negative="signed")), table)["x"]
    np.testing.assert_allclose(signed[:3], [0.0, 1.0, -np.log1p(3.0)])

    state = fit(Log1p(column="x", negative="error"))
    applied = registry.apply(state, table)
    assert list(applied.problems) == [2]
    assert "x: got -3.0" in applied.problems[2] and "negative: clip or signed" in applied.problems[2]
    assert applied.outputs["x"][2] == 0.0
    with pytest.raises(FeatureInputError) as err:
        registry.transform(state, table)
    assert err.value.column == "x" and err.value.rows == [2] and "row 2" in str(err.value)


# ---------------------------------------------------------------- clip


def test_clip_fixed_bounds_needs_no_fit_and_may_be_one_sided():
    table = pa.table({"x": [-5.0, 0.5, 9.0, None]})
    both = Clip(column="x", lower=0.0, upper=1.0)
    assert not both.needs_fit()
    out = registry.transform(fit(both), table)["x"]
    assert out[:3].tolist() == [0.0, 0.5, 1.0] and np.isnan(out[3])
    assert registry.transform(fit(Clip(column="x", upper=1.0)), table)["x"][:3].tolist() == [-5.0, 0.5, 1.0]


def test_clip_fitted_quantiles_within_error_and_mergeable(data):
    table, x = data
    finite = x[np.isfinite(x)]
    clip = Clip(column="x", quantiles=(0.05, 0.95), alpha=0.01)
    state = fit(clip, table)
    assert fit(clip, *splits(table, 3)) == state
    low, high = state["params"]["lower"], state["params"]["upper"]
    exact_low, exact_high = np.quantile(finite, [0.05, 0.95], method="lower")
    assert abs(low - exact_low) <= 0.01 * exact_low
    assert abs(high - exact_high) <= 0.01 * exact_high
    out = registry.transform(state, table)["x"]
    assert np.nanmin(out) == low and np.nanmax(out) == high


def test_clip_quantiles_of_all_null_column_clip_nothing():
    state = fit(Clip(column="x", quantiles=(0.1, 0.9)), pa.table({"x": pa.nulls(3, pa.float64())}))
    assert state["params"] == {"lower": None, "upper": None}
    assert registry.transform(state, pa.table({"x": [1e9]}))["x"].tolist() == [1e9]


@pytest.mark.parametrize(
    "kwargs, message",
    [({}, "either"), ({"lower": 0.0, "quantiles": (0.1, 0.9)}, "either"),
     ({"quantiles": (0.9, 0.1)}, "low < high"), ({"lower": 2.0, "upper": 1.0}, "below upper")],
)
def test_clip_config_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        Clip(column="x", **kwargs)


# ---------------------------------------------------------------- impute


def test_impute_mean_with_indicator(data):
    table, x = data
    state = fit(Impute(column="x"), *splits(table, 3))
    mean = np.nanmean(x)
    assert state["params"]["fill"] == pytest.approx(mean, rel=1e-12)
    out = registry.transform(state, table)
    np.testing.assert_allclose(out["x"], np.where(np.isnan(x), mean, x))
    np.testing.assert_array_equal(out["x_missing"], np.isnan(x).astype(float))


def test_impute_median_within_sketch_error(data):
    table, x = data
    state = fit(Impute(column="x", strategy="median", alpha=0.005, indicator=False), table)
    exact = np.quantile(x[np.isfinite(x)], 0.5, method="lower")
    assert abs(state["params"]["fill"] - exact) <= 0.005 * exact
    assert list(registry.transform(state, table)) == ["x"]


@pytest.mark.parametrize("strategy", ["mean", "median", "constant"])
def test_impute_all_null_column_fills_value_and_flags_every_row(strategy):
    table = pa.table({"x": pa.nulls(3, pa.float64())})
    state = fit(Impute(column="x", strategy=strategy, value=-1.0), table)
    assert state["params"] == {"fill": -1.0, "observed": 0}
    out = registry.transform(state, table)
    assert out["x"].tolist() == [-1.0] * 3 and out["x_missing"].tolist() == [1.0] * 3


def test_impute_constant_needs_no_fit_and_respects_output_name():
    imputer = Impute(column="x", name="x_filled", strategy="constant", value=7.0)
    assert not imputer.needs_fit() and imputer.output_names() == ["x_filled", "x_filled_missing"]
    out = registry.transform(fit(imputer), {"x": np.array([1.0, np.nan])})
    assert out["x_filled"].tolist() == [1.0, 7.0] and out["x_filled_missing"].tolist() == [0.0, 1.0]


def test_string_column_is_a_clear_error():
    with pytest.raises(FeatureInputError, match="column 'x' holds string, not numbers"):
        Standardize(column="x").partial_fit(pa.table({"x": ["a"]}))
    with pytest.raises(FeatureInputError, match="no column 'x'"):
        Standardize(column="x").partial_fit(pa.table({"y": [1.0]}))


# ---------------------------------------------------------------- states


@pytest.mark.parametrize(
    "featurizer",
    [Standardize(column="x"), MinMax(column="x", clip=True), Log1p(column="x", negative="signed"),
     Clip(column="x", quantiles=(0.01, 0.99)), Impute(column="x", strategy="median")],
    ids=lambda f: f.kind,
)
def test_json_round_trip_gives_the_same_transform(featurizer, data):
    table, _ = data
    state = fit(featurizer, table)
    again = roundtrip(state)
    assert again == state
    for name, values in registry.transform(state, table).items():
        np.testing.assert_array_equal(registry.transform(again, table)[name], values)


def test_loads_rejects_other_kind_version_and_edited_state(data):
    state = fit(Standardize(column="x"), data[0])
    with pytest.raises(RegistryError, match="kind 'standardize', not 'min_max'"):
        registry.loads(registry.dumps(state), kind="min_max")
    with pytest.raises(RegistryError, match="version 99; this rayml reads version 1"):
        registry.loads(registry.dumps({**state, "version": 99}))
    with pytest.raises(RegistryError, match="does not validate"):
        registry.loads(registry.dumps({**state, "params": {"center": 0.0, "scale": -1.0}}))
    with pytest.raises(RegistryError, match="does not validate"):
        registry.loads(registry.dumps({**state, "config": {**state["config"], "bogus": 1}}))
    with pytest.raises(RegistryError, match="unknown featurizer kind 'nope'"):
        registry.loads(registry.dumps({**state, "kind": "nope"}))
    with pytest.raises(RegistryError, match="not valid JSON"):
        registry.loads("{")
