"""s3:// end to end against a real moto_server: the validate stage from an s3:// source to s3:// valid and
quarantine output on Ray Data, a model version registered to, verified in and served from an s3:// registry,
and the whole pipeline with its run directory (every stage, Ray Train checkpoints) on s3://."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from rayml import artifacts, featurize, storage, validate
from rayml.datasets.fraud import generate_fraud
from rayml.pipeline import load_job
from rayml.source import SourceConfig
from tests.conftest import REPO
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


STAGES = ("validate", "featurize", "train", "evaluate", "export", "register")


def test_whole_pipeline_on_s3_resumes_and_serves_from_s3(ray_cluster, s3, tmp_path, monkeypatch, capsys):
    """Source, run directory (every stage, Ray Train checkpoints) and registry all on s3://; nothing lands in a
    local `s3:` directory; `rayml train --resume s3://.../run` reuses every stage; the version loads and the
    serve verb resolves it."""
    from rayml import cli, pipeline, serve
    from rayml.predictor import Predictor

    summary = generate_fraud(4000, tmp_path / "data", seed=3, bad_fraction=0.01)
    base = s3.uri("pipeline", tmp_path.name)
    storage.upload(tmp_path / "data", f"{base}/src")
    job = load_job(JOB, [
        f"source.path={base}/src", f"run.root={base}/runs", "run.name=s3run", f"registry.root={base}/registry",
        "tracking.enabled=false", "train.epochs=1", "export.parity_rows=256",
    ])
    run_dir = f"{base}/runs/s3run"

    registered = pipeline.run(job)

    assert registered["version_dir"] == f"{base}/registry/{job.registry.model_name}/1"
    assert storage.file_type(f"{run_dir}/job.json") == "file"
    manifests = {stage: artifacts.read_manifest(f"{run_dir}/{stage}") for stage in STAGES}
    assert all(manifests[stage] is not None and manifests[stage]["stage"] == stage for stage in STAGES)
    validated, trained = manifests["validate"], manifests["train"]
    assert validated["read_rows"] == summary["rows"] and validated["quarantined_rows"] == summary["bad_rows"]
    assert trained["checkpoint"].startswith(f"{run_dir}/train/ray_train/checkpoint_")
    assert storage.file_type(f"{trained['checkpoint']}/model.pt") == "file"
    assert storage.file_type(f"{run_dir}/train/lineage.json") == "file"
    assert {"report.json", "roc.png", "pr.png"} <= set(storage.list_children(f"{run_dir}/evaluate"))
    assert manifests["export"]["onnx_path"] == f"{run_dir}/export/model.onnx"
    assert storage.file_type(manifests["export"]["onnx_path"]) == "file"
    assert not (Path.cwd() / "s3:").exists()  # no URI collapsed into a local path

    assert pipeline.load_run(run_dir).run.model_dump() == {"root": f"{base}/runs", "name": "s3run"}
    capsys.readouterr()
    assert cli.main(["train", "--resume", run_dir]) == 0
    assert f"model registered at {registered['version_dir']}" in capsys.readouterr().out
    assert {stage: artifacts.read_manifest(f"{run_dir}/{stage}") for stage in STAGES} == manifests  # all reused
    assert artifacts.versions(f"{base}/registry/{job.registry.model_name}") == [1]

    monkeypatch.setenv("RAYML_CACHE_DIR", str(tmp_path / "cache"))
    predictor = Predictor(registered["version_dir"])
    assert predictor.version == "1"
    inputs = [column.name for column in predictor.columns]
    records = _read_parquet(validated["valid_path"]).select(inputs).slice(0, 5).to_pylist()
    probabilities = predictor.predict_table(predictor.records_table(records))
    assert probabilities.shape == (5,) and np.all((probabilities >= 0) & (probabilities <= 1))
    args = serve.args_for_model_dir(registered["version_dir"])
    assert args == {"registry": f"{base}/registry",
                    "models": [{"name": job.registry.model_name, "versions": ["1"]}]}
    model_dir = f"{base}/registry/{job.registry.model_name}"
    routes = serve.resolve_routes(serve.ServeConfig(**serve.args_for_model_dir(model_dir)))
    assert routes[job.registry.model_name].versions == ("1",)


def test_an_s3_run_root_needs_a_tracking_server_and_a_resume_names_a_missing_run(s3):
    from rayml import pipeline
    from rayml.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_job(JOB, [f"run.root={s3.uri('runs')}"])
    assert any(p.startswith("tracking.tracking_uri: run.root is on s3://") for p in info.value.problems)
    with pytest.raises(ConfigError, match=r"does not exist, so there is no job to resume.*run.name=gone"):
        pipeline.load_run(s3.uri("runs", "gone"))
    storage.write_text(s3.uri("runs", "half", "validate", "manifest.json"), "{}")
    with pytest.raises(ConfigError, match=r"has no job.json, so there is no job to resume"):
        pipeline.load_run(s3.uri("runs", "half"), ["storage.s3.region=us-east-1"])


def test_rayml_ingest_writes_exactly_once_to_an_s3_output(ray_cluster, s3, tmp_path):
    """The tasks run in the shared cluster's workers, which have no AWS variables: they get the filesystem the
    driver resolved from the job's storage section."""
    from rayml import ingest
    from rayml.ingest.plan import QUARANTINE_DIR, VALID_DIR
    from rayml.kafka_broker import MockBroker, produce_fraud

    out = s3.uri("ingest", "fraud")
    with MockBroker() as broker:
        summary = produce_fraud(broker.bootstrap, "s3-topic", 900, seed=3, bad_fraction=0.05)
        job = load_job(REPO / "jobs" / "fraud_stream.yaml", [
            "source.path=s3-topic", f"source.kafka.bootstrap_servers={broker.bootstrap}", f"ingest.output={out}",
            "ingest.max_batch_messages=400", f"storage.s3.endpoint_url={s3.endpoint_url}",
            "storage.s3.region=us-east-1"])
        first = ingest.run(job, until_caught_up=True)
        again = ingest.run(job, until_caught_up=True)  # caught up already: nothing new is written
    assert first["valid"] + first["quarantined"] == 900 and first["quarantined"] == summary["bad_rows"] > 0
    assert again["valid"] == again["quarantined"] == 0
    valid = _read_parquet(f"{out}/{VALID_DIR}").column("transaction_id").to_pylist()
    assert len(valid) == len(set(valid)) == first["valid"]
    assert _read_parquet(f"{out}/{QUARANTINE_DIR}").num_rows == summary["bad_rows"]
