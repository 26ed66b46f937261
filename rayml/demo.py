"""``rayml demo``: the README's main job, end to end on an embedded local Ray.

Generates fraud transactions, runs jobs/fraud_detection.yaml, deploys the registered model on Ray Serve,
sends real HTTP requests (good and malformed) and prints the answers, then shuts everything down.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx
import pyarrow.dataset as pads

from rayml import pipeline, runtime
from rayml import serve as rayml_serve
from rayml.datasets.fraud import generate_fraud

log = logging.getLogger("rayml")

JOB = Path("jobs/fraud_detection.yaml")


def main(rows: int, workdir: Path, port: int = 8000, overrides: list[str] | None = None) -> None:
    started = time.perf_counter()
    data = workdir / "data" / "fraud"
    if not (data / "_generator.json").is_file():
        summary = generate_fraud(rows, data, seed=7, bad_fraction=0.01)
        log.info("generated %d transactions (%d malformed) in %s", summary["rows"], summary["bad_rows"], data)
    job = pipeline.load_job(JOB, [
        f"source.path={data}", f"run.root={workdir / 'runs'}", f"registry.root={workdir / 'registry'}",
        *(overrides or []),
    ])
    where = runtime.connect(job.runtime)
    try:
        registered = pipeline.run(job)
        url = rayml_serve.start(rayml_serve.args_for_model_dir(registered["version_dir"]), port=port)
        _query(url, job.registry.model_name, data)
    finally:
        from ray import serve

        serve.shutdown()
        runtime.shutdown_if_embedded(where)
    log.info("demo finished in %.0f s", time.perf_counter() - started)


def _query(url: str, model: str, data: Path) -> None:
    """Send a few real requests: known frauds and non-frauds from the data, then a malformed one."""
    table = _sample(data)
    instances = [{k: v for k, v in row.items() if k not in ("is_fraud", "fraud_probability")} for row in table]
    with httpx.Client(base_url=url, timeout=30) as client:
        print(f"GET  /v2/health/ready -> {client.get('/v2/health/ready').status_code}")
        response = client.post(f"/predict/{model}", json={"instances": instances})
        print(f"POST /predict/{model} ({len(instances)} transactions) -> {response.status_code}")
        for row, prediction in zip(table, response.json()["predictions"]):
            print(f"  {row['transaction_id']} amount={row['amount']:>9.2f} {row['merchant_category']:<11} "
                  f"{row['channel']:<6} true_p={row['fraud_probability']:.3f} is_fraud={row['is_fraud']} -> "
                  f"p={prediction['probability']:.3f} label={prediction['label']}")
        bad = {"instances": [{**instances[0], "amount": "twelve", "channel": "carrier-pigeon"}]}
        response = client.post(f"/predict/{model}", json=bad)
        print(f"POST /predict/{model} (malformed) -> {response.status_code} {json.dumps(response.json())}")


def _sample(data: Path, each: int = 3) -> list[dict]:
    """``each`` frauds and ``each`` legitimate transactions from the good files, as JSON-ready records."""
    frauds: list[dict] = []
    legit: list[dict] = []
    for path in sorted(data.rglob("part-0*.parquet")):
        for row in pads.dataset(str(path), format="parquet").to_table().to_pylist():
            bucket = frauds if row["is_fraud"] == 1 else legit
            if len(bucket) < each:
                row["event_time"] = row["event_time"].isoformat()
                bucket.append(row)
        if len(frauds) == each and len(legit) == each:
            break
    return frauds + legit
