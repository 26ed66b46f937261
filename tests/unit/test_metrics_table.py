"""Unit tests for rayml.metrics and rayml.recorders: the table's conventions, lazy Ray import, recorders that never raise.

Ray is imported only inside a subprocess, and never started: building a ``ray.util.metrics`` object does not
connect to a cluster.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from rayml import metrics as M
from rayml import recorders

PROMETHEUS_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SERVING = {
    "rayml_serve_requests_total": ("counter", ("model", "version", "route", "status")),
    "rayml_serve_request_latency_seconds": ("histogram", ("model", "version", "route")),
    "rayml_serve_batch_rows": ("histogram", ("model", "version")),
    "rayml_serve_prediction_score": ("histogram", ("model", "version")),
    "rayml_serve_feature_psi": ("gauge", ("model", "version", "feature")),
    "rayml_serve_shadow_requests_total": ("counter", ("model", "version", "status")),
    "rayml_serve_shadow_score_delta": ("histogram", ("model", "version")),
}


def test_serving_metrics_are_declared() -> None:
    for name, (kind, tags) in SERVING.items():
        assert name in M.METRICS, name
        assert M.METRICS[name].kind == kind
        assert M.METRICS[name].tag_keys == tags


@pytest.mark.parametrize("spec", list(M.METRICS.values()), ids=list(M.METRICS))
def test_spec_follows_conventions(spec: M.MetricSpec) -> None:
    assert spec.name.startswith("rayml_")
    assert PROMETHEUS_NAME.match(spec.name) and ":" not in spec.name
    assert M.METRICS[spec.name] is spec
    assert spec.kind in ("counter", "gauge", "histogram")
    assert spec.description.strip()
    assert spec.tag_keys and all(PROMETHEUS_NAME.match(k) for k in spec.tag_keys)
    assert len(set(spec.tag_keys)) == len(spec.tag_keys)
    assert isinstance(spec.tag_keys, tuple)  # ray.util.metrics rejects a list
    if spec.kind == "counter":
        assert spec.name.endswith("_total")  # otherwise the exporter appends it
    else:
        assert not spec.name.endswith("_total")
    if spec.kind == "histogram":
        bounds = spec.boundaries
        assert bounds, "a histogram needs boundaries"
        assert list(bounds) == sorted(set(bounds)), "boundaries must be strictly increasing"
        assert bounds[0] > 0, "Ray rejects boundaries <= 0"
    else:
        assert spec.boundaries is None


def test_histogram_ranges() -> None:
    latency = M.METRICS["rayml_serve_request_latency_seconds"].boundaries
    assert latency[0] == pytest.approx(0.001) and latency[-1] == pytest.approx(10.0)
    rows = M.METRICS["rayml_serve_batch_rows"].boundaries
    assert rows[0] == 1 and rows[-1] == 4096
    score = M.METRICS["rayml_serve_prediction_score"].boundaries
    assert len(score) == 20 and score[-1] == pytest.approx(1.0)
    assert all(b - a == pytest.approx(0.05) for a, b in zip(score, score[1:]))


def test_spec_is_frozen() -> None:
    spec = M.METRICS["rayml_serve_batch_rows"]
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


def test_make_rejects_unknown_name_without_importing_ray() -> None:
    with pytest.raises(KeyError, match="declare it in METRICS"):
        M.make("rayml_not_a_metric")


def test_recorder_never_raises_when_metrics_are_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(name: str):
        raise ImportError("No module named 'ray'")

    monkeypatch.setattr(recorders, "make", unavailable)
    rec = recorders.Recorder("fraud", "3")
    rec.request("/predict/{model}", 200, 0.01)
    rec.observe_latency("/predict/{model}", 0.01)
    rec.batch_rows(8)
    rec.prediction_scores([0.1, 0.9])
    rec.feature_psi({"amount": 0.3})
    rec.shadow("ok", [0.01, -0.02])


def test_import_is_lazy_and_make_builds_cached_ray_metrics() -> None:
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import rayml.metrics as M
        assert "ray" not in sys.modules, "importing rayml.metrics imported ray"
        assert M._built == {}, "make ran at import"

        from ray.util.metrics import Counter, Gauge, Histogram
        kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
        for name, spec in M.METRICS.items():
            metric = M.make(name)
            assert type(metric) is kinds[spec.kind], name
            assert M.make(name) is metric, "make is cached per process"
            assert metric.info["name"] == name and metric.info["tag_keys"] == spec.tag_keys

        from rayml.recorders import Recorder, TrainRecorder
        rec = Recorder("fraud", 3)
        rec.request("/predict/{model}", 200, 0.004)
        rec.batch_rows(np.int64(64))
        rec.prediction_scores(np.array([0.0, 0.5, 1.0], dtype=np.float32))
        rec.feature_psi({"amount": np.float64(0.31)})
        rec.shadow("ok", np.array([0.01, -0.02]))
        rec.prediction_scores(["not a number"])  # dropped and logged, not raised
        train = TrainRecorder("run-1")
        train.started(1, 4)
        train.epoch({"epoch": 1, "train_loss": 0.3, "val_loss": 0.2, "val_roc_auc": 0.9, "val_pr_auc": 0.4,
                     "train_rows": 1000, "epoch_seconds": 1.5}, 1.7e9)
        train.checkpoint_seconds(0.02)
        import ray
        assert not ray.is_initialized(), "building or recording a metric started Ray"
        print("OK")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout
    assert "rayml_serve_prediction_score not recorded" in done.stderr


def test_gauge_keeper_re_sets_kept_gauges_until_their_version_is_forgotten(monkeypatch: pytest.MonkeyPatch):
    """Ray 2.60 forgets a gauge not set within 20 s; the keeper re-sets each kept gauge with its last value."""
    calls: list[tuple[str, float, dict]] = []

    class Gauge:
        def __init__(self, name: str) -> None:
            self.name = name

        def set(self, value: float, tags: dict) -> None:
            calls.append((self.name, value, tags))

    monkeypatch.setattr(recorders, "make", Gauge)
    keeper = recorders._GaugeKeeper()
    monkeypatch.setattr(keeper, "_run", lambda: None)  # no background thread in a unit test
    keeper.keep("rayml_serve_feature_psi", {"model": "m", "version": "1", "feature": "a"}, 0.1)
    keeper.keep("rayml_serve_feature_psi", {"model": "m", "version": "1", "feature": "a"}, 0.3)  # last value wins
    keeper.keep("rayml_serve_feature_psi", {"model": "m", "version": "2", "feature": "a"}, 0.2)
    keeper.refresh()
    assert sorted((value, tags["version"]) for _, value, tags in calls) == [(0.2, "2"), (0.3, "1")]
    calls.clear()
    keeper.forget({"model": "m", "version": "1"})
    keeper.refresh()
    assert [(value, tags["version"]) for _, value, tags in calls] == [(0.2, "2")]
