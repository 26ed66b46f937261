"""Several versions behind one application: explicit versions, a weighted canary, shadow traffic, promotion
by redeploying without dropping requests, bearer-token auth, the Open Inference Protocol v2 (raw HTTP and
the real tritonclient), serving metrics on Ray's Prometheus endpoint, and a replica killed under load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from rayml import artifacts

pytestmark = pytest.mark.integration

MODEL = "fraud"
PREFIX = "/versions"


OTHER = "fraud_b"


def _register_copy(version_dir: Path, name: str = MODEL) -> str:
    """Another registered version (same files; routing, not quality, is under test)."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    files = {file: version_dir / file for file in manifest["files"]}
    body = {k: v for k, v in manifest.items() if k not in ("files", "version", "model_name", "registered_at")}
    return artifacts.register(version_dir.parent.parent, name, files, body).name


@pytest.fixture(scope="module")
def versions(fraud_run) -> tuple[str, str, Path]:
    first = Path(fraud_run["registered"]["version_dir"])
    _register_copy(first, OTHER)  # a second model name in the same application
    return first.name, _register_copy(first), first.parent.parent


@pytest.fixture(scope="module")
def records(fraud_run) -> list[dict]:
    valid = json.loads((fraud_run["run_dir"] / "validate" / "manifest.json").read_text())["valid_path"]
    rows = pq.ParquetDataset(valid).read().slice(0, 40).to_pylist()
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items() if not k.startswith("_")}
            for r in rows]


def _deploy(ray_cluster, registry: Path, model: dict, others: tuple[dict, ...] = ({"name": OTHER},),
            **extra) -> str:
    from rayml import serve as rayml_serve

    args = {"registry": str(registry), "models": [{"name": MODEL, **model}, *others],
            "auth_token_env": "RAYML_TEST_SERVE_TOKEN", **extra}
    return rayml_serve.start(args, port=ray_cluster.serve_port, app_name="versions", route_prefix=PREFIX)


@pytest.fixture(scope="module")
def app(ray_cluster, versions):
    from ray import serve

    old, new, registry = versions
    # The second model scores two batches at once (ONNX Runtime in a thread) in batches of up to 64 rows.
    url = _deploy(ray_cluster, registry, {"versions": [old, new], "default_version": old,
                                          "canary": {"version": new, "weight": 0.3}},
                  others=({"name": OTHER, "batching": {"max_batch_size": 64, "max_concurrent_batches": 2}},),
                  max_request_rows=64)
    yield url
    serve.delete("versions")


def _auth(ray_cluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {ray_cluster.serve_token}"}


def test_requests_without_the_bearer_token_are_401_but_health_is_open(app, ray_cluster, records):
    assert httpx.get(f"{app}/v2/health/ready").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        response = httpx.post(f"{app}/predict/{MODEL}", json={"instances": records[:1]}, headers=headers)
        assert response.status_code == 401 and "bearer token" in response.json()["error"]
    ok = httpx.post(f"{app}/predict/{MODEL}", json={"instances": records[:1]}, headers=_auth(ray_cluster))
    assert ok.status_code == 200


def test_weighted_canary_and_explicit_versions(app, ray_cluster, versions, records):
    old, new, _ = versions
    seen = Counter()
    with httpx.Client(base_url=app, headers=_auth(ray_cluster), timeout=30) as client:
        for i in range(300):
            body = client.post(f"/predict/{MODEL}", json={"instances": [records[i % len(records)]]}).json()
            seen[body["model_version"]] += 1
        share = seen[new] / 300
        assert 0.2 < share < 0.4, seen  # 30% canary, binomial spread over 300 requests
        pinned = client.post(f"/predict/{MODEL}/versions/{old}", json={"instances": records[:3]}).json()
        assert pinned["model_version"] == old
        meta = client.get(f"/v2/models/{MODEL}").json()
        assert meta["versions"] == [old, new]
        other = client.post(f"/predict/{OTHER}", json={"instances": records[:2]}).json()
        assert other["model_name"] == OTHER and other["model_version"] == "1"
        assert client.get(f"/v2/models/{OTHER}").json()["versions"] == ["1"]
        assert client.get(f"/v2/models/{MODEL}/versions/{new}/ready").json()["ready"] is True


def test_concurrent_batches_give_each_request_its_own_answer(app, ray_cluster, records):
    """OTHER runs two batches at once; 40 concurrent one-row requests get what sequential requests get."""
    with httpx.Client(base_url=app, headers=_auth(ray_cluster), timeout=30) as client:
        expected = client.post(f"/predict/{OTHER}", json={"instances": records}).json()["predictions"]

    async def one(client: httpx.AsyncClient, i: int) -> dict:
        response = await client.post(f"/predict/{OTHER}", json={"instances": [records[i]]})
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]

    async def many() -> list[dict]:
        async with httpx.AsyncClient(base_url=app, headers=_auth(ray_cluster), timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(len(records))))

    answers = asyncio.run(many())
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    np.testing.assert_allclose([a["probability"] for a in answers], [e["probability"] for e in expected],
                               atol=1e-6)


def test_v2_infer_over_raw_http(app, ray_cluster, records):
    rows = records[:4]
    inputs = []
    meta = httpx.get(f"{app}/v2/models/{MODEL}", headers=_auth(ray_cluster)).json()
    for spec in meta["inputs"]:
        inputs.append({"name": spec["name"], "datatype": spec["datatype"], "shape": [len(rows)],
                       "data": [r[spec["name"]] for r in rows]})
    body = {"id": "req-7", "inputs": inputs, "outputs": [{"name": "probability"}]}
    # No Content-Type header: the body is still read as JSON.
    response = httpx.post(f"{app}/v2/models/{MODEL}/versions/1/infer", content=json.dumps(body).encode(),
                          headers=_auth(ray_cluster))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "req-7" and answer["model_version"] == "1"
    assert [o["name"] for o in answer["outputs"]] == ["probability"]
    v2_scores = answer["outputs"][0]["data"]
    record_scores = [p["probability"] for p in httpx.post(
        f"{app}/predict/{MODEL}/versions/1", json={"instances": rows}, headers=_auth(ray_cluster)
    ).json()["predictions"]]
    np.testing.assert_allclose(v2_scores, record_scores, atol=1e-6)

    bad = {**body, "inputs": [{**inputs[0], "datatype": "BOOL"}, *inputs[1:]]}
    response = httpx.post(f"{app}/v2/models/{MODEL}/infer", json=bad, headers=_auth(ray_cluster))
    assert response.status_code == 400 and inputs[0]["name"] in response.json()["error"]
    response = httpx.post(f"{app}/v2/models/nope/infer", json=body, headers=_auth(ray_cluster))
    assert response.status_code == 404


def test_tritonclient_health_metadata_and_infer(app, ray_cluster, records):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{ray_cluster.serve_port}")
    headers = _auth(ray_cluster)
    # tritonclient builds /v2/... paths from the URL root; the application lives under PREFIX.
    client._base_uri = PREFIX.strip("/")
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    assert client.is_model_ready(MODEL, headers=headers)
    meta = client.get_model_metadata(MODEL, headers=headers)
    rows = records[:5]
    inputs = []
    for spec in meta["inputs"]:
        values = [r[spec["name"]] for r in rows]
        dtype = {"BYTES": object, "FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_}[spec["datatype"]]
        tensor = triton.InferInput(spec["name"], [len(rows)], spec["datatype"])
        tensor.set_data_from_numpy(np.array(values, dtype=dtype), binary_data=False)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput("probability", binary_data=False),
               triton.InferRequestedOutput("label", binary_data=False)]
    result = client.infer(MODEL, inputs, outputs=outputs, model_version="1", headers=headers, request_id="t-1")
    probabilities = result.as_numpy("probability")
    assert probabilities.shape == (5,) and np.all((probabilities > 0) & (probabilities < 1))
    assert set(result.as_numpy("label").tolist()) <= {0, 1}
    assert result.get_response()["id"] == "t-1"


def test_shadow_gets_a_copy_and_promotion_drops_no_request(app, ray_cluster, versions, records):
    old, new, registry = versions
    headers = _auth(ray_cluster)

    async def load(seconds: float) -> Counter:
        statuses = Counter()
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=app, headers=headers, timeout=60) as client:
            async def worker(k: int) -> None:
                i = k
                while time.monotonic() < deadline:
                    response = await client.post(f"/predict/{MODEL}", json={"instances": [records[i % 40]]})
                    statuses[(response.status_code, response.json().get("model_version"))] += 1
                    i += 7
            await asyncio.gather(*(worker(k) for k in range(8)))
        return statuses

    async def promote_during_load() -> Counter:
        task = asyncio.create_task(load(12.0))
        await asyncio.sleep(3.0)
        # Promote: the new version becomes the default, the old one is kept as a shadow.
        await asyncio.to_thread(_deploy, ray_cluster, registry, {
            "versions": [old, new], "default_version": new, "shadow": {"version": old, "fraction": 1.0}})
        return await task

    statuses = asyncio.run(promote_during_load())
    failed = {k: v for k, v in statuses.items() if k[0] != 200}
    assert not failed, statuses
    assert statuses[(200, new)] > 0 and statuses[(200, old)] > 0  # both served while the routing switched
    after = httpx.post(f"{app}/predict/{MODEL}", json={"instances": records[:1]}, headers=headers).json()
    assert after["model_version"] == new
    # The shadow's outcomes reach Ray's Prometheus endpoint (user metrics are exported as ray_<name>).
    text = _wait_for_metric(ray_cluster, 'ray_rayml_serve_shadow_requests_total{', 60)
    assert f'version="{old}"' in text and 'status="ok"' in text
    for name in ("ray_rayml_serve_requests_total", "ray_rayml_serve_request_latency_seconds_bucket",
                 "ray_rayml_serve_batch_rows_bucket", "ray_rayml_serve_prediction_score_bucket"):
        assert name in text, name


def _wait_for_metric(ray_cluster, needle: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{ray_cluster.metrics_port}/metrics", timeout=10).text
        if needle in text:
            return text
        time.sleep(2)
    raise AssertionError(f"{needle} not exported within {seconds}s")


def test_a_killed_replica_is_replaced_under_load(ray_cluster, versions, records):
    from ray import serve
    from ray.util.state import list_actors

    old, _, registry = versions
    url = _deploy(ray_cluster, registry, {"versions": [old]}, others=(), num_replicas=2)
    headers = _auth(ray_cluster)
    replicas = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                if a.class_name == "ServeReplica:versions:ModelServer"]
    assert len(replicas) == 2
    statuses: Counter = Counter()
    killed_at = recovered_at = None

    async def run() -> None:
        nonlocal killed_at
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            async def worker(k: int) -> None:
                while time.monotonic() < deadline:
                    try:
                        response = await client.post(f"/predict/{MODEL}", json={"instances": [records[k]]})
                        statuses[response.status_code] += 1
                    except httpx.HTTPError:
                        statuses["connection error"] += 1
            async def killer() -> None:
                nonlocal killed_at
                await asyncio.sleep(4)
                os.kill(replicas[0].pid, signal.SIGKILL)
                killed_at = time.monotonic()
            await asyncio.gather(killer(), *(worker(k) for k in range(8)))

    asyncio.run(run())
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = serve.status().applications["versions"].deployments["ModelServer"]
        if status.status == "HEALTHY" and status.replica_states.get("RUNNING") == 2:
            recovered_at = time.monotonic()
            break
        time.sleep(1)
    total = sum(statuses.values())
    failed = total - statuses[200]
    print(f"\nreplica kill: {total} requests, {failed} failed {dict(statuses)}, "
          f"replacement RUNNING {recovered_at - killed_at:.1f}s after the kill" if recovered_at else "")
    assert recovered_at is not None, "the killed replica was not replaced within 90 s"
    assert statuses[200] > 100
    assert failed <= 16, statuses  # at most the requests in flight on the killed replica (8 clients)
    serve.delete("versions")
