"""A real two-node cluster (two raylets, cluster/local/two_nodes.sh) next to the shared one: the pipeline runs
under `ray job submit --working-dir`, on that cluster (not an embedded Ray), and its two DDP workers train on
different nodes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rayml import artifacts
from tests.conftest import REPO, free_port
from tests.integration.conftest import job_overrides

pytestmark = pytest.mark.integration

SCRIPT = REPO / "cluster" / "local" / "two_nodes.sh"


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    state = tmp_path_factory.mktemp("two_nodes")
    # Ray's temp dir holds unix sockets, whose paths must stay short: not under pytest's deep tmp path.
    temp_dir = tempfile.mkdtemp(prefix="rayml2n-", dir="/tmp")
    ports = {name: str(free_port()) for name in (
        "RAYML_GCS_PORT", "RAYML_DASHBOARD_PORT", "RAYML_CLIENT_PORT", "RAYML_HEAD_AGENT_PORT",
        "RAYML_WORKER_AGENT_PORT", "RAYML_HEAD_METRICS_PORT", "RAYML_WORKER_METRICS_PORT")}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(ports, RAYML_NODES_DIR=str(state), RAYML_RAY_TEMP_DIR=temp_dir, RAYML_HEAD_CPUS="2",
               RAYML_WORKER_CPUS="2", RAY_BIN=str(Path(sys.executable).with_name("ray")),
               RAY_USAGE_STATS_ENABLED="0", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=400)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"RAY_ADDRESS=127.0.0.1:{ports['RAYML_GCS_PORT']}" in started.stdout
        yield {"env": env, "dashboard": f"http://127.0.0.1:{ports['RAYML_DASHBOARD_PORT']}",
               "address": f"127.0.0.1:{ports['RAYML_GCS_PORT']}"}
    finally:
        stopped = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True,
                                 timeout=200)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def _alive_nodes(two_nodes: dict) -> dict[str, dict]:
    listed = subprocess.run(
        [two_nodes["env"]["RAY_BIN"], "list", "nodes", "--address", two_nodes["dashboard"], "--format", "json",
         "--detail"],
        env=two_nodes["env"], capture_output=True, text=True, timeout=120,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return {node["node_id"]: node for node in json.loads(listed.stdout) if node["state"] == "ALIVE"}


def test_pipeline_trains_across_two_nodes(two_nodes, tmp_path):
    from rayml.datasets.fraud import generate_fraud

    nodes = _alive_nodes(two_nodes)
    assert len(nodes) == 2
    assert sum(bool(node.get("is_head_node")) for node in nodes.values()) == 1

    generate_fraud(4_000, tmp_path / "data", seed=5, bad_fraction=0.01)
    overrides = job_overrides(tmp_path / "data", tmp_path, "run.name=spread", "train.epochs=2",
                              "train.placement_strategy=STRICT_SPREAD")
    runtime_env = {"excludes": [".venv", ".git", ".rayml", "runs", "data", "registry", "demo", "*.egg-info"]}
    done = subprocess.run(
        [two_nodes["env"]["RAY_BIN"], "job", "submit", "--address", two_nodes["dashboard"], "--working-dir",
         str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "-m", "rayml", "run", "jobs/fraud_detection.yaml", *overrides],
        env=two_nodes["env"], capture_output=True, text=True, timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "succeeded" in output and "model registered at" in output
    assert "connected to the Ray cluster" in output or "already connected" in output  # not an embedded Ray

    trained = json.loads((tmp_path / "spread" / "train" / "manifest.json").read_text())
    assert len(trained["history"]) == 2
    workers = trained["worker_nodes"]
    assert len(workers) == 2 and set(workers) == set(nodes), (workers, list(nodes))
    manifest = artifacts.verify(artifacts.resolve_version_dir(tmp_path / "registry" / "fraud"))
    assert manifest["training"]["epochs"] == 2
