"""Multiclass and regression jobs without Ray: labels, the feature layout, the models, losses, the fused
embed graph and the Predictor's answers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayml import labels
from rayml.errors import DataValidationError
from rayml.export import export_onnx, onnx_session, output_name, parity
from rayml.featurize import FeaturizeConfig, input_columns, merge_stats, partial_stats, transform
from rayml.featurize import labels as encode_labels
from rayml.fuse import fuse, fused_parity
from rayml.models import (CNN, FactorizationMachine, ModelConfig, Probability, build_model, output_count,
                          set_output_bias)
from rayml.train import steps


def fit(table: pa.Table, config: FeaturizeConfig, chunks: int = 2) -> dict:
    size = -(-table.num_rows // chunks)
    parts = [partial_stats(table.slice(i, size), config) for i in range(0, table.num_rows, size)]
    return merge_stats(parts, config)


def ratings(rows: int = 200, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "user": [f"u{i}" for i in rng.integers(0, 12, rows)],
        "item": rng.integers(100, 130, rows).astype(np.int64),
        "age": rng.normal(40, 10, rows),
        "rating": rng.uniform(1, 5, rows),
    })


# ---- labels


def test_multiclass_classes_are_fitted_sorted_numerically_and_encoded_as_indexes():
    config = FeaturizeConfig(label="y", task="multiclass", numeric=["x"])
    table = pa.table({"x": [0.0] * 6, "y": pa.array([10, 2, 2, 3, 10, 2], pa.int64())})
    state = fit(table, config, chunks=3)
    assert state["classes"] == ["2", "3", "10"]  # numerically, not as text ("10" < "2")
    assert state["label_counts"] == {"2": 3, "3": 1, "10": 2}
    np.testing.assert_array_equal(encode_labels(table, state), [2, 0, 0, 1, 2, 0])


def test_a_class_the_train_split_never_saw_is_a_clear_error():
    config = FeaturizeConfig(label="y", task="multiclass", numeric=["x"])
    state = fit(pa.table({"x": [0.0, 1.0], "y": ["cat", "dog"]}), config, chunks=1)
    with pytest.raises(DataValidationError, match=r"class\(es\) \['emu'\] that the train split does not"):
        encode_labels(pa.table({"x": [0.0], "y": ["emu"]}), state)


def test_multiclass_needs_two_classes_and_no_null_labels():
    config = FeaturizeConfig(label="y", task="multiclass", numeric=["x"])
    with pytest.raises(DataValidationError, match="1 class"):
        fit(pa.table({"x": [0.0, 1.0], "y": ["a", "a"]}), config, chunks=1)
    with pytest.raises(DataValidationError, match="holds nulls"):
        partial_stats(pa.table({"x": [0.0], "y": pa.array([None], pa.string())}), config)


def test_regression_label_statistics_merge_exactly_and_reject_nan():
    config = FeaturizeConfig(label="rating", task="regression", numeric=["age"])
    table = ratings()
    state = fit(table, config, chunks=3)
    values = table.column("rating").to_numpy()
    assert state["label_stats"]["rows"] == table.num_rows
    assert state["label_stats"]["mean"] == pytest.approx(values.mean())
    assert state["label_stats"]["std"] == pytest.approx(values.std())
    assert "classes" not in state
    with pytest.raises(DataValidationError, match="non-finite"):
        labels.partial(pa.array([1.0, float("nan")]), "regression", "rating")


# ---- embed features and the layout


def test_embed_columns_become_one_index_each_with_zero_for_unseen_and_null():
    config = FeaturizeConfig(label="rating", task="regression", embed=["user", "item"], numeric=["age"])
    state = fit(ratings(), config)
    layout = {b["kind"] + ":" + b.get("column", ""): b for b in state["layout"]}
    assert state["output_dim"] == 3
    assert layout["numeric:"]["offset"] == 0
    assert layout["embed:user"] == {"kind": "embed", "column": "user", "offset": 1, "width": 1,
                                    "cardinality": len(state["embed"][0]["vocab"]) + 1}
    assert layout["embed:item"]["offset"] == 2
    probe = pa.table({"user": [state["embed"][0]["vocab"][0], "stranger", None],
                      "item": pa.array([int(state["embed"][1]["vocab"][2]), 999, None], pa.int64()),
                      "age": [40.0, 40.0, 40.0], "rating": [1.0, 2.0, 3.0]})
    x = transform(probe, state)
    np.testing.assert_array_equal(x[:, 1], [1, 0, 0])
    np.testing.assert_array_equal(x[:, 2], [3, 0, 0])
    assert input_columns(state) == ["age", "user", "item"]


def test_a_column_listed_as_embed_and_categorical_is_rejected():
    with pytest.raises(ValueError, match="more than one of numeric, categorical, embed"):
        FeaturizeConfig(label="y", categorical=["a"], embed=["a"])


# ---- models


def test_factorization_machine_is_biased_matrix_factorization_over_two_fields():
    layout = [{"kind": "embed", "offset": 0, "cardinality": 5}, {"kind": "embed", "offset": 1, "cardinality": 4}]
    model = build_model(ModelConfig(kind="fm", factors=3), input_dim=2, layout=layout)
    assert isinstance(model, FactorizationMachine)
    with torch.no_grad():
        model.bias.fill_(3.5)
        for table in [*model.factors, *model.biases]:
            table.weight[1:].normal_()
    x = torch.tensor([[1.0, 2.0], [4.0, 3.0], [0.0, 2.0]])
    with torch.no_grad():
        got = model(x)
        u, v = model.factors[0].weight, model.factors[1].weight
        bu, bi = model.biases[0].weight[:, 0], model.biases[1].weight[:, 0]
        for row, (a, b) in enumerate([(1, 2), (4, 3), (0, 2)]):
            expected = 3.5 + bu[a] + bi[b] + (u[a] * v[b]).sum()
            assert got[row].item() == pytest.approx(expected.item(), abs=1e-5)
    # the unseen user (index 0) contributes nothing: global bias + the item's bias
    assert got[2].item() == pytest.approx(3.5 + bi[2].item(), abs=1e-5)


def test_unseen_rows_of_fm_tables_get_no_gradient():
    layout = [{"kind": "embed", "offset": 0, "cardinality": 3}, {"kind": "embed", "offset": 1, "cardinality": 3}]
    model = build_model(ModelConfig(kind="fm", factors=2), input_dim=2, layout=layout)
    model(torch.tensor([[0.0, 1.0], [2.0, 0.0]])).sum().backward()
    for table in model.factors:
        assert torch.count_nonzero(table.weight.grad[0]) == 0


def test_cnn_reads_its_image_block_and_the_other_columns():
    layout = [{"kind": "numeric", "offset": 0, "width": 2},
              {"kind": "image", "offset": 2, "width": 64, "shape": [1, 8, 8]}]
    model = build_model(ModelConfig(kind="cnn", channels=[4, 8], hidden=[16]), input_dim=66, outputs=10,
                        layout=layout)
    assert isinstance(model, CNN)
    x = torch.randn(5, 66)
    assert model(x).shape == (5, 10)
    y = x.clone()
    y[:, 0] += 1.0  # a non-image column changes the output too
    assert not torch.allclose(model(x), model(y))


def test_models_refuse_layouts_they_cannot_use():
    with pytest.raises(ValueError, match="exactly one image input"):
        build_model(ModelConfig(kind="cnn"), input_dim=4, outputs=3, layout=[])
    with pytest.raises(ValueError, match="pool a 2x2 image to nothing"):
        build_model(ModelConfig(kind="cnn", channels=[4, 4]), input_dim=4, outputs=3,
                    layout=[{"kind": "image", "offset": 0, "width": 4, "shape": [1, 2, 2]}])
    with pytest.raises(ValueError, match="features.embed"):
        build_model(ModelConfig(kind="fm"), input_dim=4, layout=[{"kind": "numeric", "offset": 0, "width": 4}])
    assert output_count("multiclass", ["a", "b", "c"]) == 3 and output_count("regression", None) == 1


def test_probability_wrapper_per_task():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    model = torch.nn.Identity()
    assert Probability(model, "multiclass")(logits).sum().item() == pytest.approx(1.0)
    assert torch.equal(Probability(model, "regression")(logits), logits)


# ---- losses and validation metrics


def test_task_losses_and_validation_metrics():
    device = torch.device("cpu")
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    target = torch.tensor([0.0, 1.0, 1.0])
    loss = steps.loss_function("multiclass", 1.0, device)(logits, target)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target.long()).item())
    model = torch.nn.Identity()
    totals, _ = steps.validate_epoch(model, [{"features": logits, "label": target}],
                                     steps.loss_function("multiclass", 1.0, device), device=device,
                                     task="multiclass")
    assert steps.task_metrics("multiclass", totals, None)["val_accuracy"] == pytest.approx(2 / 3)
    preds, truth = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 2.0])
    totals, _ = steps.validate_epoch(model, [{"features": preds, "label": truth}],
                                     steps.loss_function("regression", 1.0, device), device=device,
                                     task="regression")
    assert steps.task_metrics("regression", totals, None)["val_rmse"] == pytest.approx(np.sqrt(5 / 3))


# ---- export and fusing


def test_fused_embed_graph_matches_the_python_featurizer_and_the_fm(tmp_path):
    config = FeaturizeConfig(label="rating", task="regression", embed=["user", "item"], numeric=["age"])
    table = ratings()
    state = fit(table, config)
    model = build_model(ModelConfig(kind="fm", factors=4), state["output_dim"], layout=state["layout"]).eval()
    with torch.no_grad():
        for t in [*model.factors, *model.biases]:
            t.weight[1:].normal_()
    plain = export_onnx(model, state["output_dim"], tmp_path / "plain.onnx", task="regression")
    assert parity(model, plain, transform(table, state), 1e-4, "regression")["passed"]
    fused = fuse(state, plain, tmp_path / "fused.onnx")
    edge = pa.table({"user": ["stranger", None, "u1"], "item": pa.array([5, None, 101], pa.int64()),
                     "age": [None, 30.0, 50.0], "rating": [1.0, 1.0, 1.0]})
    report = fused_parity(state, model, fused, pa.concat_tables([table, edge]), 1e-4)
    assert report["passed"] and report["rows"] == table.num_rows + 3
    outputs = [o.name for o in onnx_session(fused).get_outputs()]
    assert outputs == [output_name("regression")] == ["prediction"]


def test_multiclass_export_outputs_class_probabilities(tmp_path):
    model = build_model(ModelConfig(hidden=[8]), input_dim=4, outputs=3).eval()
    path = export_onnx(model, 4, tmp_path / "m.onnx", task="multiclass")
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    (probs,) = onnx_session(path).run(["probabilities"], {"features": x})
    assert probs.shape == (6, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_fm_l2_penalty_is_computed_in_training_and_added_to_the_loss():
    layout = [{"kind": "embed", "offset": 0, "cardinality": 4}, {"kind": "embed", "offset": 1, "cardinality": 4}]
    model = build_model(ModelConfig(kind="fm", factors=2, l2=0.5), input_dim=2, layout=layout)
    x, y = torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([4.0, 2.0])
    model.train()
    model(x)
    expected = sum((t(x[:, i].long()).pow(2).sum(1) + b(x[:, i].long()).squeeze(-1).pow(2)).mean()
                   for i, (t, b) in enumerate(zip(model.factors, model.biases)))
    assert model.penalty.item() == pytest.approx(0.5 * expected.item())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    totals, _ = steps.train_epoch(model, [{"features": x, "label": y}], optimizer, scheduler, torch.nn.MSELoss(),
                                  device=torch.device("cpu"), grad_clip=None)
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(model(x), y).item()
    assert totals[0].item() / 2 == pytest.approx(mse + model.penalty.item(), rel=1e-5)
    model.eval()
    model(x)
    assert model.penalty is None  # never part of evaluation or the exported graph


def test_a_regression_model_starts_at_the_mean_label():
    from rayml.train import output_bias

    featurized = {"task": "regression", "label_stats": {"rows": 10, "mean": 3.53, "std": 1.1}}
    assert output_bias(featurized) == pytest.approx(3.53)
    assert output_bias({"task": "binary", "label_counts": {"0": 9, "1": 1}}) == 0.0
    layout = [{"kind": "embed", "offset": 0, "cardinality": 4}, {"kind": "embed", "offset": 1, "cardinality": 4}]
    unseen = torch.zeros(3, 2)  # unknown user and item: the fm's answer is its global bias alone
    fm = build_model(ModelConfig(kind="fm", factors=2), input_dim=2, layout=layout)
    set_output_bias(fm, 3.53)
    assert fm.eval()(unseen).tolist() == pytest.approx([3.53] * 3)
    mlp = build_model(ModelConfig(kind="mlp", hidden=[4], dropout=0.0), input_dim=2)
    last = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)][-1]
    x = torch.randn(5, 2)
    before, old = mlp.eval()(x), last.bias.item()
    set_output_bias(mlp, 3.53)
    assert mlp(x).tolist() == pytest.approx((before + 3.53 - old).tolist(), abs=1e-5)  # only the output shifts
