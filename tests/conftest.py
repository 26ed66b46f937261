"""Shared fixtures: generated data (no Ray) and one local Ray cluster per test session (integration)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Token auth on, as `ray start` in Ray 2.60 sets a cluster up; clients (this process, `ray job submit`) then
# read the token that `ray start` writes to ~/.ray/auth_token. Ray reads this when it is first imported.
os.environ["RAY_AUTH_MODE"] = "token"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under .ci/run (RAYML_CI=1) every service and extra the tests use is installed, so a skipped test means a
    broken set-up, not a missing optional tool: fail the session. Tests marked `gpu` may skip anywhere."""
    if not os.environ.get("RAYML_CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = [report for report in (reporter.stats.get("skipped", []) if reporter else [])
               if "gpu" not in getattr(report, "keywords", {})]
    if skipped:
        for report in skipped:
            print(f"\nskipped under RAYML_CI: {report.nodeid}: {report.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A real `ray start --head` cluster this test session started, and how to reach it."""

    def __init__(self, gcs_port: int, dashboard_port: int, metrics_port: int, serve_port: int) -> None:
        self.address = f"127.0.0.1:{gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        self.metrics_port = metrics_port
        self.serve_port = serve_port
        self.serve_url = f"http://127.0.0.1:{serve_port}"
        self.serve_token = secrets.token_urlsafe(24)  # in the cluster's environment as RAYML_TEST_SERVE_TOKEN


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Start one head node for the whole session (HAProxy ingress on, 4 logical CPUs) and connect to it."""
    import ray

    cluster = Cluster(free_port(), free_port(), free_port(), free_port())
    env = {**os.environ, "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAYML_TEST_SERVE_TOKEN": cluster.serve_token}
    # As in an activated virtual environment: `python` in a job's entrypoint is this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path_factory.mktemp("ray") / "ray-start.log", "w")
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--num-cpus=4", "--node-ip-address=127.0.0.1",
         f"--port={cluster.address.rsplit(':', 1)[1]}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={cluster.dashboard_url.rsplit(':', 1)[1]}",
         f"--metrics-export-port={cluster.metrics_port}", "--include-dashboard=true"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        # Connect only once `ray start` says the runtime is up: a driver that tries earlier can cache a missing
        # auth token (Ray 2.60 enables token auth by default) and keep failing.
        log_path = Path(log.name)
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited with {head.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray start did not come up: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        ray.init(address=cluster.address, log_to_driver=True)
        _wait_for_dashboard(cluster.dashboard_url, deadline)
        os.environ["RAY_ADDRESS"] = cluster.address
        yield cluster
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()
        head.terminate()  # `ray start --block` stops the processes it started when it is terminated
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        log.close()


def _wait_for_dashboard(url: str, deadline: float) -> None:
    import httpx

    while time.monotonic() < deadline:
        try:
            # Any HTTP answer means it is serving (it may ask for the auth token: 401).
            if httpx.get(f"{url}/api/version", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the Ray dashboard at {url} did not come up")


@pytest.fixture(scope="session")
def fraud_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """40k generated transactions with 1% malformed records (no Ray). 40k, not 20k: with 20k the test split
    holds ~60 frauds and the model/best ROC-AUC ratio swings by several points with the data seed."""
    from rayml.datasets.fraud import generate_fraud

    out = tmp_path_factory.mktemp("data") / "fraud"
    summary = generate_fraud(40_000, out, seed=11, bad_fraction=0.01)
    return {"path": out, "summary": summary}


class S3Server:
    """A moto_server this test session started: an S3 API on 127.0.0.1 holding one empty bucket."""

    def __init__(self, port: int, bucket: str) -> None:
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.bucket = bucket
        # What a client needs: moto takes any keys; no EC2 metadata lookups.
        self.env = {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true"}

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """`moto_server -H 127.0.0.1 -p PORT` (moto[server] >= 5.2.5; 5.2.1 breaks pyarrow multipart writes) for the
    whole session, with the bucket created through pyarrow; stopped by its pid at the end. Tests point clients
    at it with `monkeypatch.setenv` over `s3_server.env`."""
    import pyarrow.fs as pafs

    moto = Path(sys.executable).with_name("moto_server")
    if not moto.is_file():
        pytest.skip("moto_server is missing; pip install 'moto[server]>=5.2.5' (the test extra)")
    server = S3Server(free_port(), "rayml-test")
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", server.endpoint_url.rsplit(":", 1)[1]],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", int(server.endpoint_url.rsplit(":", 1)[1])), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start listening within 60 s") from None
                time.sleep(0.2)
        pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                          endpoint_override=server.endpoint_url.removeprefix("http://"),
                          allow_bucket_creation=True).create_dir(server.bucket)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
