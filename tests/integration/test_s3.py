"""s3:// end to end against a real moto_server: the validate stage from an s3:// source to s3:// valid and
quarantine output on Ray Data, and a model version registered to, verified in and served from an s3://
registry."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from rayml import artifacts, featurize, storage, validate
from rayml.datasets.fraud import generate_fraud
from rayml.pipeline import load_job
from rayml.source import SourceConfig
from tests.integration.conftest import JOB

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The driver's S3 settings; Ray Data's read and write tasks get the filesystem the driver resolved."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3_server


def _read_parquet(uri: str) -> pa.Table:
    filesystem, inner = storage.resolve(uri)
    return pads.dataset(inner, filesystem=filesystem, format="parquet").to_table()


def test_validate_stage_from_s3_source_to_s3_outputs(ray_cluster, s3, tmp_path):
    summary = generate_fraud(1200, tmp_path / "data", seed=5, bad_fraction=0.04, fmt="jsonl", rows_per_file=400)
    source_uri = s3.uri("validate-src", "fraud")
    assert len(storage.upload(tmp_path / "data", source_uri)) >= 3
    job = load_job(JOB)
    out_uri = s3.uri("validate-out", "run1", "validate")
    storage.write_text(f"{out_uri}/records/_status=valid/stale.parquet", "left by an interrupted attempt")

    result = validate.run_stage(SourceConfig(path=source_uri, format="jsonl", batch_rows=250), job.validation,
                                out_uri)

    assert result["read_rows"] == summary["rows"] == result["valid_rows"] + result["quarantined_rows"]
    assert result["quarantined_rows"] == summary["bad_rows"] > 0
    assert result["valid_path"] == f"{out_uri}/records/_status=valid"
    assert result["quarantine_path"] == f"{out_uri}/records/_status=quarantined"
    valid = _read_parquet(result["valid_path"])
    assert valid.num_rows == result["valid_rows"] and valid.column(validate.ERROR).null_count == valid.num_rows
    quarantined = _read_parquet(result["quarantine_path"]).to_pylist()
    assert all(row[validate.SOURCE_FILE].startswith(f"{source_uri}/") for row in quarantined)
    ids = sorted(json.loads(row[validate.RAW])["transaction_id"] for row in quarantined)
    assert ids == sorted(summary["bad_ids"])
    assert not storage.exists(f"{out_uri}/records/_status=valid/stale.parquet")  # a rerun starts clean


def _tiny_version(tmp_path) -> tuple[dict, dict, pa.Table]:
    """A real (untrained) model version: a fitted featurizer and its ONNX graph over two columns."""
    import torch

    from rayml.export import export_onnx
    from rayml.models import ModelConfig, build_model

    rng = np.random.default_rng(0)
    table = pa.table({"amount": rng.lognormal(3, 1, 200), "channel": rng.choice(["web", "pos"], 200).tolist(),
                      "y": (rng.random(200) < 0.2).astype(np.int64)})
    config = featurize.FeaturizeConfig(label="y", numeric=["amount"], log1p=["amount"], categorical=["channel"])
    state = featurize.merge_stats([featurize.partial_stats(table, config)], config)
    dim = featurize.transform(table, state).shape[1]
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=[8]), input_dim=dim).eval()
    (tmp_path / "featurizer.json").write_text(featurize.dumps(state))
    files = {"model.onnx": export_onnx(model, dim, tmp_path / "model.onnx"),
             "featurizer.json": tmp_path / "featurizer.json"}
    manifest = {"threshold": 0.5, "input_schema": [{"name": "amount", "type": "float"},
                                                   {"name": "channel", "type": "string"}]}
    return files, manifest, table


def test_register_verify_and_load_a_model_version_from_an_s3_registry(s3, tmp_path, monkeypatch):
    from rayml.predictor import Predictor

    files, manifest, table = _tiny_version(tmp_path)
    registry = s3.uri("registry", tmp_path.name)
    version_dir = artifacts.register(registry, "fraud", files, manifest)
    assert version_dir == f"{registry}/fraud/1"
    assert artifacts.verify(version_dir)["files"]["model.onnx"] == artifacts.sha256_file(files["model.onnx"])

    monkeypatch.setenv("RAYML_CACHE_DIR", str(tmp_path / "cache"))
    predictor = Predictor(f"{registry}/fraud")  # the model dir: its latest version, fetched and verified
    assert (predictor.name, predictor.version) == ("fraud", "1")
    assert str(predictor.path).startswith(str(tmp_path / "cache"))
    records = [{"amount": 12.5, "channel": "web"}, {"amount": 300.0, "channel": "pos"}]
    probabilities = predictor.predict_table(predictor.records_table(records))
    assert probabilities.shape == (2,) and np.all((probabilities > 0) & (probabilities < 1))

    storage.write_bytes(f"{version_dir}/model.onnx", b"tampered in the bucket")
    from rayml.errors import RegistryError

    with pytest.raises(RegistryError, match="model.onnx fails its checksum"):
        artifacts.verify(version_dir)
