"""Serving the registered model on the shared cluster: real HTTP through Serve's HAProxy ingress."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from rayml.export import onnx_session
from rayml.predictor import Predictor

pytestmark = pytest.mark.integration

MODEL = "fraud"


@pytest.fixture(scope="module")
def server(fraud_run, ray_cluster) -> str:
    from ray import serve

    from rayml import serve as rayml_serve

    args = rayml_serve.args_for_model_dir(fraud_run["registered"]["version_dir"])
    url = rayml_serve.start(args, port=ray_cluster.serve_port, app_name="fraud-test")
    yield url
    serve.delete("fraud-test")


@pytest.fixture(scope="module")
def records(fraud_run) -> list[dict]:
    """60 valid raw records as a client would send them (JSON types, ISO timestamps)."""
    valid = json.loads((fraud_run["run_dir"] / "validate" / "manifest.json").read_text())["valid_path"]
    table = pq.ParquetDataset(valid).read().slice(0, 60)
    rows = []
    for row in table.to_pylist():
        rows.append({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()
                     if not k.startswith("_")})
    return rows


def test_health_and_metadata(server):
    assert httpx.get(f"{server}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200
    meta = httpx.get(f"{server}/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and meta["outputs"][0]["name"] == "probability"
    assert {i["name"] for i in meta["inputs"]} >= {"amount", "merchant_category"}
    assert httpx.get(f"{server}/v2/models/{MODEL}/ready").json()["ready"] is True


def test_served_predictions_equal_offline_onnxruntime(server, records, fraud_run):
    response = httpx.post(f"{server}/predict/{MODEL}", json={"instances": records}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    served = np.array([p["probability"] for p in body["predictions"]])
    assert body["model_version"] == fraud_run["registered"]["version"]

    # Offline: the same rows typed by the schema and scored by onnxruntime with the registered (fused) graph,
    # and with the Python featurizer + the features-only graph of the export stage: all three agree.
    offline = Predictor(fraud_run["registered"]["version_dir"])
    expected = offline.predict_table(offline.records_table(records))
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    features = offline.features_from_records(records)
    plain = onnx_session(fraud_run["run_dir"] / "export" / "model_features.onnx")
    np.testing.assert_allclose(served, plain.run(["probability"], {"features": features})[0], atol=1e-5)
    labels = [p["label"] for p in body["predictions"]]
    assert labels == [int(p >= body["threshold"]) for p in served]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, records):
    async def one(client: httpx.AsyncClient, i: int) -> float:
        response = await client.post(f"/predict/{MODEL}", json={"instances": [records[i]]})
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]["probability"]

    async def many() -> list[float]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(len(records))))

    singles = asyncio.run(many())
    together = httpx.post(f"{server}/predict/{MODEL}", json={"instances": records}, timeout=30).json()
    np.testing.assert_allclose(singles, [p["probability"] for p in together["predictions"]], atol=1e-6)


def test_a_bad_request_fails_alone_in_a_batch_it_shares_with_good_ones(server, records):
    """Validation runs once per dynamic batch; a request with a bad field gets its own 400, while good requests
    batched with it, including ones whose JSON types differ (an integer amount), get their answers."""
    # every 4th request (i % 4 == 3) sends a whole amount as a JSON integer: another Arrow type for the column
    rows = [{**r, "amount": float(int(r["amount"]))} if i % 4 == 3 else r for i, r in enumerate(records[:40])]
    expected = {i: p["probability"] for i, p in enumerate(httpx.post(
        f"{server}/predict/{MODEL}", json={"instances": rows}, timeout=30).json()["predictions"])}

    def body(i: int) -> dict:
        if i % 4 == 1:
            return {"instances": [{**rows[i], "amount": "lots"}]}
        if i % 4 == 3:
            return {"instances": [{**rows[i], "amount": int(rows[i]["amount"])}]}
        return {"instances": [rows[i]]}

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(*(client.post(f"/predict/{MODEL}", json=body(i)) for i in range(40)))

    for i, response in enumerate(asyncio.run(many())):
        if i % 4 == 1:
            assert response.status_code == 400, (i, response.text)
            assert response.json()["error"] == "instances[0].amount: got 'lots'; expected a number", response.text
        else:
            assert response.status_code == 200, (i, response.text)
            assert response.json()["predictions"][0]["probability"] == pytest.approx(expected[i], abs=1e-6)


def _bad_requests(records: list[dict]) -> list[tuple[str, dict, int, str]]:
    good = records[0]
    return [
        ("not json", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ("not an object", {"json": [1, 2]}, 400, "instances"),
        ("no instances", {"json": {"rows": [good]}}, 400, "instances"),
        ("instances not a list", {"json": {"instances": good}}, 400, "must be a list"),
        ("empty", {"json": {"instances": []}}, 400, "empty"),
        ("record not an object", {"json": {"instances": [5]}}, 400, "instances[0]"),
        ("missing field", {"json": {"instances": [{k: v for k, v in good.items() if k != "amount"}]}}, 400,
         "instances[0]: missing field(s) 'amount'"),
        ("mistyped field", {"json": {"instances": [good, {**good, "amount": "lots"}]}}, 400,
         "instances[1].amount: got 'lots'; expected a number"),
        ("out of range", {"json": {"instances": [{**good, "amount": -5}]}}, 400, "instances[0].amount"),
        ("unknown category", {"json": {"instances": [{**good, "channel": "fax"}]}}, 400, "instances[0].channel"),
        ("null field", {"json": {"instances": [{**good, "country": None}]}}, 400, "instances[0].country"),
        ("too many rows", {"json": {"instances": [good] * 257}}, 413, "limit is 256"),
        ("huge body", {"content": b"[" + b"1," * 600_000 + b"1]", "headers": {"content-type": "application/json"}},
         413, "exceeds"),
        ("deep nesting", {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"content-type": "application/json"}},
         400, ""),
    ]


def test_malformed_requests_get_4xx_naming_the_problem(server, records):
    for name, kwargs, status, fragment in _bad_requests(records):
        response = httpx.post(f"{server}/predict/{MODEL}", timeout=30, **kwargs)
        assert response.status_code == status, (name, response.status_code, response.text)
        assert fragment in response.json()["error"], (name, response.text)


def test_unknown_model_and_route_are_404_json(server, records):
    response = httpx.post(f"{server}/predict/other", json={"instances": records[:1]})
    assert response.status_code == 404 and "unknown model 'other'" in response.json()["error"]
    response = httpx.post(f"{server}/predict/{MODEL}/versions/99", json={"instances": records[:1]})
    assert response.status_code == 404 and "no version '99'" in response.json()["error"]
    response = httpx.get(f"{server}/no/such/route")
    assert response.status_code == 404
