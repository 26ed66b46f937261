"""Unit tests for rayml.features categorical featurizers: one-hot, ordinal, hashing (no Ray)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from rayml.features import registry
from rayml.features.base import FeatureInputError
from rayml.features.categorical import Hashing, OneHot, Ordinal


def fit(featurizer, *batches):
    stats = None
    for batch in batches:
        part = featurizer.partial_fit(batch)
        json.dumps(part)
        stats = part if stats is None else featurizer.merge(stats, part)
    return featurizer.finalize(stats or {})


@pytest.fixture(scope="module")
def table() -> pa.Table:
    rng = np.random.default_rng(5)
    names = ["grocery", "fuel", "travel", "atm", "crypto"]
    values = rng.choice(names, size=2000, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    column = [None if rng.random() < 0.05 else str(v) for v in values]
    return pa.table({"c": pa.array(column, pa.string())})


def test_one_hot_vocabulary_by_count_then_value_matches_pandas(table):
    state = fit(OneHot(column="c"), table)
    counts = pd.Series(table.column("c").to_pylist()).value_counts()
    expected = sorted(counts.index, key=lambda v: (-counts[v], v))
    assert state["params"]["vocab"] == expected
    assert state["params"]["slots"] == [*expected, "<null>", "<other>"]
    x = registry.transform(state, table)["c"]
    assert x.dtype == np.float32 and x.shape == (table.num_rows, len(expected) + 2)
    dummies = pd.get_dummies(pd.Series(table.column("c").to_pylist()))
    dummies = dummies.reindex(columns=expected, fill_value=False)
    np.testing.assert_array_equal(x[:, : len(expected)], dummies.to_numpy(dtype=np.float32))
    nulls = table.column("c").is_null().to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(x[:, len(expected)], nulls.astype(np.float32))
    assert (x.sum(axis=1) == 1).all()


def test_fit_in_splits_equals_fit_on_everything(table):
    for featurizer in (OneHot(column="c", max_categories=3, min_frequency=5), Ordinal(column="c")):
        parts = [table.slice(0, 0), table.slice(0, 700), table.slice(700, 600), table.slice(1300)]
        assert fit(featurizer, *parts) == fit(featurizer, table)


@pytest.mark.parametrize(
    "unseen, row", [("ignore", [0, 0]), ("other", [0, 0, 1])], ids=["ignore", "other"]
)
def test_unseen_values_ignore_or_other(unseen, row):
    state = fit(OneHot(column="c", unseen=unseen, nulls="most_frequent"), pa.table({"c": ["a", "b", "a"]}))
    x = registry.transform(state, pa.table({"c": ["zzz", "b"]}))["c"]
    assert x.tolist() == [row, [0, 1] + [0] * (len(row) - 2)]


def test_unseen_error_names_column_row_and_value():
    state = fit(OneHot(column="merchant", unseen="error"), pa.table({"merchant": ["a", "b"]}))
    batch = pa.table({"merchant": ["a", "zzz", "b", "qq"]})
    applied = registry.apply(state, batch)
    assert sorted(applied.problems) == [1, 3]
    assert applied.problems[1].startswith("merchant: got 'zzz'; not a category seen in training")
    assert applied.outputs["merchant"][1].sum() == 0  # a rejected row carries no features
    with pytest.raises(FeatureInputError) as err:
        registry.transform(state, batch)
    assert err.value.column == "merchant" and err.value.rows == [1, 3]
    assert "row 1: merchant: got 'zzz'" in str(err.value) and "row 3: merchant: got 'qq'" in str(err.value)


def test_unseen_error_cannot_combine_with_frequency_limits():
    with pytest.raises(ValidationError, match="unseen: other"):
        OneHot(column="c", unseen="error", max_categories=3)
    with pytest.raises(ValidationError, match="unseen: other"):
        Ordinal(column="c", unseen="error", min_frequency=2)


def test_rare_values_follow_the_unseen_policy_using_merged_counts():
    featurizer = OneHot(column="c", min_frequency=2, unseen="other")
    # 'c' appears once in each half: the threshold applies to the merged count
    state = fit(featurizer, pa.table({"c": ["a", "a", "c"]}), pa.table({"c": ["b", "b", "c", "d"]}))
    assert state["params"]["vocab"] == ["a", "b", "c"]
    assert registry.transform(state, pa.table({"c": ["d"]}))["c"].tolist() == [[0, 0, 0, 0, 1]]
    top = fit(OneHot(column="c", max_categories=1, unseen="ignore"), pa.table({"c": ["x", "y", "y"]}))
    assert top["params"]["slots"] == ["y", "<null>"]
    assert registry.transform(top, pa.table({"c": ["x"]}))["c"].tolist() == [[0, 0]]


def test_nulls_as_category_or_most_frequent():
    train = pa.table({"c": ["a", "b", "b", None]})
    as_category = fit(OneHot(column="c", unseen="ignore"), train)
    assert as_category["params"]["slots"] == ["b", "a", "<null>"]
    null = pa.table({"c": pa.array([None], pa.string())})
    assert registry.transform(as_category, null)["c"].tolist() == [[0, 0, 1]]
    imputed = fit(OneHot(column="c", unseen="ignore", nulls="most_frequent"), train)
    assert imputed["params"]["slots"] == ["b", "a"]
    assert registry.transform(imputed, null)["c"].tolist() == [[1, 0]]


def test_nulls_as_unseen_reproduce_the_single_unseen_slot_of_rayml_featurize():
    train = pa.table({"c": ["a", "b", "a", None]})
    state = fit(OneHot(column="c", nulls="unseen"), train)
    assert state["params"]["slots"] == ["a", "b", "<other>"]
    batch = pa.table({"c": pa.array(["b", "zzz", None, "a"], pa.string())})
    expected = [[0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]]  # tests/unit/test_featurize.py's expectation
    assert registry.transform(state, batch)["c"].tolist() == expected
    ignore = fit(Ordinal(column="c", nulls="unseen", unseen="ignore"), train)
    assert registry.transform(ignore, batch)["c"].tolist() == [1, -1, -1, 0]
    strict = fit(OneHot(column="c", nulls="unseen", unseen="error"), train)
    problems = registry.apply(strict, batch).problems
    assert sorted(problems) == [1, 2]
    assert problems[2].startswith("c: got null; nulls: unseen with unseen: error")


@pytest.mark.parametrize("nulls", ["category", "most_frequent"])
@pytest.mark.parametrize("unseen", ["error", "ignore", "other"])
def test_all_null_column_gets_a_null_slot(nulls, unseen):
    table = pa.table({"c": pa.nulls(3, pa.string())})
    state = fit(OneHot(column="c", nulls=nulls, unseen=unseen), table)
    assert state["params"]["vocab"] == []
    assert state["params"]["slots"][0] == "<null>"
    x = registry.transform(state, table)["c"]
    assert x[:, 0].tolist() == [1.0, 1.0, 1.0] and x.sum() == 3
    codes = registry.transform(fit(Ordinal(column="c", nulls=nulls, unseen=unseen), table), table)["c"]
    assert codes.tolist() == [0, 0, 0]


def test_ordinal_codes_other_and_ignore():
    train = pa.table({"c": ["x", "y", "y", None]})
    other = fit(Ordinal(column="c"), train)
    assert other["params"]["slots"] == ["y", "x", "<null>", "<other>"]
    codes = registry.transform(other, pa.table({"c": ["x", "y", None, "new"]}))["c"]
    assert codes.dtype == np.int64 and codes.tolist() == [1, 0, 2, 3]
    ignore = fit(Ordinal(column="c", unseen="ignore"), train)
    assert registry.transform(ignore, pa.table({"c": ["new", "y"]}))["c"].tolist() == [-1, 0]
    spec = registry.output_spec(other)[0]
    assert spec.dtype == "int64" and spec.shape == ()
    assert spec.slots == ("c=y", "c=x", "c=<null>", "c=<other>")


def test_values_compare_as_text_whatever_the_arrow_type():
    state = fit(OneHot(column="c"), pa.table({"c": [7, 7, 3]}))
    assert state["params"]["vocab"] == ["7", "3"]
    as_text = registry.transform(state, pa.table({"c": ["3"]}))["c"]
    as_dict = registry.transform(state, pa.table({"c": pa.array(["3"]).dictionary_encode()}))["c"]
    as_int = registry.transform(state, {"c": np.array([3])})["c"]
    assert as_text.tolist() == as_dict.tolist() == as_int.tolist() == [[0, 1, 0, 0]]


def _blake(value: str, seed: int, buckets: int) -> int:
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") % buckets


def test_hashing_is_keyed_blake2b_and_handles_unseen_values():
    featurizer = Hashing(column="c", buckets=16, seed=3, output="index")
    assert not featurizer.needs_fit()
    state = fit(featurizer)
    values = ["grocery", "fuel", "never seen before", "é ü 漢字", "fuel"]
    codes = registry.transform(state, pa.table({"c": values}))["c"]
    assert codes.tolist() == [_blake(v, 3, 16) for v in values]
    other_seed = registry.transform(fit(Hashing(column="c", buckets=16, seed=4, output="index")),
                                    pa.table({"c": values}))["c"]
    assert other_seed.tolist() == [_blake(v, 4, 16) for v in values] and other_seed.tolist() != codes.tolist()


def test_hashing_one_hot_and_null_policies():
    table = pa.table({"c": pa.array(["a", None, "b"], pa.string())})
    state = fit(Hashing(column="c", buckets=8))
    x = registry.transform(state, table)["c"]
    assert x.shape == (3, 9) and x.dtype == np.float32
    assert x[0, _blake("a", 0, 8)] == 1.0 and x[1, 8] == 1.0 and (x.sum(axis=1) == 1).all()
    assert registry.output_spec(state)[0].slots[-1] == "c=<null>"
    ignore = fit(Hashing(column="c", buckets=8, nulls="ignore"))
    assert registry.transform(ignore, table)["c"].shape == (3, 8)
    assert registry.transform(ignore, table)["c"][1].sum() == 0
    index = fit(Hashing(column="c", buckets=8, nulls="ignore", output="index"))
    assert registry.transform(index, table)["c"][1] == -1
    all_null = registry.transform(state, pa.table({"c": pa.nulls(2, pa.string())}))["c"]
    assert all_null[:, 8].tolist() == [1.0, 1.0]


def test_hashing_refuses_a_huge_one_hot():
    with pytest.raises(ValidationError, match="output: index"):
        Hashing(column="c", buckets=1 << 20)
    Hashing(column="c", buckets=1 << 20, output="index")


@pytest.mark.parametrize(
    "featurizer",
    [OneHot(column="c", max_categories=2), Ordinal(column="c", unseen="ignore"), Hashing(column="c")],
    ids=lambda f: f.kind,
)
def test_json_round_trip_gives_the_same_transform(featurizer, table):
    state = fit(featurizer, table)
    again = registry.loads(registry.dumps(state), kind=featurizer.kind)
    assert again == state
    batch = pa.table({"c": ["fuel", "unknown", None]})
    expected = registry.transform(state, batch)["c"]
    np.testing.assert_array_equal(registry.transform(again, batch)["c"], expected)


def test_empty_batch_gives_empty_outputs(table):
    state = fit(OneHot(column="c"), table)
    x = registry.transform(state, table.slice(0, 0))["c"]
    assert x.shape == (0, len(state["params"]["slots"]))
