"""Training survives faults: a Ray Train worker killed mid-epoch, and a pipeline process stopped mid-training
and continued with `rayml train --resume RUN_DIR`. Both end like an uninterrupted run of the same config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rayml import artifacts, pipeline
from tests.conftest import REPO
from tests.integration.conftest import JOB

pytestmark = pytest.mark.integration

EPOCHS = 4
# Small batches make an epoch last a few seconds on 8k rows, so a kill right after the first checkpoint lands
# inside epoch 2. The schedule, warmup and RNG state (dropout) all have to come back for the runs to agree.
TRAIN = [f"train.epochs={EPOCHS}", "train.batch_size=8", "train.schedule=cosine", "train.warmup_epochs=0.5",
         "train.keep_checkpoints=2", "train.checkpoint_metric=val_loss"]
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train v2's record of registered checkpoints
# Per-epoch losses, AUCs and learning rates of a resumed run match the uninterrupted run's: on one node the data
# order is deterministic (materialized splits, seeded local shuffle), and model, optimizer, scheduler and RNG state
# come back from the checkpoint. Measured: identical; the tolerance only allows float summation-order noise.
TOLERANCE = 1e-4


def overrides(data: Path, root: Path, name: str) -> list[str]:
    return [f"source.path={data}", f"run.root={root}", f"registry.root={root / 'registry'}", f"run.name={name}",
            "split.train=0.7", "split.val=0.2", "split.test=0.1", *TRAIN]


def manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from rayml.datasets.fraud import generate_fraud

    out = tmp_path_factory.mktemp("fault-data") / "fraud"
    generate_fraud(8_000, out, seed=3, bad_fraction=0.0)
    return out


@pytest.fixture(scope="module")
def reference(ray_cluster, small_data, tmp_path_factory) -> dict:
    """The uninterrupted run every faulty run is compared with; its data stages are reused by the others."""
    root = tmp_path_factory.mktemp("fault-runs")
    started = time.monotonic()
    pipeline.run(pipeline.load_job(JOB, overrides(small_data, root, "reference")), through="train")
    train = manifest(root / "reference", "train")
    stages = {s: manifest(root / "reference", s)["seconds"] for s in ("validate", "featurize", "train")}
    print(f"\nreference run: {time.monotonic() - started:.1f}s {stages}; epochs "
          f"{[round(h['epoch_seconds'], 1) for h in train['history']]} s; final {_final(train)}")
    return {"root": root, "train": train}


def test_a_worker_killed_mid_epoch_is_replaced_and_the_run_ends_as_if_uninterrupted(reference, small_data):
    root = reference["root"]
    run_dir = _with_data_stages(root, "killed")
    job = pipeline.load_job(JOB, overrides(small_data, root, "killed"))
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["trained"] = pipeline.run(job, through="train")
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait_for_checkpoint(run_dir, epoch=1, alive=thread.is_alive)
    workers = _train_workers()
    assert len(workers) == 2, workers
    os.kill(workers[-1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    assert _committed_epochs(run_dir) == {1}, "killed too late: epoch 2 had already finished"
    _wait_for_checkpoint(run_dir, epoch=2, alive=thread.is_alive)
    recovered = time.monotonic() - killed_at
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in outcome, outcome

    train = manifest(run_dir, "train")
    history = train["history"]
    print(f"\nkilled run: epoch 2 checkpointed {recovered:.1f}s after the kill; final {_final(train)}")
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert train["attempts"] == 2
    # epoch 1 came from the first attempt's checkpoint; epoch 2 was cut short by the kill and redone
    assert [h["attempt"] for h in history] == [1, 2, 2, 2]
    assert [h["global_step"] for h in history] == [h["global_step"] for h in reference["train"]["history"]]
    _assert_close(train, reference["train"])
    assert train["checkpoint_choice"]["rule"] == "best" and Path(train["checkpoint"]).is_dir()
    assert outcome["trained"]["history"] == history


def test_rayml_train_resume_finishes_a_stopped_run(reference, small_data):
    root = reference["root"]
    run_dir = _with_data_stages(root, "stopped")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (root / "stopped.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "rayml", "run", str(JOB), *overrides(small_data, root, "stopped")],
                             cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_checkpoint(run_dir, epoch=1, alive=lambda: first.poll() is None)
        first.send_signal(signal.SIGINT)  # Ctrl-C: Ray Train aborts the run; rayml exits with 130
        assert first.wait(timeout=60) == 130, (root / "stopped.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    assert f"continue it with `rayml train --resume {run_dir.resolve()}`" in (root / "stopped.log").read_text()
    assert not (run_dir / "train" / "manifest.json").exists()
    _wait_until(lambda: not _train_workers(), 60, "the stopped run's training workers to exit")

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rayml", "train", "--resume", str(run_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "model registered at" in output
    assert "validate: reusing the completed stage" in output and "featurize: reusing the completed stage" in output
    train = manifest(run_dir, "train")
    print(f"\nresumed run: {time.monotonic() - started:.1f}s to finish; final {_final(train)}")
    assert [h["epoch"] for h in train["history"]] == list(range(1, EPOCHS + 1))
    assert train["attempts"] == 2 and train["history"][0]["attempt"] == 1
    _assert_close(train, reference["train"])
    registered = artifacts.verify(output.split("model registered at ", 1)[1].split()[0])
    assert registered["training"]["attempts"] == 2
    assert registered["training"]["checkpoint"]["epoch"] == train["checkpoint_choice"]["epoch"]


def _with_data_stages(root: Path, name: str) -> Path:
    """A new run directory holding the reference run's validate and featurize stages (reused: same inputs)."""
    for stage in ("validate", "featurize"):
        shutil.copytree(root / "reference" / stage, root / name / stage)
    return root / name


def _committed_epochs(run_dir: Path) -> set[int]:
    """Epochs whose checkpoint Ray Train has registered (a restart resumes from those): the ones listed in the
    checkpoint manager's snapshot. A checkpoint directory alone may still be uploading."""
    try:
        snapshot = json.loads((run_dir / "train" / "ray_train" / SNAPSHOT).read_text())
        results = [snapshot["latest_checkpoint_result"], *snapshot["checkpoint_results"]]
        return {int(r["metrics"]["epoch"]) for r in results if r}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _wait_for_checkpoint(run_dir: Path, epoch: int, alive, seconds: float = 180) -> None:
    _wait_until(lambda: epoch in _committed_epochs(run_dir) or not alive(), seconds,
                f"the checkpoint of epoch {epoch}")
    assert epoch in _committed_epochs(run_dir), f"the run ended without a checkpoint of epoch {epoch}"


def _wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")
        time.sleep(0.1)


def _train_workers() -> list:
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], limit=100)


def _final(train: dict) -> dict:
    last = train["history"][-1]
    return {k: round(last[k], 4) for k in ("train_loss", "val_loss", "val_roc_auc", "val_pr_auc")}


def _assert_close(train: dict, reference: dict) -> None:
    for got, expected in zip(train["history"], reference["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_roc_auc", "val_pr_auc", "lr"):
            assert got[key] == pytest.approx(expected[key], abs=TOLERANCE), (got["epoch"], key, got, expected)



def test_early_stopping_stops_every_rank_together(reference, small_data):
    """A run that stops improving ends after `patience` more epochs, on every rank at once (a rank left behind
    would hang in the next collective). A learning rate of 1e-30 freezes the weights (each update is far below
    float32 resolution), so the validation loss never improves after epoch 1: the outcome is exact."""
    root = reference["root"]
    _with_data_stages(root, "early")
    settings = ["train.epochs=6", "train.batch_size=256", "train.lr=1e-30", "train.schedule=constant",
                "train.warmup_epochs=0", "train.early_stopping_patience=2"]
    trained = pipeline.run(pipeline.load_job(JOB, [*overrides(small_data, root, "early"), *settings]),
                           through="train")
    history = trained["history"]
    assert len({h["val_loss"] for h in history}) == 1  # the premise: no epoch improved on epoch 1
    assert trained["stopped_early"] and [h["epoch"] for h in history] == [1, 2, 3]
    assert trained["checkpoint_choice"]["epoch"] == 3  # equal scores: the later checkpoint, as Ray Train ranks them
    assert Path(trained["checkpoint"]).is_dir()
