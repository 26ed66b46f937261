"""The use-case jobs of jobs/ on the real data sets shipped in packages, at test size: each reaches a floor
close to what its job comment reports for the full run, and its registered model answers requests."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from rayml import pipeline
from rayml.datasets import packaged
from rayml.predictor import Predictor
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def run_job(job: str, dataset: str, tmp_path: Path, limit: int | None, *overrides: str) -> dict:
    data = tmp_path / dataset
    packaged.write(dataset, data, limit=limit)
    settings = [f"source.path={data}", f"run.root={tmp_path / 'runs'}", f"registry.root={tmp_path / 'registry'}",
                "run.name=test", "tracking.enabled=false", *overrides]
    registered = pipeline.run(pipeline.load_job(REPO / "jobs" / f"{job}.yaml", settings))
    report = json.loads((tmp_path / "runs" / "test" / "evaluate" / "report.json").read_text())
    return {"registered": registered, "report": report, "data": data}


def test_mnist_cnn_classifies_digits_and_serves_png_images(ray_cluster, tmp_path):
    result = run_job("mnist_cnn", "mnist", tmp_path, 2000, "train.epochs=6")
    report = result["report"]
    assert report["task"] == "multiclass" and report["classes"] == [str(d) for d in range(10)]
    assert report["accuracy"] >= 0.85, report
    predictor = Predictor(result["registered"]["version_dir"])
    assert predictor.fused is False  # images are featurized in Python inside the replica
    digits = sorted((result["data"] / "7").glob("*.png"))[:3] + sorted((result["data"] / "0").glob("*.png"))[:3]
    instances = [{"path": p.name, "image": base64.b64encode(p.read_bytes()).decode()} for p in digits]
    answers = predictor.answers(predictor.predict_table(predictor.records_table(instances)))
    assert [a["label"] for a in answers].count("7") >= 2 and [a["label"] for a in answers].count("0") >= 2
    assert all(abs(sum(a["probabilities"].values()) - 1.0) < 1e-4 for a in answers)


def test_text_sentiment_on_minilm_embeddings(ray_cluster, tmp_path):
    result = run_job("text_sentiment", "rotten_tomatoes", tmp_path, 1500, "train.epochs=8")
    assert result["report"]["roc_auc"] >= 0.70, result["report"]
    predictor = Predictor(result["registered"]["version_dir"])
    rows = [{"id": 1, "text": "a gorgeous, moving and funny film; the best of the year", "movie": "x"},
            {"id": 2, "text": "a tedious, clumsy mess with nothing to say", "movie": "y"}]
    good, bad = predictor.answers(predictor.predict_table(predictor.records_table(rows)))
    assert good["probability"] > bad["probability"]


def test_movielens_matrix_factorization_beats_the_mean_rating(ray_cluster, tmp_path):
    result = run_job("movielens_mf", "movielens", tmp_path, None, "train.epochs=5")
    report = result["report"]
    assert report["rmse"] <= 1.0, report
    assert report["rmse_vs_baseline"] <= 0.9, report
    predictor = Predictor(result["registered"]["version_dir"])
    assert predictor.fused  # the id lookups are fused into the ONNX graph
    known, unknown = predictor.answers(predictor.predict_table(predictor.records_table([
        {"rating_id": 1, "user_id": "1", "item_id": "50", "timestamp": "1997-12-04T15:55:49Z"},
        {"rating_id": 2, "user_id": "no-such-user", "item_id": "no-such-film", "timestamp": "1998-01-01T00:00:00Z"},
    ])))
    assert 1.0 <= unknown["prediction"] <= 5.0  # an unknown user and film score near the global mean
    assert 1.0 <= known["prediction"] <= 5.5


def test_shuttle_anomalies_are_found(ray_cluster, tmp_path):
    result = run_job("shuttle_anomaly", "shuttle", tmp_path, 12000, "train.epochs=3")
    assert result["report"]["roc_auc"] >= 0.98, result["report"]
    assert result["report"]["pr_auc"] >= 0.9, result["report"]


def test_german_credit_risk(ray_cluster, tmp_path):
    result = run_job("german_credit", "german_credit", tmp_path, None)
    assert result["report"]["roc_auc"] >= 0.65, result["report"]
