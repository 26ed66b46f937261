"""ONNX export and the parity gate (no Ray)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from rayml.errors import ParityError
from rayml.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_session, parity
from rayml.models import ModelConfig, build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=[16, 8], dropout=0.3), input_dim=7).eval()
    path = export_onnx(model, 7, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, path


def test_export_has_a_dynamic_batch_axis_and_named_io(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME] and [o.name for o in graph.output] == [OUTPUT_NAME]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 7
    session = onnx_session(path)
    for rows in (1, 3, 1000):
        out = session.run([OUTPUT_NAME], {INPUT_NAME: np.zeros((rows, 7), np.float32)})[0]
        assert out.shape == (rows,) and np.all((out > 0) & (out < 1))


def test_parity_passes_for_the_exported_model(exported):
    model, path = exported
    features = np.random.default_rng(1).normal(size=(512, 7)).astype(np.float32)
    report = parity(model, path, features, tolerance=1e-5)
    assert report["passed"] and report["rows"] == 512 and report["max_abs_diff"] <= 1e-5


def test_parity_fails_when_the_graph_does_not_match_the_model(exported):
    model, path = exported
    changed = build_model(ModelConfig(hidden=[16, 8], dropout=0.3), input_dim=7).eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.net[-1].bias += 0.5  # the torch model drifts from what was exported
    features = np.random.default_rng(2).normal(size=(64, 7)).astype(np.float32)
    with pytest.raises(ParityError, match=r"differs from torch by up to .* on 64 held-out rows"):
        parity(changed, path, features, tolerance=1e-4)


def test_parity_rejects_an_empty_sample(exported):
    model, path = exported
    with pytest.raises(ParityError, match="non-empty"):
        parity(model, path, np.zeros((0, 7), np.float32), tolerance=1e-4)


def test_export_retries_cpythons_ast_race_and_nothing_else(monkeypatch, tmp_path):
    from rayml import export

    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=165, after=74)")

    monkeypatch.setattr(torch.onnx, "export", flaky)
    export.torch_onnx_export("model", ())
    assert len(calls) == 2

    def always(*args, **kwargs):
        calls.append(1)
        raise SystemError("AST constructor recursion depth mismatch (before=1, after=2)")

    calls.clear()
    monkeypatch.setattr(torch.onnx, "export", always)
    with pytest.raises(SystemError):
        export.torch_onnx_export("model", ())
    assert len(calls) == 3  # given up after three tries

    def other(*args, **kwargs):
        calls.append(1)
        raise SystemError("something else")

    calls.clear()
    monkeypatch.setattr(torch.onnx, "export", other)
    with pytest.raises(SystemError, match="something else"):
        export.torch_onnx_export("model", ())
    assert len(calls) == 1
