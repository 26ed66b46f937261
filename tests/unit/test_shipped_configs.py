"""Every shipped config is a test case: each file in jobs/ and serve_configs/ parses, and the CLI reports
config problems all at once with the field path and the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from rayml import pipeline
from rayml.serve import ServeConfig
from tests.conftest import REPO

JOBS = sorted((REPO / "jobs").glob("*.yaml"))
SERVE_CONFIGS = sorted((REPO / "serve_configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert JOBS and SERVE_CONFIGS


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_parses_and_states_its_command(path):
    job = pipeline.load_job(path)
    assert job.name
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), "a job starts with a comment giving the exact command"
    assert "rayml run jobs/" + path.name in path.read_text()


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_parses(path):
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(data) if hasattr(ServeDeploySchema, "model_validate") else (
        ServeDeploySchema.parse_obj(data)
    )
    assert schema.applications
    for app in data["applications"]:
        assert app["import_path"] == "rayml.serve:build_app"
        config = ServeConfig(**app["args"])
        assert config.ongoing_requests() >= config.max_batch_size  # batches can form


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayml", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_check_accepts_the_fraud_job():
    done = _cli("check", "jobs/fraud_detection.yaml", "train.epochs=2")
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout and "2 epochs" in done.stdout


def test_check_lists_every_problem_with_path_and_fix():
    done = _cli("check", "jobs/fraud_detection.yaml", "train.lr=abc", "train.epochs=0", "train.bogus=1",
                "split.train=0.95", "registry.model_name=../up")
    assert done.returncode == 2
    err = done.stderr
    assert "5 problem(s)" in err
    assert "train.lr: got 'abc'" in err and "Fix: set train.lr: 0.001" in err
    assert "train.epochs: got 0" in err
    assert "train.bogus: unknown key" in err and "known keys here:" in err
    assert "split: train + val + test is 1.15" in err
    assert "registry.model_name: got '../up'" in err
    assert "Traceback" not in err  # a user mistake is not a crash


def test_check_reports_columns_a_stage_needs_but_the_schema_lacks():
    done = _cli("check", "jobs/fraud_detection.yaml", "features.categorical=[merchant_category,color]",
                "evaluate.reference_score_column=nope")
    assert done.returncode == 2
    assert "features.categorical: column 'color' is not declared under validation.columns" in done.stderr
    assert "evaluate.reference_score_column: 'nope' must also be listed in features.keep" in done.stderr


def test_missing_job_file_is_a_clear_error():
    done = _cli("check", "jobs/nope.yaml")
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_generate_writes_the_dataset(tmp_path):
    done = _cli("generate", "fraud", "--rows", "500", "--bad-fraction", "0.02", "--out", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    assert "wrote 500 records (10 malformed)" in done.stdout
    assert (tmp_path / "d" / "_generator.json").is_file()
    again = _cli("generate", "fraud", "--rows", "500", "--out", str(tmp_path / "d"))
    assert again.returncode == 1 and "error:" in again.stderr and "Traceback" not in again.stderr
