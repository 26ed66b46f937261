"""The README's main job, `rayml demo`, as a user runs it (here against the session's cluster)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_demo_trains_serves_and_answers_http(ray_cluster, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    done = subprocess.run(
        [sys.executable, "-m", "rayml", "demo", "--rows", "8000", "--workdir", str(tmp_path),
         "--port", str(ray_cluster.serve_port), "train.epochs=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    out = done.stdout
    assert done.returncode == 0, (out + done.stderr)[-4000:]
    assert "GET  /v2/health/ready -> 200" in out, out[-4000:]
    assert "POST /predict/fraud (6 transactions) -> 200" in out
    assert out.count(" -> p=") == 6
    assert "POST /predict/fraud (malformed) -> 400" in out and "instances[0].amount: got 'twelve'" in out
    assert "demo finished" in out
    assert (tmp_path / "registry" / "fraud" / "1" / "manifest.json").is_file()
