"""Unit tests for rayml.split: key-hash train/val/test assignment (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rayml.config import parse
from rayml.errors import ConfigError
from rayml.split import SPLITS, SplitConfig, assign

N = 100_000


@pytest.fixture(scope="module")
def int_keys() -> np.ndarray:
    return np.arange(10_000_000, 10_000_000 + N, dtype=np.int64)


@pytest.fixture(scope="module")
def str_keys() -> np.ndarray:
    return np.array([f"tx-{i:08d}" for i in range(N)], dtype=object)


def _assign(keys: np.ndarray, train: float = 0.8, val: float = 0.1, seed: int = 0) -> np.ndarray:
    return assign(pa.array(keys), train, val, seed)


def test_output_is_one_split_name_per_key(int_keys):
    names = _assign(int_keys[:1000])
    assert names.shape == (1000,)
    assert set(names) <= set(SPLITS)


def test_same_keys_same_assignment_across_calls(int_keys, str_keys):
    for keys in (int_keys[:20_000], str_keys[:20_000]):
        np.testing.assert_array_equal(_assign(keys), _assign(keys))


def test_assignment_is_stable_across_processes_and_versions():
    """Golden values: a rerun (another process, another day) must put every record in the same split."""
    assert list(assign(pa.array(np.arange(12)), 0.5, 0.25, 0)) == [
        "val", "train", "val", "test", "val", "train", "test", "train", "val", "test", "val", "train"
    ]
    assert list(assign(pa.array([f"tx-{i}" for i in range(12)]), 0.5, 0.25, 7)) == [
        "train", "train", "test", "test", "val", "val", "train", "test", "val", "test", "test", "val"
    ]


@pytest.mark.parametrize("kind", ["int", "str"])
def test_assignment_does_not_depend_on_order(kind, int_keys, str_keys):
    keys = (int_keys if kind == "int" else str_keys)[:20_000]
    base = _assign(keys)
    perm = np.random.default_rng(1).permutation(keys.size)
    shuffled = _assign(keys[perm])
    np.testing.assert_array_equal(shuffled, base[perm])


@pytest.mark.parametrize("kind", ["int", "str"])
def test_assignment_does_not_depend_on_batch_boundaries(kind, int_keys, str_keys):
    keys = (int_keys if kind == "int" else str_keys)[:20_000]
    base = _assign(keys)
    cuts = np.sort(np.random.default_rng(2).choice(np.arange(1, keys.size), size=40, replace=False))
    pieces = [_assign(chunk) for chunk in np.split(keys, cuts)]
    np.testing.assert_array_equal(np.concatenate(pieces), base)
    chunked = pa.chunked_array([pa.array(chunk) for chunk in np.split(keys, cuts)])
    np.testing.assert_array_equal(assign(chunked, 0.8, 0.1, 0), base)


def test_a_superset_keeps_every_old_record_in_its_split(int_keys):
    small = _assign(int_keys[:5000])
    np.testing.assert_array_equal(_assign(int_keys)[:5000], small)


def test_int_key_width_does_not_matter(int_keys):
    keys = int_keys[:5000] - 10_000_000
    np.testing.assert_array_equal(
        assign(pa.array(keys.astype(np.int32)), 0.8, 0.1, 0), assign(pa.array(keys), 0.8, 0.1, 0)
    )


@pytest.mark.parametrize(
    ("train", "val", "kind"), [(0.8, 0.1, "int"), (0.6, 0.2, "int"), (0.34, 0.33, "int"), (0.8, 0.1, "str")]
)
def test_fractions_are_approximately_respected(train, val, kind, int_keys, str_keys):
    names = _assign(int_keys if kind == "int" else str_keys, train, val)
    shares = {s: float(np.mean(names == s)) for s in SPLITS}
    # binomial std at n=100k is < 0.0016; allow ~4 sigma
    assert shares["train"] == pytest.approx(train, abs=0.007)
    assert shares["val"] == pytest.approx(val, abs=0.007)
    assert shares["test"] == pytest.approx(1 - train - val, abs=0.007)


def test_different_seeds_give_different_assignments(int_keys):
    a = _assign(int_keys, seed=0)
    for seed in (1, 42, 99_999):
        b = _assign(int_keys, seed=seed)
        agreement = float(np.mean(a == b))
        # independent splits of 0.8/0.1/0.1 agree on 0.8^2 + 0.1^2 + 0.1^2 = 66% of keys
        assert agreement == pytest.approx(0.66, abs=0.02), seed
        assert float(np.mean(b == "train")) == pytest.approx(0.8, abs=0.007)


# ---------------------------------------------------------------- SplitConfig


def test_split_config_defaults():
    c = SplitConfig(key="transaction_id")
    assert (c.train, c.val, c.test, c.seed) == (0.8, 0.1, 0.1, 0)


def test_split_config_accepts_float_rounding():
    assert SplitConfig(key="id", train=0.7, val=0.2, test=0.1).train == 0.7


@pytest.mark.parametrize(("train", "val", "test"), [(0.8, 0.1, 0.05), (0.5, 0.3, 0.3)])
def test_split_config_rejects_fractions_not_summing_to_one(train, val, test):
    with pytest.raises(ConfigError) as info:
        parse(SplitConfig, {"key": "id", "train": train, "val": val, "test": test}, "job.yaml")
    (problem,) = info.value.problems
    assert f"train + val + test is {train + val + test:g}" in problem
    assert "sum to 1" in problem


def test_split_config_rejects_out_of_range_values_all_at_once():
    with pytest.raises(ConfigError) as info:
        parse(SplitConfig, {"key": "", "train": 1.0, "val": 0.0, "seed": -1})
    paths = sorted(p.split(":", 1)[0] for p in info.value.problems)
    assert paths == ["key", "seed", "train", "val"]


# ---------------------------------------------------------------- regressions (bugs found and fixed)


def test_seeds_sharing_a_prefix_give_different_assignments(int_keys):
    a = _assign(int_keys, seed=12345)
    b = _assign(int_keys, seed=123456)
    assert float(np.mean(a == b)) < 0.9


def test_split_of_int_key_does_not_depend_on_nulls_in_the_batch(int_keys):
    keys = int_keys[:1000]
    without_null = assign(pa.array(keys), 0.8, 0.1, 0)
    with_null = assign(pa.array(list(keys) + [None], pa.int64()), 0.8, 0.1, 0)
    np.testing.assert_array_equal(with_null[:-1], without_null)
