"""The fraud job end to end on a real local Ray: quality, quarantine, manifests, registry, rerun and resume."""

from __future__ import annotations

import json
import shutil

import onnx
import pyarrow.parquet as pq
import pytest

from rayml import artifacts, featurize, pipeline
from rayml.errors import DataValidationError
from rayml.validate import ERROR, RAW, SOURCE_FILE, SOURCE_ROW
from tests.integration.conftest import JOB, job_overrides

pytestmark = pytest.mark.integration

STAGES = ("validate", "featurize", "train", "evaluate", "export", "register")


def manifest(run_dir, stage) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


def test_model_reaches_95_percent_of_the_best_achievable_roc_auc(fraud_run):
    report = manifest(fraud_run["run_dir"], "evaluate")["report"]
    assert report["n"] > 7000 and report["positives"] > 80
    assert report["roc_auc"] >= 0.95 * report["reference_roc_auc"], report
    assert 0.0 < report["threshold"] < 1.0
    cm = report["confusion_matrix"]
    assert cm["tp"] + cm["fn"] == report["positives"] and sum(cm.values()) == report["n"]
    for key in ("pr_auc", "precision", "recall", "f1"):
        assert 0.0 <= report[key] <= 1.0


def test_quarantine_reconciles_with_the_injected_bad_records(fraud_run, fraud_data):
    summary = fraud_data["summary"]
    validated = manifest(fraud_run["run_dir"], "validate")
    assert validated["read_rows"] == summary["rows"] == validated["valid_rows"] + validated["quarantined_rows"]
    assert validated["quarantined_rows"] == summary["bad_rows"] > 0
    quarantined = pq.ParquetDataset(validated["quarantine_path"]).read().to_pylist()
    ids = [json.loads(row[RAW])["transaction_id"] for row in quarantined]
    assert sorted(ids) == sorted(summary["bad_ids"])  # exactly the injected records, each once
    for row in quarantined:
        assert row[ERROR] and row[SOURCE_FILE].endswith(".parquet") and row[SOURCE_ROW] >= 0
    featurized = manifest(fraud_run["run_dir"], "featurize")
    assert sum(featurized["rows"].values()) == validated["valid_rows"]


def assert_same_state(a, b, path="state"):
    """Fitted states are equal up to float rounding (partial statistics merge in another grouping)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_featurize_fits_on_the_statistics_gathered_while_validating(fraud_run, tmp_path):
    """The validate stage gathers the train records' statistics as it writes them and featurize fits on them
    instead of reading the records again: the state must equal a fitting pass over the written records."""
    job, run_dir = fraud_run["job"], fraud_run["run_dir"]
    validated = manifest(run_dir, "validate")
    assert validated["fitted"]["state"]["rows"] == manifest(run_dir, "featurize")["rows"]["train"] > 0
    assert manifest(run_dir, "featurize")["fitted_from"] == "validate"
    separate = featurize.run_stage(validated["valid_path"], split=job.split, config=job.features,
                                   out_dir=tmp_path / "refit")  # not fitted: its own fitting pass
    assert_same_state(json.loads((run_dir / "featurize" / featurize.STATE_FILE).read_text()),
                      json.loads(open(separate["state_path"]).read()))


def test_a_reused_validate_stage_refits_for_another_split(fraud_run, fraud_data, tmp_path):
    """Statistics gathered for one split are not used for another: featurize fits again."""
    run_dir = tmp_path / "changed"
    shutil.copytree(fraud_run["run_dir"] / "validate", run_dir / "validate")
    job = pipeline.load_job(JOB, job_overrides(fraud_data["path"], tmp_path, "run.name=changed",
                                               "split.seed=3"))
    validated, featurized = pipeline.prepare(job, run_dir)
    assert validated["fitted"] == manifest(fraud_run["run_dir"], "validate")["fitted"]  # reused
    state = json.loads(open(featurized["state_path"]).read())
    separate = featurize.run_stage(validated["valid_path"], split=job.split, config=job.features,
                                   out_dir=tmp_path / "refit")
    assert featurized["fitted_from"] == "records" and separate["fitted_from"] == "records"
    assert_same_state(state, json.loads(open(separate["state_path"]).read()))
    assert featurized["rows"]["train"] != manifest(fraud_run["run_dir"], "featurize")["rows"]["train"]


def test_every_stage_writes_a_manifest_and_the_registry_verifies(fraud_run):
    for stage in STAGES:
        assert manifest(fraud_run["run_dir"], stage)["stage"] == stage
    version_dir = fraud_run["registered"]["version_dir"]
    registered = artifacts.verify(version_dir)
    assert set(registered["files"]) == {"model.onnx", "featurizer.json", "model.pt", "report.json", "reference.json"}
    assert registered["parity"]["passed"] and registered["parity"]["max_abs_diff"] <= 1e-4
    # the served graph takes raw columns: the featurizer is fused in, checked on unseen categories and nulls
    assert registered["onnx_input"] == "columns"
    inputs = {c["name"] for c in registered["input_schema"]}
    job = fraud_run["job"]
    assert inputs == set(job.features.numeric) | set(job.features.categorical)
    assert registered["fused_parity"]["passed"] and registered["fused_parity"]["max_abs_diff"] <= 1e-4
    graph = onnx.load(f"{version_dir}/model.onnx").graph
    assert {i.name for i in graph.input} == inputs
    for tensor in graph.input:
        batch_dim = tensor.type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.dim_value  # a dynamic batch axis
    for plot in ("roc.png", "pr.png"):
        assert (fraud_run["run_dir"] / "evaluate" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = manifest(fraud_run["run_dir"], "train")["history"]
    assert [h["epoch"] for h in history] == list(range(1, 7))


def test_rerun_reuses_completed_stages(fraud_run, caplog):
    caplog.set_level("INFO", logger="rayml")
    again = pipeline.run(fraud_run["job"])
    assert again["version_dir"] == fraud_run["registered"]["version_dir"]  # not registered twice
    reused = [r.getMessage() for r in caplog.records if "reusing the completed stage" in r.getMessage()]
    assert len(reused) == len(STAGES)


def test_stopped_training_resumes_at_the_next_epoch(fraud_run, fraud_data, tmp_path):
    run_dir = tmp_path / "resume"
    for stage in ("validate", "featurize"):  # the data stages are reused, training starts fresh
        shutil.copytree(fraud_run["run_dir"] / stage, run_dir / stage)
    base = job_overrides(fraud_data["path"], tmp_path, "run.name=resume")
    first = pipeline.run(pipeline.load_job(JOB, [*base, "train.epochs=1"]), through="train")
    assert [h["epoch"] for h in first["history"]] == [1]
    second = pipeline.run(pipeline.load_job(JOB, [*base, "train.epochs=3"]))
    history = manifest(run_dir, "train")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0] == first["history"][0]  # epoch 1 (with its wall time) came from the checkpoint
    checkpoints = [p for p in (run_dir / "train" / "ray_train").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 3  # one from the first attempt, two from the resumed one
    assert artifacts.verify(second["version_dir"])["training"]["epochs"] == 3


def test_too_many_bad_records_fail_the_run_with_a_clear_message(fraud_data, tmp_path, ray_cluster):
    job = pipeline.load_job(JOB, job_overrides(fraud_data["path"], tmp_path, "validation.max_bad_fraction=0.001"))
    with pytest.raises(DataValidationError) as info:
        pipeline.run(job)
    message = str(info.value)
    summary = fraud_data["summary"]
    assert f"{summary['bad_rows']} of {summary['rows']} records (1.00%)" in message
    assert "validation.max_bad_fraction=0.001" in message
    assert "quarantined" in message


def test_mlflow_holds_the_params_the_epochs_the_report_and_the_registered_model(fraud_run):
    from mlflow.tracking import MlflowClient

    from rayml.tracking import RUN_FILE

    saved = json.loads((fraud_run["run_dir"] / RUN_FILE).read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "6" and run.data.params["train.lr"] == "0.003"
    history = client.get_metric_history(saved["run_id"], "val_roc_auc")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # one point per epoch, from rank 0 only
    report = manifest(fraud_run["run_dir"], "evaluate")["report"]
    assert run.data.metrics["roc_auc"] == pytest.approx(report["roc_auc"])
    assert run.data.tags["rayml.registry_path"] == fraud_run["registered"]["version_dir"]
    logged = {a.path for a in client.list_artifacts(saved["run_id"], "evaluate")}
    assert {"evaluate/report.json", "evaluate/roc.png", "evaluate/pr.png"} <= logged
