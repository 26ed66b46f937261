"""Unit tests for rayml.features.pipeline and .fitting: dataflow checks, multi-pass mergeable fit, the
matrix and tensors, per-row problems, and the JSON state (no Ray)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from rayml.config import parse
from rayml.errors import ConfigError, RegistryError
from rayml.features import fitting as F
from rayml.features import pipeline as P
from rayml.features.base import FeatureInputError

BASE_STEPS = [
    {"kind": "impute", "column": "amount", "strategy": "median"},
    {"kind": "log1p", "column": "amount"},
    {"kind": "standardize", "column": "amount"},
    {"kind": "impute", "column": "age", "indicator": False},
    {"kind": "min_max", "column": "age"},
    {"kind": "one_hot", "column": "merchant", "max_categories": 3},
    {"kind": "ordinal", "column": "merchant", "name": "merchant_code"},
    {"kind": "timestamp", "column": "at", "parts": ["hour"], "encoding": "cyclical"},
]


def config(steps=BASE_STEPS) -> P.FeaturePipeline:
    return P.FeaturePipeline.model_validate({"steps": steps})


@pytest.fixture(scope="module")
def table() -> pa.Table:
    rng = np.random.default_rng(9)
    n = 1200
    amount = rng.lognormal(3, 1, n)
    amount[rng.random(n) < 0.1] = np.nan
    merchants = rng.choice(["grocery", "fuel", "travel", "atm", "crypto"], n).tolist()
    return pa.table({
        "amount": pa.array(amount, from_pandas=True),
        "age": pa.array([None if i % 17 == 0 else int(v) for i, v in enumerate(rng.integers(18, 90, n))]),
        "merchant": merchants,
        "at": pa.array(rng.integers(0, 10**15, n), pa.timestamp("us", tz="UTC")),
    })


def chunks(table: pa.Table, k: int) -> list[pa.Table]:
    bounds = np.linspace(0, table.num_rows, k + 1).astype(int)
    return [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------- the plan


def test_plan_orders_passes_and_features():
    planned = P.plan(config().steps)
    # impute(median) is fitted in pass 0; standardize reads its output, so it waits for pass 1
    assert planned.fit_pass == [0, None, 1, 0, 1, 0, 0, None]
    assert planned.passes == 2
    assert [name for _, name in planned.features] == [
        "amount", "amount_missing", "age", "merchant", "merchant_code", "at_hour_sin", "at_hour_cos",
        "at_missing",
    ]
    assert planned.inputs == ["amount", "age", "merchant", "at"]
    assert planned.ancestors[2] == {0, 1}


@pytest.mark.parametrize(
    "steps, message",
    [
        ([{"kind": "standardize", "column": "x"}], "add {kind: impute, column: x} before it"),
        ([{"kind": "one_hot", "column": "c"}, {"kind": "standardize", "column": "c"}],
         "only numeric steps' outputs chain"),
        ([{"kind": "impute", "column": "c"}, {"kind": "one_hot", "column": "c"}], "reads raw columns only"),
        ([{"kind": "one_hot", "column": "c"}, {"kind": "hashing", "column": "c"}],
         "writes 'c', already an output"),
        ([{"kind": "impute", "column": "x"}, {"kind": "impute", "column": "y", "name": "x_missing"}],
         "already an output of steps[0]"),
        ([], "at least 1 item"),
    ],
    ids=["no-impute", "numeric-after-onehot", "onehot-after-numeric", "duplicate", "duplicate-indicator",
         "empty"],
)
def test_unsound_pipelines_are_config_errors(steps, message):
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("[", r"\[")):
        config(steps)


def test_config_problems_surface_through_rayml_parse():
    with pytest.raises(ConfigError) as err:
        parse(P.FeaturePipeline, {"steps": [{"kind": "standardize", "column": "x", "sigma": 2}]}, "features")
    assert "steps.0.standardize.sigma: unknown key" in str(err.value)


# ---------------------------------------------------------------- fitting


def test_two_pass_fit_standardizes_the_imputed_values_exactly(table):
    state = F.fit(config(), lambda: chunks(table, 4))
    features = P.transform(state, table)
    amount = features.matrix[:, state["matrix"].index("amount")]
    assert amount.mean() == pytest.approx(0.0, abs=1e-5) and amount.std() == pytest.approx(1.0, abs=1e-5)
    age = features.matrix[:, state["matrix"].index("age")]
    assert age.min() == 0.0 and age.max() == 1.0


def test_fit_in_chunks_equals_fit_at_once(table):
    whole = F.fit(config(), [table])
    parts = F.fit(config(), [table.slice(0, 0), *chunks(table, 5)])
    assert whole["matrix"] == parts["matrix"] and whole["tensors"] == parts["tensors"]
    for a, b in zip(whole["steps"], parts["steps"]):
        assert a["config"] == b["config"]
        for key, value in a["params"].items():
            if isinstance(value, float):
                assert b["params"][key] == pytest.approx(value, rel=1e-9), key
            else:
                assert b["params"][key] == value, key


def test_partial_statistics_are_json_and_merge_in_any_order(table):
    cfg = config()
    states = F.start(cfg)
    parts = [F.partial_fit(cfg, states, batch, 0) for batch in chunks(table, 3)]
    shipped = [json.loads(json.dumps(p, allow_nan=False)) for p in parts]
    forward = F.merge(cfg, F.merge(cfg, shipped[0], shipped[1]), shipped[2])
    backward = F.merge(cfg, shipped[2], F.merge(cfg, shipped[1], shipped[0]))
    assert F.finish_pass(cfg, states, forward, 0) == F.finish_pass(cfg, states, backward, 0)


def test_a_multi_pass_fit_refuses_a_one_shot_iterator(table):
    with pytest.raises(TypeError, match="2 passes"):
        F.fit(config(), iter([table]))
    one_pass = config([{"kind": "impute", "column": "amount"}])
    assert F.fit(one_pass, iter([table]))["matrix"] == ["amount", "amount_missing"]


def test_fit_on_no_batches_gives_defined_defaults():
    state = F.fit(config(), [])
    batch = pa.table({"amount": [None, 1.0], "age": [30, None], "merchant": ["x", None],
                      "at": pa.nulls(2, pa.timestamp("us", tz="UTC"))})
    features = P.transform(state, batch)
    assert np.isfinite(features.matrix).all()


def test_fit_fails_on_rows_an_earlier_step_rejects():
    cfg = config([{"kind": "impute", "column": "x"}, {"kind": "log1p", "column": "x", "negative": "error"},
                  {"kind": "standardize", "column": "x"}])
    with pytest.raises(FeatureInputError, match="row 1: x: got -2.0"):
        F.fit(cfg, [pa.table({"x": [1.0, -2.0]})])


# ---------------------------------------------------------------- transform


def test_matrix_layout_names_every_column_and_tensors_hold_the_rest(table):
    state = F.fit(config(), [table])
    vocab = state["steps"][5]["params"]["slots"]
    assert state["matrix"] == [
        "amount", "amount_missing", "age", *[f"merchant={v}" for v in vocab], "at_hour_sin", "at_hour_cos",
        "at_missing",
    ]
    assert state["tensors"] == {"merchant_code": {"dtype": "int64", "shape": []}}
    features = P.transform(state, table)
    assert features.matrix.dtype == np.float32
    assert features.matrix.shape == (table.num_rows, len(state["matrix"]))
    assert np.isfinite(features.matrix).all()
    assert features.tensors["merchant_code"].dtype == np.int64
    assert [s.name for s in P.output_specs(state)] == [name for _, name in state["features"]]


def test_mapping_batches_give_the_same_features_as_tables(table):
    state = F.fit(config(), [table])
    head = table.slice(0, 50)
    as_mapping = {
        "amount": head.column("amount").to_numpy(zero_copy_only=False),
        "age": head.column("age").to_pylist(),
        "merchant": np.array(head.column("merchant").to_pylist(), dtype=object),
        "at": head.column("at"),
    }
    np.testing.assert_array_equal(P.transform(state, as_mapping).matrix, P.transform(state, head).matrix)


def test_empty_batch_gives_an_empty_matrix(table):
    state = F.fit(config(), [table])
    features = P.transform(state, table.slice(0, 0))
    assert features.matrix.shape == (0, len(state["matrix"]))
    assert features.tensors["merchant_code"].shape == (0,)


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), 99, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_rows_with_problems_are_reported_per_row_and_zeroed():
    pytest.importorskip("PIL")
    cfg = config([
        {"kind": "impute", "column": "x"},
        {"kind": "one_hot", "column": "c", "unseen": "error"},
        {"kind": "image", "column": "img", "size": [2, 2], "mean": [0, 0, 0], "std": [1, 1, 1]},
    ])
    train = pa.table({"c": ["a", "b"], "x": [1.0, 2.0], "img": [_png(), _png()]})
    state = F.fit(cfg, [train])
    batch = pa.table({"c": ["a", "zzz", "b"], "x": [1.0, 5.0, None], "img": [_png(), b"junk", None]})
    features, problems = P.transform_rows(state, batch)
    assert problems[0] is None
    assert problems[1].startswith("c: got 'zzz'; not a category seen in training")
    assert " | img: cannot decode" in problems[1]
    assert problems[2] == "img: null image; send image bytes or pixels"
    assert features.matrix[0].any() and not features.matrix[1:].any()
    assert features.tensors["img"][0].any() and not features.tensors["img"][1:].any()
    with pytest.raises(FeatureInputError) as err:
        P.transform(state, batch)
    assert err.value.rows == [1, 2] and err.value.column == "c"


# ---------------------------------------------------------------- state


def test_json_round_trip_gives_identical_features(table):
    state = F.fit(config(), [table])
    text = P.dumps(state)
    again = P.loads(text)
    assert again == state
    first, second = P.transform(state, table), P.transform(again, table)
    np.testing.assert_array_equal(first.matrix, second.matrix)
    np.testing.assert_array_equal(first.tensors["merchant_code"], second.tensors["merchant_code"])


def test_loads_rejects_foreign_old_or_edited_states(table):
    state = F.fit(config(), [table])
    with pytest.raises(RegistryError, match="expected a feature_pipeline state, got 'standardize'"):
        P.loads(json.dumps(state["steps"][2]))
    with pytest.raises(RegistryError, match="version 2; this rayml reads version 1"):
        P.loads(json.dumps({**state, "version": 2}))
    with pytest.raises(RegistryError, match=r"\['matrix'\] do not match its steps"):
        P.loads(json.dumps({**state, "matrix": state["matrix"][:-1]}))
    old_step = {**state["steps"][0], "version": 0}
    with pytest.raises(RegistryError, match="impute state has version 0"):
        P.loads(json.dumps({**state, "steps": [old_step, *state["steps"][1:]]}))
    unsound = [state["steps"][2]]  # standardize without its impute
    with pytest.raises(RegistryError, match="do not form a valid pipeline"):
        P.loads(json.dumps({**state, "steps": unsound}))


def test_importing_the_package_loads_neither_pillow_nor_tokenizers():
    code = "import sys, rayml.features; print(sorted(m for m in ('PIL', 'tokenizers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            timeout=120)
    assert result.stdout.strip() == "[]"


def test_todays_featurizer_is_one_configuration_of_the_library(table):
    """rayml.featurize's numeric (log1p, standardize, missing -> mean) and one-hot (<unseen> slot) layout,
    rebuilt from library steps, gives the same matrix: the path for moving featurize.py onto the library."""
    from rayml import featurize as old

    legacy = old.FeaturizeConfig(label="y", numeric=["amount", "age"], log1p=["amount"],
                                 categorical=["merchant"], max_categories=3, min_frequency=2)
    labelled = table.append_column("y", pa.array(np.zeros(table.num_rows, np.int64)))
    old_state = old.merge_stats([old.partial_stats(b, legacy) for b in chunks(labelled, 3)], legacy)
    steps = [
        {"kind": "log1p", "column": "amount"},
        {"kind": "standardize", "column": "amount"},
        {"kind": "impute", "column": "amount", "strategy": "constant", "indicator": False},
        {"kind": "standardize", "column": "age"},
        {"kind": "impute", "column": "age", "strategy": "constant", "indicator": False},
        {"kind": "one_hot", "column": "merchant", "max_categories": 3, "min_frequency": 2, "nulls": "unseen"},
    ]
    state = F.fit(config(steps), chunks(table, 3))
    assert P.plan(config(steps).steps).passes == 1
    assert [n.replace("<other>", "<unseen>") for n in state["matrix"]] == old_state["feature_names"]
    batch = pa.table({"amount": [5.0, None, -3.0, float("inf")], "age": [30, None, 50, 60],
                      "merchant": ["fuel", None, "never-seen", "atm"]})
    np.testing.assert_allclose(P.transform(state, batch).matrix, old.transform(batch, old_state), atol=1e-6)
    np.testing.assert_allclose(P.transform(state, table).matrix, old.transform(table, old_state), atol=1e-6)
