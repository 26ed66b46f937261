"""Unit tests for rayml.featurize: split-fit statistics, the pure transform and its JSON state (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from rayml import featurize as F
from rayml.config import parse
from rayml.errors import ConfigError, RaymlError, RegistryError


def cfg(**kw) -> F.FeaturizeConfig:
    base = {"label": "y", "numeric": ["amount", "age"], "log1p": ["amount"], "categorical": ["merchant"]}
    return F.FeaturizeConfig(**{**base, **kw})


def fit(table: pa.Table, config: F.FeaturizeConfig, chunks: int = 1) -> dict:
    if chunks == 1:
        return F.merge_stats([F.partial_stats(table, config)], config)
    bounds = np.linspace(0, table.num_rows, chunks + 1).astype(int)
    parts = [F.partial_stats(table.slice(a, b - a), config) for a, b in zip(bounds[:-1], bounds[1:])]
    return F.merge_stats(parts, config)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    rng = np.random.default_rng(3)
    n = 5000
    names = ["grocery", "fuel", "travel", "online", "atm"]
    merchants = rng.choice(names, size=n, p=[0.4, 0.25, 0.15, 0.15, 0.05])
    return pa.table({
        "amount": rng.lognormal(3.0, 1.2, n),
        "age": rng.integers(18, 90, n).astype(np.int64),
        "merchant": merchants.tolist(),
        "y": (rng.random(n) < 0.1).astype(np.int64),
    })


# ---------------------------------------------------------------- fitting


def test_chunked_fit_equals_whole_fit(table):
    config = cfg()
    whole = fit(table, config)
    chunked = fit(table, config, chunks=7)
    with_empty = F.merge_stats(
        [F.partial_stats(table.slice(0, 0), config), F.partial_stats(table, config)], config
    )
    for other in (chunked, with_empty):
        assert other["rows"] == whole["rows"] == table.num_rows
        assert other["label_counts"] == whole["label_counts"]
        assert other["categorical"] == whole["categorical"]
        assert other["feature_names"] == whole["feature_names"]
        for a, b in zip(other["numeric"], whole["numeric"]):
            assert a["name"] == b["name"] and a["log1p"] == b["log1p"]
            assert a["mean"] == pytest.approx(b["mean"], rel=1e-12)
            assert a["std"] == pytest.approx(b["std"], rel=1e-9)


def test_the_tap_fits_on_valid_train_rows_and_leaves_label_problems_to_featurize(table):
    """What the validate stage gathers while writing: statistics of valid train rows only, merged into the
    state a fitting pass gives; a label outside its task yields no state, so featurize fits and reports it."""
    from rayml.split import SplitConfig, split_codes
    from rayml.validate import STATUS

    config, split = cfg(), SplitConfig(key="key", train=0.6, val=0.2, test=0.2)
    keyed = table.append_column("key", pa.array([f"k{i}" for i in range(table.num_rows)]))
    status = np.where(np.arange(table.num_rows) % 10 == 0, "quarantined", "valid")
    written = keyed.append_column(STATUS, pa.array(status))
    tap = F.train_stats_tap(split, config)
    fitted = F.fit_from_tapped([tap(written.slice(0, 2000)), tap(written.slice(2000))], config)
    keep = (split_codes(keyed.column("key"), 0.6, 0.2, 0) == 0) & (status == "valid")
    expected = fit(keyed.filter(pa.array(keep)), config)
    assert fitted["rows"] == expected["rows"] == int(keep.sum()) > 0
    assert fitted["categorical"] == expected["categorical"]
    assert fitted["label_counts"] == expected["label_counts"]
    for a, b in zip(fitted["numeric"], expected["numeric"]):
        assert a["mean"] == pytest.approx(b["mean"], rel=1e-12) and a["std"] == pytest.approx(b["std"], rel=1e-9)

    bad_label = written.set_column(written.schema.get_field_index("y"), "y", pa.array(np.full(table.num_rows, 7)))
    assert tap(bad_label) is None
    assert F.fit_from_tapped([tap(written), None], config) is None
    one_class = cfg(task="multiclass")
    assert F.fit_from_tapped([F.train_stats_tap(split, one_class)(written.slice(0, 1))], one_class) is None


def test_fit_matches_numpy(table):
    state = fit(table, cfg(), chunks=3)
    amount = np.log1p(table.column("amount").to_numpy())
    age = table.column("age").to_numpy().astype(float)
    num = {s["name"]: s for s in state["numeric"]}
    assert num["amount"]["log1p"] is True and num["age"]["log1p"] is False
    assert num["amount"]["mean"] == pytest.approx(amount.mean())
    assert num["amount"]["std"] == pytest.approx(amount.std())
    assert num["age"]["mean"] == pytest.approx(age.mean())
    assert num["age"]["std"] == pytest.approx(age.std())
    y = table.column("y").to_numpy()
    assert state["label_counts"] == {"0": int((y == 0).sum()), "1": int(y.sum())}
    assert state["version"] == F.STATE_VERSION and state["label"] == "y"


def test_standardized_training_features_have_mean_0_std_1(table):
    state = fit(table, cfg(), chunks=4)
    x = F.transform(table, state)
    assert x.dtype == np.float32
    assert x.shape == (table.num_rows, state["output_dim"])
    for j in range(2):
        assert x[:, j].mean() == pytest.approx(0.0, abs=1e-5)
        assert x[:, j].std() == pytest.approx(1.0, abs=1e-4)


def test_log1p_column_is_logged_before_scaling():
    config = F.FeaturizeConfig(label="y", numeric=["a"], log1p=["a"])
    t = pa.table({"a": [0.0, np.e - 1.0, np.e**2 - 1.0, -5.0], "y": [0, 1, 0, 1]})
    state = fit(t, config)
    logged = np.array([0.0, 1.0, 2.0, 0.0])  # negatives are clipped to 0 before log1p
    spec = state["numeric"][0]
    assert spec["mean"] == pytest.approx(logged.mean())
    assert spec["std"] == pytest.approx(logged.std())
    expected = (logged - logged.mean()) / logged.std()
    np.testing.assert_allclose(F.transform(t, state)[:, 0], expected, rtol=1e-6)


def test_numeric_nulls_and_non_finite_values_impute_to_zero():
    config = F.FeaturizeConfig(label="y", numeric=["a"])
    train = pa.table({"a": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    state = fit(train, config)
    values = pa.array([None, 2.0, float("nan"), float("inf")], pa.float64())
    batch = pa.table({"a": values, "y": [0, 0, 0, 0]})
    assert F.transform(batch, state)[:, 0].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_nulls_do_not_count_in_numeric_statistics():
    config = F.FeaturizeConfig(label="y", numeric=["a"])
    state = fit(pa.table({"a": pa.array([1.0, None, 3.0]), "y": [0, 1, 0]}), config)
    assert state["numeric"][0]["mean"] == pytest.approx(2.0)
    assert state["numeric"][0]["std"] == pytest.approx(1.0)


def test_one_hot_with_unseen_slot_for_unseen_values_and_nulls():
    config = F.FeaturizeConfig(label="y", categorical=["c"])
    train = pa.table({"c": ["a", "b", "a", None], "y": [0, 1, 0, 1]})
    state = fit(train, config)
    assert state["categorical"] == [{"name": "c", "vocab": ["a", "b"]}]
    assert state["feature_names"] == ["c=a", "c=b", "c=<unseen>"]
    assert state["output_dim"] == 3
    batch = pa.table({"c": pa.array(["b", "zzz", None, "a"], pa.string())})
    x = F.transform(batch, state)
    np.testing.assert_array_equal(x, np.array([[0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]], dtype=np.float32))


def test_feature_layout_numeric_then_each_categorical():
    config = F.FeaturizeConfig(label="y", numeric=["n"], categorical=["c", "d"])
    t = pa.table({"n": [1.0, 2.0], "c": ["x", "y"], "d": ["p", "p"], "y": [0, 1]})
    state = fit(t, config)
    assert state["feature_names"] == ["n", "c=x", "c=y", "c=<unseen>", "d=p", "d=<unseen>"]
    assert F.input_columns(state) == ["n", "c", "d"]
    x = F.transform(t, state)
    assert x[:, 1:4].sum(axis=1).tolist() == [1.0, 1.0]
    assert x[:, 4:6].sum(axis=1).tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(F.labels(t, state), np.array([0, 1], dtype=np.float32))


def test_max_categories_keeps_most_frequent_ties_broken_by_value():
    config = F.FeaturizeConfig(label="y", categorical=["c"], max_categories=2)
    values = ["d"] + ["c"] * 2 + ["b"] * 2 + ["a"] * 3
    state = fit(pa.table({"c": values, "y": [0] * len(values)}), config)
    assert state["categorical"][0]["vocab"] == ["a", "b"]  # b beats c on the tie by value
    x = F.transform(pa.table({"c": ["c", "d", "b"]}), state)
    np.testing.assert_array_equal(x, np.array([[0, 0, 1], [0, 0, 1], [0, 1, 0]], dtype=np.float32))


def test_vocab_order_is_by_frequency_then_value_across_chunks():
    config = F.FeaturizeConfig(label="y", categorical=["c"])
    values = ["z", "z", "y", "x", "x", "y", "w"]
    t = pa.table({"c": values, "y": [0] * len(values)})
    assert fit(t, config)["categorical"][0]["vocab"] == ["x", "y", "z", "w"]
    assert fit(t, config, chunks=3)["categorical"][0]["vocab"] == ["x", "y", "z", "w"]


def test_min_frequency_sends_rare_values_to_unseen():
    config = F.FeaturizeConfig(label="y", categorical=["c"], min_frequency=2)
    values = ["a", "a", "a", "b", "b", "c"]
    # c is seen twice in total but only once per chunk: the threshold applies to the merged count
    state = fit(pa.table({"c": values + ["c"], "y": [0] * 7}), config, chunks=2)
    assert state["categorical"][0]["vocab"] == ["a", "b", "c"]
    state = fit(pa.table({"c": values, "y": [0] * 6}), config)
    assert state["categorical"][0]["vocab"] == ["a", "b"]
    x = F.transform(pa.table({"c": ["c"]}), state)
    assert x.tolist() == [[0.0, 0.0, 1.0]]


@pytest.mark.parametrize(
    "column",
    [pa.array([None, None, None], pa.float64()), pa.nulls(3), pa.array([7.0, 7.0, 7.0])],
    ids=["all-null-float", "all-null-nulltype", "constant"],
)
def test_degenerate_numeric_columns_give_finite_zero_features(column):
    config = F.FeaturizeConfig(label="y", numeric=["a"], log1p=["a"])
    t = pa.table({"a": column, "y": [0, 1, 0]})
    state = fit(t, config)
    spec = state["numeric"][0]
    assert np.isfinite(spec["mean"]) and spec["std"] == 1.0
    x = F.transform(t, state)
    assert np.isfinite(x).all()
    assert x[:, 0].tolist() == [0.0, 0.0, 0.0]
    json.loads(F.dumps(state), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_all_null_categorical_column_maps_to_unseen():
    config = F.FeaturizeConfig(label="y", categorical=["c"])
    t = pa.table({"c": pa.array([None, None], pa.string()), "y": [0, 1]})
    state = fit(t, config)
    assert state["feature_names"] == ["c=<unseen>"]
    assert F.transform(t, state).tolist() == [[1.0], [1.0]]


def test_empty_batch_transforms_to_empty_matrix(table):
    state = fit(table, cfg())
    x = F.transform(table.slice(0, 0), state)
    assert x.shape == (0, state["output_dim"]) and x.dtype == np.float32


# ---------------------------------------------------------------- state serialization


def test_dumps_loads_round_trip(table):
    state = fit(table, cfg(), chunks=2)
    text = F.dumps(state)
    json.loads(text)  # plain JSON
    loaded = F.loads(text)
    assert loaded == state
    np.testing.assert_array_equal(F.transform(table, loaded), F.transform(table, state))


@pytest.mark.parametrize("version", [0, 3, None, "1"])
def test_loads_rejects_other_versions(table, version):
    state = fit(table, cfg())
    state["version"] = version
    with pytest.raises(RegistryError, match="featurizer state version") as info:
        F.loads(F.dumps(state))
    assert repr(version) in str(info.value)
    assert str(F.STATE_VERSION) in str(info.value)


def test_loads_rejects_state_without_version():
    with pytest.raises(RegistryError, match="featurizer state version None"):
        F.loads("{}")


# ---------------------------------------------------------------- config rejections


def _problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(F.FeaturizeConfig, data, "job.yaml")
    return info.value.problems


def test_log1p_not_in_numeric_is_rejected():
    (problem,) = _problems({"label": "y", "numeric": ["a"], "log1p": ["b", "a"]})
    assert "log1p columns ['b'] are not in numeric" in problem
    assert "add them to numeric or remove them" in problem


def test_label_used_as_a_feature_is_rejected():
    (problem,) = _problems({"label": "y", "numeric": ["a", "y"]})
    assert "label 'y' is also an input feature" in problem
    (problem,) = _problems({"label": "y", "categorical": ["y"]})
    assert "label 'y' is also an input feature" in problem


def test_no_features_is_rejected():
    (problem,) = _problems({"label": "y"})
    assert "no input features" in problem
    assert "numeric" in problem and "categorical" in problem


def test_column_both_numeric_and_categorical_is_rejected():
    (problem,) = _problems({"label": "y", "numeric": ["a"], "categorical": ["a"]})
    assert "['a'] are listed under more than one of numeric, categorical, embed" in problem


def test_bounds_and_unknown_keys_reported_together():
    problems = _problems(
        {"label": "y", "numeric": ["a"], "max_categories": 0, "min_frequency": 0, "lg1p": []}
    )
    assert sorted(p.split(":", 1)[0] for p in problems) == ["lg1p", "max_categories", "min_frequency"]


# ---------------------------------------------------------------- regressions (bugs found and fixed)


def test_standardization_of_a_large_offset_column():
    rng = np.random.default_rng(0)
    values = 1e9 + rng.uniform(0.0, 10.0, 10_000)
    config = F.FeaturizeConfig(label="y", numeric=["a"])
    t = pa.table({"a": values, "y": np.zeros(values.size, dtype=np.int64)})
    state = fit(t, config, chunks=4)
    assert state["numeric"][0]["std"] == pytest.approx(values.std(), rel=1e-3)
    assert F.transform(t, state)[:, 0].std() == pytest.approx(1.0, abs=1e-3)


def test_integer_categorical_values_match_their_vocab():
    config = F.FeaturizeConfig(label="y", categorical=["mcc"])
    t = pa.table({"mcc": pa.array([5411, 5541, 5411], pa.int64()), "y": [0, 1, 0]})
    state = fit(t, config)
    x = F.transform(t, state)
    assert x[:, -1].sum() == 0.0  # nothing seen in training may land in '<unseen>'


def test_null_label_is_a_clear_error_or_ignored():
    config = F.FeaturizeConfig(label="y", numeric=["a"])
    t = pa.table({"a": [1.0, 2.0], "y": pa.array([1, None], pa.int64())})
    try:
        part = F.partial_stats(t, config)
    except RaymlError as exc:
        assert "y" in str(exc)
    else:
        assert part["label_counts"]["1"] == 1
