"""A real Prometheus (Debian's binary) scraping the shared cluster while a short pipeline trains and a served
model answers traffic: rayml's metrics and Ray's Serve metrics reach it, the alert rules load and evaluate,
and every Grafana panel's query returns data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from rayml import artifacts, monitor
from tests.conftest import REPO, free_port
from tests.integration.conftest import JOB, job_overrides

pytestmark = pytest.mark.integration

RUN = "monitored"
INGEST_TOPIC = "monitored-ingest"
INGEST_MESSAGES, INGEST_BAD = 2_000, 100
APP = "monitored"
PREFIX = "/monitored"
SCRAPE = "1s"


@pytest.fixture(scope="module")
def prometheus(ray_cluster, tmp_path_factory):
    """Prometheus scraping every node of the shared cluster, as `rayml monitor` does with RAY_ADDRESS set."""
    import ray

    data_dir = tmp_path_factory.mktemp("prometheus")
    sd_file = data_dir / monitor.TARGETS_FILE
    artifacts.write_json(sd_file, monitor.node_targets(ray.nodes()))
    server = monitor.Prometheus(monitor.render_config(monitor.monitoring_dir(), sd_file, SCRAPE), data_dir,
                                f"127.0.0.1:{free_port()}")
    server.start()
    yield server
    server.stop()


def _records(run_dir: Path, rows: int) -> list[dict]:
    valid = json.loads((run_dir / "validate" / "manifest.json").read_text())["valid_path"]
    table = pq.ParquetDataset(valid).read().slice(0, rows)
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items() if not k.startswith("_")}
            for row in table.to_pylist()]


def _ingest(root: Path) -> dict:
    """A short `rayml ingest` (in this process, a driver of the shared cluster) from a mock Kafka topic."""
    from rayml import ingest, pipeline
    from rayml.kafka_broker import MockBroker, produce_fraud

    with MockBroker() as broker:
        produce_fraud(broker.bootstrap, INGEST_TOPIC, INGEST_MESSAGES, seed=4,
                      bad_fraction=INGEST_BAD / INGEST_MESSAGES)
        job = pipeline.load_job(REPO / "jobs" / "fraud_stream.yaml", [
            f"source.path={INGEST_TOPIC}", f"source.kafka.bootstrap_servers={broker.bootstrap}",
            f"ingest.output={root / 'ingest'}", "ingest.max_batch_messages=500"])
        return ingest.run(job, until_caught_up=True)


@pytest.fixture(scope="module")
def activity(prometheus, ray_cluster, tmp_path_factory) -> dict:
    """While Prometheus scrapes: a short Kafka ingest, a 2-epoch pipeline run, then two versions served (the
    second as a shadow) under 30 good and 5 malformed requests."""
    from rayml import pipeline
    from rayml import serve as rayml_serve
    from rayml.datasets.fraud import generate_fraud

    started = time.time()
    root = tmp_path_factory.mktemp("monitored")
    assert _ingest(root)["messages"] == INGEST_MESSAGES
    generate_fraud(6_000, root / "data", seed=3, bad_fraction=0.02)
    # Its own job and model names: other tests (the demo, ray job submit) record the same metrics on this cluster.
    job = pipeline.load_job(JOB, job_overrides(root / "data", root, f"run.name={RUN}", "train.epochs=2",
                                               "name=monitored_job", "registry.model_name=monitored"))
    registered = pipeline.run(job)

    first = Path(registered["version_dir"])
    manifest = json.loads((first / "manifest.json").read_text())
    body = {k: v for k, v in manifest.items() if k not in ("files", "version", "model_name", "registered_at")}
    second = artifacts.register(first.parent.parent, first.parent.name, {f: first / f for f in manifest["files"]},
                                body).name
    args = {"registry": str(first.parent.parent),
            "models": [{"name": first.parent.name, "versions": [first.name, second],
                        "default_version": first.name, "shadow": {"version": second, "fraction": 1.0}}]}
    url = rayml_serve.start(args, port=ray_cluster.serve_port, app_name=APP, route_prefix=PREFIX)
    records = _records(root / RUN, 10)
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(30):  # 300 rows: the drift gauges are computed every 100 rows
            answer = client.post(f"/predict/{first.parent.name}", json={"instances": records})
            assert answer.status_code == 200, answer.text
        for _ in range(5):
            answer = client.post(f"/predict/{first.parent.name}", json={"instances": [{"amount": "lots"}]})
            assert answer.status_code == 400, answer.text
    yield {"job": job, "model": first.parent.name, "version": first.name, "started": started}
    from ray import serve

    serve.delete(APP)


def _wait_for(server: monitor.Prometheus, expr: str, timeout_s: float = 90.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = server.query(expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_prometheus_receives_rayml_and_ray_serve_metrics(prometheus, activity):
    model, version, job = activity["model"], activity["version"], activity["job"].name
    # Training and data metrics come from processes that have exited by now: look back over the test's window.
    window = f"[{int(time.time() - activity['started']) + 60}s]"
    epochs = _wait_for(prometheus, f'max(max_over_time(ray_rayml_train_epoch{{run="{RUN}"}}{window}))')
    assert epochs and float(epochs[0]["value"][1]) == 2.0
    planned = _wait_for(prometheus, f'max(max_over_time(ray_rayml_train_planned_epochs{{run="{RUN}"}}{window}))')
    assert planned and float(planned[0]["value"][1]) == 2.0
    samples = _wait_for(prometheus, f'sum(max_over_time(ray_rayml_train_samples_total{{run="{RUN}"}}{window}))')
    assert samples and float(samples[0]["value"][1]) > 0
    for status in ("valid", "quarantined"):
        counted = _wait_for(prometheus, f'max_over_time(ray_rayml_data_records_total{{pipeline="{job}",status="{status}"}}'
                                        f'{window})')
        assert counted and float(counted[0]["value"][1]) > 0, status

    ok = _wait_for(prometheus, f'sum(ray_rayml_serve_requests_total{{model="{model}",status="200"}})')
    assert ok and float(ok[0]["value"][1]) == 30
    rejected = _wait_for(prometheus, f'sum(ray_rayml_serve_requests_total{{model="{model}",status="400"}})')
    assert rejected and float(rejected[0]["value"][1]) == 5
    # One batch per request: the client sends one at a time. (Ray rebuilds histograms from bucket counts, so
    # _count is exact while _sum is bucket midpoints times counts.)
    batches = _wait_for(prometheus, f'sum(ray_rayml_serve_batch_rows_count{{model="{model}",version="{version}"}})')
    assert batches and float(batches[0]["value"][1]) == 30
    assert _wait_for(prometheus, f'ray_rayml_serve_shadow_requests_total{{model="{model}",status="ok"}}')
    psi = _wait_for(prometheus, f'ray_rayml_serve_feature_psi{{model="{model}"}}')
    assert {series["metric"]["feature"] for series in psi} >= {"amount", "merchant_category"}

    for status, count in (("valid", INGEST_MESSAGES - INGEST_BAD), ("quarantined", INGEST_BAD)):
        ingested = _wait_for(prometheus, f'sum(ray_rayml_ingest_messages_total{{topic="{INGEST_TOPIC}",'
                                         f'status="{status}"}})')
        assert ingested and float(ingested[0]["value"][1]) == count, status
    commits = _wait_for(prometheus, f'sum(max_over_time(ray_rayml_ingest_batch_seconds_count{{topic="{INGEST_TOPIC}"}}'
                                    f'{window}))')
    assert commits and float(commits[0]["value"][1]) == INGEST_MESSAGES / 500  # one per micro-batch

    healthy = _wait_for(prometheus, f'sum(ray_serve_deployment_replica_healthy{{application="{APP}"}})')
    assert healthy and float(healthy[0]["value"][1]) >= 1
    assert _wait_for(prometheus, f'ray_serve_deployment_request_counter_total{{application="{APP}"}}')


def test_alert_rules_load_and_evaluate_without_errors(prometheus, activity):
    groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {group["name"] for group in groups} == {"rayml-serving", "rayml-drift", "rayml-data", "rayml-training"}
    deadline = time.monotonic() + 30
    while any(rule.get("health") != "ok" for group in groups for rule in group["rules"]):
        bad = [(rule["name"], rule.get("health"), rule.get("lastError")) for group in groups
               for rule in group["rules"] if rule.get("health") != "ok"]
        assert time.monotonic() < deadline, bad
        time.sleep(2)
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]


def _panel_has_data(server: monitor.Prometheus, expr: str, start: float, where: str) -> bool:
    answer = httpx.get(f"{server.url}/api/v1/query_range", timeout=30,
                       params={"query": expr, "start": start, "end": time.time(), "step": "5s"})
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", f"{where}: {body.get('error')}"
    return any(series["values"] for series in body["data"]["result"])


def test_every_grafana_panel_query_returns_data(prometheus, activity):
    """Each panel's PromQL, rendered as Grafana would (all template values, a 30 s rate interval for the 1 s
    scrape), as a range query over the test's window: no error, and data (the streaming-ingest row included:
    the activity ran `rayml ingest`). Replicas export every 10 s, so a panel gets up to 90 s."""
    from rayml import dashboards

    start = activity["started"]
    pending = {}
    for query in dashboards.panel_queries(dashboards.load()):
        window = f"{int(time.time() - start) + 120}s"
        expr = dashboards.render(query.expr, {"__rate_interval": "30s", "__range": window, "__interval": "5s"})
        pending[f"{query.dashboard} / {query.panel} [{query.ref_id}]: {expr}"] = expr
    assert len(pending) > 45 and any("ray_rayml_ingest_" in expr for expr in pending.values())
    deadline = time.monotonic() + 90
    while pending:
        pending = {where: expr for where, expr in pending.items()
                   if not _panel_has_data(prometheus, expr, start, where)}
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert list(pending) == [], "panels without data:\n" + "\n".join(pending)


def test_rayml_monitor_command_scrapes_the_cluster_until_interrupted(ray_cluster, tmp_path):
    """`rayml monitor` with RAY_ADDRESS set (the session cluster): Prometheus up, every node a healthy target,
    alert rules loaded, and SIGINT stops it with exit code 0."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    command = [sys.executable, "-m", "rayml", "monitor", "--listen", f"127.0.0.1:{port}", "--data-dir",
               str(tmp_path / "prometheus"), "--scrape-interval", "1s"]
    process = subprocess.Popen(command, env={**os.environ, "RAY_ADDRESS": ray_cluster.address},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("Prometheus:")):  # Ray's connection log may come first
            lines.append(process.stdout.readline())
            assert lines[-1], "".join(lines)  # EOF: it exited
        assert f"http://127.0.0.1:{port}" in lines[-1], lines
        assert "refreshed from the cluster" in process.stdout.readline()
        deadline = time.monotonic() + 60
        while True:
            targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=10).json()["data"]
            health = [target["health"] for target in targets["activeTargets"]]
            if health and all(state == "up" for state in health) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert health and all(state == "up" for state in health), targets
        rules = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert len(rules) == 4
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert not (tmp_path / "prometheus" / "tsdb" / "lock").exists()  # Prometheus shut down cleanly
