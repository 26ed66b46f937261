"""A run directory remembers its job (job.json), so `rayml train --resume RUN_DIR` can rerun it (no Ray)."""

from __future__ import annotations

import json
import shutil

import pytest

from rayml import cli, pipeline
from rayml.errors import ConfigError
from tests.conftest import REPO

JOB = REPO / "jobs" / "fraud_detection.yaml"


def test_saved_job_round_trips_and_follows_the_run_directory(tmp_path):
    job = pipeline.load_job(JOB, ["train.schedule=cosine", "train.warmup_epochs=0.5", "train.class_weight=2.5"])
    saved = pipeline.save_job(job, tmp_path / "runs" / "fraud-1")
    assert json.loads(saved.read_text())["run"] == {"root": "runs", "name": "fraud-1"}  # the name it got

    moved = tmp_path / "elsewhere" / "fraud-1"
    shutil.move(tmp_path / "runs" / "fraud-1", moved)
    resumed = pipeline.load_run(moved, ["train.epochs=9"])
    assert resumed.run.root == str(moved.parent.resolve()) and resumed.run.name == "fraud-1"
    assert resumed.train.epochs == 9
    assert resumed.model_copy(update={"run": job.run, "train": job.train}) == job
    assert resumed.train.model_copy(update={"epochs": job.train.epochs}) == job.train


def test_resume_without_a_saved_job_says_what_to_pass(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError, match=r"has no job.json, so there is no job to resume"):
        pipeline.load_run(tmp_path / "half")
    assert cli.main(["train", "--resume", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist, so there is no job to resume" in err and "run.name=missing" in err


def test_resume_with_a_bad_override_names_the_field(tmp_path):
    pipeline.save_job(pipeline.load_job(JOB), tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        pipeline.load_run(tmp_path / "run", ["train.precision=fp8"])
    assert any(p.startswith("train.precision: got 'fp8'") for p in info.value.problems)
