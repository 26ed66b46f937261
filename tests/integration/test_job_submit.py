"""The same job under `ray job submit --working-dir` against the running cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rayml import artifacts
from tests.conftest import REPO
from tests.integration.conftest import job_overrides

pytestmark = pytest.mark.integration


def test_ray_job_submit_runs_the_pipeline(ray_cluster, fraud_data, tmp_path):
    ray_bin = Path(sys.executable).with_name("ray")
    runtime_env = {"excludes": [".venv", ".git", "runs", "data", "registry", "demo", "*.egg-info"]}
    overrides = job_overrides(fraud_data["path"], tmp_path, "run.name=job", "train.epochs=1")
    command = [
        str(ray_bin), "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "-m", "rayml", "run", "jobs/fraud_detection.yaml", *overrides,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "succeeded" in output and "model registered at" in output
    assert "connected to the Ray cluster" in output or "already connected" in output
    version_dir = artifacts.resolve_version_dir(tmp_path / "registry" / "fraud")
    manifest = artifacts.verify(version_dir)
    assert manifest["training"]["epochs"] == 1
    assert json.loads((tmp_path / "job" / "train" / "manifest.json").read_text())["history"][0]["epoch"] == 1
