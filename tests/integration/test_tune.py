"""`rayml tune` on the shared cluster: four fraud trials of up to three epochs, two at a time, under ASHA; the
best trial's model is evaluated, exported and registered with its params in the manifest."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import ray

from rayml import pipeline
from rayml.tune import search, space
from tests.conftest import REPO
from tests.integration.conftest import job_overrides

pytestmark = pytest.mark.integration

JOB = REPO / "jobs" / "fraud_tune.yaml"
GOOD, BAD = 0.003, 1.0e-6  # after one epoch a learning rate of 1e-6 has barely moved the loss
SPACE = f"{{train.lr: {{choice: [{GOOD}, {BAD}]}}, train.model.dropout: {{uniform: [0.0, 0.2]}}}}"


def ordered_seed() -> int:
    """A sampling seed whose four trials come good, good, bad, bad. Two run at a time, so both good trials have
    reached ASHA's first rung (epoch 1) before either bad one does, and each bad trial then falls below the
    rung's median and is stopped: the outcome does not depend on which trial happens to report first."""
    job = pipeline.load_job(JOB, [f"tune.space={SPACE}", "tune.num_samples=4"])
    for seed in range(1000):
        lrs = [params["train.lr"] for params in space.sample(job.tune.space, 4, seed)]
        if lrs == [GOOD, GOOD, BAD, BAD]:
            return seed
    raise AssertionError("no seed orders the samples good, good, bad, bad")


@pytest.fixture(scope="module")
def tuned(ray_cluster, fraud_data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tune-runs")
    job = pipeline.load_job(JOB, job_overrides(
        fraud_data["path"], root, "run.name=tune", "train.epochs=3", "train.batch_size=512",
        f"tune.space={SPACE}", "tune.num_samples=4", "tune.metric=val_loss", "tune.grace_period=1",
        "tune.reduction_factor=2", "tune.max_concurrent_trials=2", f"tune.seed={ordered_seed()}", tracking=True,
    ))
    before = set(ray.util.placement_group_table())
    outcome = search.run(job)
    return {"outcome": outcome, "run_dir": root / "tune", "job": job, "placement_groups": before}


def test_asha_stops_the_weak_trials_and_the_table_has_every_trial(tuned):
    rows = tuned["outcome"]["rows"]
    assert len(rows) == 4
    bad = [row for row in rows if row["params"]["train.lr"] == BAD]
    good = [row for row in rows if row["params"]["train.lr"] == GOOD]
    assert len(bad) == len(good) == 2
    for row in bad:
        assert row["stopped_by_asha"] and row["status"] == "stopped by ASHA" and row["epochs"] == 1, row
    assert sum(row["epochs"] == 3 for row in good) >= 1  # the best trial ran every epoch


def test_the_best_trial_has_the_best_metric_and_results_are_saved(tuned):
    outcome, tune_dir = tuned["outcome"], tuned["run_dir"] / "tune"
    best = outcome["best"]
    values = [row["value"] for row in outcome["rows"]]
    assert best["value"] == min(values) and best["params"]["train.lr"] == GOOD
    with open(tune_dir / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and table[0]["trial_id"] == best["trial_id"]
    assert {"train.lr", "train.model.dropout", "val_loss", "epochs", "stopped_by_asha"} <= set(table[0])
    saved = json.loads((tune_dir / "results.json").read_text())
    assert saved["best_trial"] == best["trial_id"] and len(saved["trials"]) == 4
    assert (tune_dir / "trials" / best["trial_id"] / "ray_train").is_dir()  # the trial's Ray Train checkpoints

    # best_job.yaml is a job `rayml run` accepts, holding the best trial's settings and no tune section
    best_job = pipeline.load_job(tune_dir / "best_job.yaml")
    assert best_job.tune is None and best_job.run.name is None
    assert best_job.train.lr == GOOD and best_job.train.model.dropout == best["params"]["train.model.dropout"]
    assert best_job.train.num_workers == 1 and best_job.train.checkpoint_metric == "val_loss"


def test_the_best_trial_is_registered_with_its_params(tuned):
    outcome = tuned["outcome"]
    version_dir = Path(outcome["registered"]["version_dir"])
    manifest = json.loads((version_dir / "manifest.json").read_text())
    chosen = manifest["training"]["checkpoint"]
    assert chosen["tune"]["trial_id"] == outcome["best"]["trial_id"]
    assert chosen["tune"]["params"] == outcome["best"]["params"]
    assert chosen["metric"] == "val_loss" and chosen["value"] == pytest.approx(outcome["best"]["value"])
    assert manifest["model"]["config"]["dropout"] == outcome["best"]["params"]["train.model.dropout"]
    assert manifest["metrics"]["roc_auc"] > 0.8
    assert (version_dir / "model.onnx").is_file()


def test_stopped_trials_release_their_workers(tuned):
    """A trial ASHA stops ends its actor; its Train controller, workers and placement group go with it."""
    deadline = time.monotonic() + 30
    while True:
        table = ray.util.placement_group_table()
        left = [pg for pg_id, pg in table.items() if pg_id not in tuned["placement_groups"] and pg["state"] != "REMOVED"]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not left, left


def test_mlflow_holds_the_search_and_one_nested_run_per_trial(tuned):
    from mlflow.tracking import MlflowClient

    saved = json.loads((tuned["run_dir"] / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    parent = client.get_run(saved["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rayml.registry_path"] == tuned["outcome"]["registered"]["version_dir"]
    assert "roc_auc" in parent.data.metrics and parent.data.params["tune.num_samples"] == "4"
    children = client.search_runs([saved["experiment_id"]], f"tags.mlflow.parentRunId = '{saved['run_id']}'")
    by_trial = {run.info.run_name.removeprefix("trial "): run for run in children}
    rows = {row["trial_id"]: row for row in tuned["outcome"]["rows"]}
    assert set(by_trial) == set(rows)
    for trial_id, run in by_trial.items():
        assert float(run.data.params["train.lr"]) == rows[trial_id]["params"]["train.lr"]
        epochs = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in epochs] == list(range(1, rows[trial_id]["epochs"] + 1))


def test_rerunning_the_run_reuses_the_search_and_its_registration(tuned):
    again = search.run(tuned["job"])
    assert again["registered"]["version_dir"] == tuned["outcome"]["registered"]["version_dir"]
    assert [row["trial_id"] for row in again["rows"]] == [row["trial_id"] for row in tuned["outcome"]["rows"]]
