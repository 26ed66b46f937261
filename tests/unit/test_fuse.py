"""The featurizer as an ONNX graph, fused with the exported model (no Ray)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pyarrow as pa
import pytest
import torch

from rayml.errors import ParityError, RegistryError
from rayml.export import OUTPUT_NAME, export_onnx, onnx_session
from rayml.featurize import FeaturizeConfig, merge_stats, partial_stats, transform
from rayml.fuse import featurizer_graph, fuse, fused_feeds, fused_parity
from rayml.models import ModelConfig, build_model

CONFIG = FeaturizeConfig(
    label="label",
    numeric=["amount", "age", "balance", "constant"],
    log1p=["amount", "balance"],
    categorical=["merchant", "country", "code"],
    max_categories=4,
)


def raw_table(rows: int, seed: int, unseen: bool = False) -> pa.Table:
    """Typed rows as validation outputs them: nulls everywhere, negatives in log1p columns, int codes."""
    rng = np.random.default_rng(seed)

    def nulls(values: list, rate: float = 0.1) -> list:
        return [None if rng.random() < rate else v for v in values]

    merchants = ["grocery", "fuel", "travel", "online", "café", "bar", "zoo"] + (["never-seen"] if unseen else [])
    return pa.table({
        "amount": pa.array(nulls(list(rng.lognormal(3.0, 1.5, rows) - 2.0)), pa.float64()),
        "age": pa.array(nulls([int(v) for v in rng.integers(18, 90, rows)]), pa.int64()),
        "balance": pa.array(nulls(list(rng.normal(100.0, 500.0, rows)), 0.2), pa.float32()),
        "constant": pa.array([7.0] * rows, pa.float64()),
        "merchant": pa.array(nulls(list(rng.choice(merchants, rows))), pa.string()),
        "country": pa.array(nulls(list(rng.choice(["DE", "FR", "US"], rows)), 0.3), pa.string()),
        "code": pa.array(nulls([int(v) for v in rng.integers(0, 9 if unseen else 6, rows)]), pa.int32()),
        "label": pa.array([int(v) for v in rng.integers(0, 2, rows)], pa.int64()),
    })


@pytest.fixture(scope="module")
def state() -> dict:
    train = raw_table(600, seed=0)
    return merge_stats([partial_stats(train.slice(0, 250), CONFIG), partial_stats(train.slice(250), CONFIG)], CONFIG)


@pytest.fixture(scope="module")
def fused(state, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=[16, 8], dropout=0.2), state["output_dim"]).eval()
    folder = tmp_path_factory.mktemp("fuse")
    exported = export_onnx(model, state["output_dim"], folder / "model.onnx")
    return model, fuse(state, exported, folder / "fused.onnx")


def run_featurizer(state: dict, table: pa.Table) -> np.ndarray:
    session = onnx_session_from(featurizer_graph(state))
    return session.run(["features"], fused_feeds(table, state))[0]


def onnx_session_from(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def edge_rows() -> pa.Table:
    """Rows that hit every branch: nulls, NaN, +-inf, negatives and zero under log1p, unseen categories."""
    inf = float("inf")
    return pa.table({
        "amount": pa.array([None, float("nan"), -5.0, 0.0, inf, -inf, 1e-12, 3e6], pa.float64()),
        "age": pa.array([None, 0, -3, 200, 40, 41, 42, 43], pa.int64()),
        "balance": pa.array([-1.0, None, float("nan"), inf, -inf, 0.5, 2.0, 1e30], pa.float32()),
        "constant": pa.array([7.0, None, 8.0, -inf, inf, 7.0, 0.0, float("nan")], pa.float64()),
        "merchant": pa.array([None, "", "never-seen", "grocery", "GROCERY", "café", "zoo", "fuel"], pa.string()),
        "country": pa.array(["DE", None, "XX", "FR", "US", "", "de", "DE"], pa.string()),
        "code": pa.array([None, 0, 1, 2, 99, -1, 3, 5], pa.int32()),
        "label": pa.array([0, 1, 0, 1, 0, 1, 0, 1], pa.int64()),
    })


def test_state_has_the_cases_the_tests_mean_to_cover(state):
    by_name = {s["name"]: s for s in state["numeric"]}
    assert by_name["constant"]["std"] == 1.0 and by_name["amount"]["log1p"]
    assert all(len(s["vocab"]) <= 4 for s in state["categorical"])
    assert len(state["categorical"][0]["vocab"]) == 4  # capped: 7 merchants seen in training
    assert state["categorical"][2]["vocab"][0].isdigit()  # int codes are compared as text


def test_featurizer_graph_matches_transform_on_random_rows(state):
    for seed, unseen in ((1, False), (2, True)):
        table = raw_table(777, seed=seed, unseen=unseen)
        np.testing.assert_allclose(run_featurizer(state, table), transform(table, state), atol=1e-5, rtol=0)


def test_featurizer_graph_matches_transform_on_edge_rows(state):
    table = edge_rows()
    got, expected = run_featurizer(state, table), transform(table, state)
    assert got.dtype == np.float32 and got.shape == (8, state["output_dim"])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    unseen = state["feature_names"].index("merchant=<unseen>")
    assert got[[0, 1, 2, 4], unseen].tolist() == [1.0] * 4  # null, '', unseen, case differs


def test_a_column_with_an_empty_vocabulary_is_all_unseen():
    config = FeaturizeConfig(label="label", numeric=["x"], categorical=["c"])
    train = pa.table({"x": [1.0, 2.0], "c": pa.array([None, None], pa.string()), "label": [0, 1]})
    state = merge_stats([partial_stats(train, config)], config)
    table = pa.table({"x": [3.0, None, -1.0], "c": ["a", None, ""], "label": [0, 1, 0]})
    got = run_featurizer(state, table)
    np.testing.assert_allclose(got, transform(table, state), atol=1e-5, rtol=0)
    assert got[:, 1].tolist() == [1.0, 1.0, 1.0]


def test_featurizer_graph_uses_standard_and_ml_ops(state):
    model = featurizer_graph(state)
    ops = {(n.domain or "ai.onnx", n.op_type) for n in model.graph.node}
    assert ("ai.onnx.ml", "LabelEncoder") in ops and ("ai.onnx", "OneHot") in ops and ("ai.onnx", "IsNaN") in ops
    assert {o.domain: o.version for o in model.opset_import} == {"": 18, "ai.onnx.ml": 3}


def test_fused_model_takes_raw_columns_with_a_dynamic_batch(state, fused):
    _, path = fused
    graph = onnx.load(str(path)).graph
    kinds = {i.name: (i.type.tensor_type.elem_type, i.type.tensor_type.shape.dim) for i in graph.input}
    assert list(kinds) == CONFIG.numeric + CONFIG.categorical
    for name, (elem, dims) in kinds.items():
        want = onnx.TensorProto.DOUBLE if name in CONFIG.numeric else onnx.TensorProto.STRING
        assert elem == want and len(dims) == 1 and dims[0].dim_param, name
    assert [o.name for o in graph.output] == [OUTPUT_NAME]
    session = onnx_session(path)
    for rows in (1, 1000):
        table = raw_table(rows, seed=rows, unseen=True)
        out = session.run([OUTPUT_NAME], fused_feeds(table, state))[0]
        assert out.shape == (rows,) and np.all((out > 0) & (out < 1))


def test_fused_parity_passes(state, fused):
    model, path = fused
    for table in (raw_table(1000, seed=3, unseen=True), edge_rows(), raw_table(1, seed=4)):
        report = fused_parity(state, model, path, table, tolerance=1e-5)
        assert report["passed"] and report["rows"] == table.num_rows and report["max_abs_diff"] <= 1e-5
        assert set(report) == {"rows", "max_abs_diff", "mean_abs_diff", "tolerance", "passed"}


def test_fused_parity_fails_when_the_state_changed_after_fusing(state, fused):
    model, path = fused
    drifted = copy.deepcopy(state)
    drifted["numeric"][1]["mean"] += 5 * drifted["numeric"][1]["std"]  # 'age' re-fitted on other data
    with pytest.raises(ParityError, match=r"differs from featurize.transform \+ torch by up to .* on 200 rows"):
        fused_parity(drifted, model, path, raw_table(200, seed=5), tolerance=1e-4)


def test_fused_parity_rejects_an_empty_table(state, fused):
    model, path = fused
    with pytest.raises(ParityError, match="non-empty"):
        fused_parity(state, model, path, raw_table(5, seed=6).slice(0, 0), tolerance=1e-4)


def test_fuse_rejects_a_model_of_another_width(state, tmp_path):
    model = build_model(ModelConfig(hidden=[4]), state["output_dim"] + 1).eval()
    exported = export_onnx(model, state["output_dim"] + 1, tmp_path / "model.onnx")
    with pytest.raises(RegistryError, match=r"takes \d+ features but the featurizer state produces"):
        fuse(state, exported, tmp_path / "fused.onnx")


def test_featurizer_graph_rejects_an_empty_string_in_a_vocabulary(state):
    bad = copy.deepcopy(state)
    bad["categorical"][1]["vocab"][0] = ""
    with pytest.raises(RegistryError, match="'country' has the empty string in its vocabulary"):
        featurizer_graph(bad)
