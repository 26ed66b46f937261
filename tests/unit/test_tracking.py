"""Unit tests for rayml.tracking against a real local MLflow store (SQLite in tmp_path). No Ray.

One store is shared by the module (creating an MLflow database runs its migrations, ~2 s); each test logs to
its own run directory.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import textwrap

import pytest

from rayml.config import parse
from rayml.errors import ConfigError, RaymlError
from rayml.tracking import RUN_FILE, Tracker, TrackingConfig, default_uri, flatten

PARAMS = {"name": "fraud", "train": {"lr": 0.01, "epochs": 3, "model": {"hidden": [64, 32], "dropout": None}}}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def tracker(runs_root) -> Tracker:
    return Tracker.from_config(TrackingConfig(), runs_root, job_name="fraud")


@pytest.fixture(scope="module")
def client(tracker):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracker.tracking_uri)


def test_defaults_resolve_to_a_sqlite_store_under_the_run_root(runs_root, tracker) -> None:
    assert tracker.enabled and tracker.experiment == "fraud"
    assert tracker.tracking_uri == default_uri(runs_root) == f"sqlite:///{runs_root.resolve()}/mlruns/mlflow.db"
    named = Tracker.from_config(TrackingConfig(experiment="exp", tracking_uri="http://127.0.0.1:5000"), runs_root, "j")
    assert (named.tracking_uri, named.experiment) == ("http://127.0.0.1:5000", "exp")
    assert Tracker.from_dict(json.loads(json.dumps(tracker.to_dict()))) == tracker
    assert flatten(PARAMS) == {"name": "fraud", "train.lr": 0.01, "train.epochs": 3,
                               "train.model.hidden": [64, 32], "train.model.dropout": None}


def test_params_and_epoch_history_including_from_another_process(runs_root, tracker, client, tmp_path) -> None:
    run_dir = tmp_path / "fraud-1"
    run_id = tracker.start(run_dir, "fraud-1", PARAMS)
    saved = json.loads((run_dir / RUN_FILE).read_text())
    assert saved["run_id"] == run_id and saved["tracking_uri"] == tracker.tracking_uri
    assert (runs_root / "mlruns" / "mlflow.db").is_file()
    run = client.get_run(run_id)
    assert run.info.run_name == "fraud-1" and run.info.status == "RUNNING"
    assert run.data.params == {"name": "fraud", "train.lr": "0.01", "train.epochs": "3",
                               "train.model.hidden": "[64, 32]", "train.model.dropout": "None"}
    assert client.get_experiment(run.info.experiment_id).name == "fraud"
    tracker.log_epoch(run_id, 1, {"val_loss": 0.5, "train_loss": 0.7, "note": "text is skipped"})
    # A Ray Train worker has only the tracker's plain fields and the run id: log epoch 2 from a new process.
    worker = textwrap.dedent(f"""
        from rayml.tracking import Tracker
        Tracker.from_dict({tracker.to_dict()!r}).log_epoch({run_id!r}, 2, {{"val_loss": 0.25, "train_loss": 0.4}})
    """)
    subprocess.run([sys.executable, "-c", worker], check=True, timeout=120)
    tracker.log_epoch(run_id, 3, {"val_loss": float("nan"), "train_loss": 0.3})  # NaN is left out
    history = client.get_metric_history(run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]
    assert "note" not in client.get_run(run_id).data.metrics


def test_report_artifacts_registration_and_finish(tracker, client, tmp_path) -> None:
    run_id = tracker.start(tmp_path / "run", "run", {"train": {"lr": 0.1}})
    plot = tmp_path / "confusion.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    report = {"accuracy": 0.9, "macro": {"f1": 0.8, "precision": None}, "confusion_matrix": [[3, 1], [0, 4]],
              "per_class": {"cat": {"f1": 0.75, "support": 4}}, "task": "multiclass"}
    tracker.log_report(run_id, report, [plot])
    tracker.log_registered(run_id, "/registry/fraud/3", "fraud", "3")
    tracker.finish(run_id, "finished")
    run = client.get_run(run_id)
    assert run.data.metrics == {"accuracy": 0.9, "macro.f1": 0.8, "per_class.cat.f1": 0.75,
                                "per_class.cat.support": 4.0}
    assert {a.path for a in client.list_artifacts(run_id, "evaluate")} == {
        "evaluate/report.json", "evaluate/confusion.png"}
    local = client.download_artifacts(run_id, "evaluate/report.json", str(tmp_path / "dl"))
    assert json.loads(open(local).read()) == report
    assert {k: v for k, v in run.data.tags.items() if k.startswith("rayml.")} == {
        "rayml.run_dir": str(tmp_path / "run"), "rayml.registry_path": "/registry/fraud/3",
        "rayml.model_name": "fraud", "rayml.model_version": "3"}
    assert run.info.status == "FINISHED"
    with pytest.raises(RaymlError, match="not one of FINISHED, FAILED, KILLED"):
        tracker.finish(run_id, "done")


def test_a_child_run_is_nested_under_its_parent_with_params_and_epochs(tracker, client, tmp_path) -> None:
    parent = tracker.start(tmp_path / "tune", "tune", {"tune": {"num_samples": 2}})
    history = [{"epoch": 1, "val_loss": 0.5, "checkpoint_path": "/c/0"}, {"epoch": 2, "val_loss": 0.4}]
    tracker.log_child(parent, "trial t1", {"train.lr": 0.01}, history, "FAILED")
    (child,) = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert child.info.run_name == "trial t1" and child.info.status == "FAILED"
    assert child.data.params == {"train.lr": "0.01"}
    assert [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "val_loss")] == [(1, 0.5),
                                                                                                     (2, 0.4)]
    with pytest.raises(RaymlError, match="not one of"):
        tracker.log_child(parent, "trial t2", {}, [], "DONE")


def test_resume_continues_the_same_run(tracker, client, tmp_path, caplog) -> None:
    run_dir = tmp_path / "resumable"
    first = tracker.start(run_dir, "resumable", {"train": {"lr": 0.1, "epochs": 2}})
    tracker.log_epoch(first, 1, {"val_loss": 0.9})
    tracker.finish(first, "KILLED")
    with caplog.at_level(logging.WARNING, logger="rayml.tracking"):
        second = tracker.start(run_dir, "resumable", {"train": {"lr": 0.2, "epochs": 2}, "seed": 7})
    assert second == first
    assert "train.lr changed from '0.1' to '0.2'" in caplog.text
    tracker.log_epoch(second, 2, {"val_loss": 0.8})
    run = client.get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"train.lr": "0.1", "train.epochs": "2", "seed": "7"}
    assert [m.step for m in client.get_metric_history(first, "val_loss")] == [1, 2]


def test_a_saved_run_missing_from_the_store_starts_a_new_one(tracker, tmp_path) -> None:
    run_dir = tmp_path / "moved"
    run_dir.mkdir()
    (run_dir / RUN_FILE).write_text(json.dumps({"run_id": "0" * 32, "tracking_uri": tracker.tracking_uri}))
    run_id = tracker.start(run_dir, "moved", {})
    assert run_id != "0" * 32
    assert json.loads((run_dir / RUN_FILE).read_text())["run_id"] == run_id


def test_logging_failures_warn_and_do_not_raise(tracker, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="rayml.tracking"):
        tracker.log_epoch("f" * 32, 1, {"val_loss": 0.1})
    assert "could not log epoch metrics to MLflow run " + "f" * 32 in caplog.text


def test_disabled_tracking_is_a_noop_that_never_imports_mlflow(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from rayml.tracking import Tracker, TrackingConfig
        t = Tracker.from_config(TrackingConfig(enabled=False), {str(tmp_path)!r}, "job")
        t.connect()
        run_id = t.start(Path({str(tmp_path / "run")!r}), "run", {{"a": 1}})
        t.log_epoch(run_id, 1, {{"loss": 1.0}})
        t.log_report(run_id, {{"accuracy": 1.0}}, [])
        t.log_registered(run_id, "/r/m/1", "m", "1")
        t.finish(run_id, "FINISHED")
        assert run_id is None, run_id
        assert "mlflow" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert list(tmp_path.iterdir()) == []  # no store, no mlflow_run.json


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("nosuch://somewhere", "MLflow cannot use 'nosuch://somewhere'"),
        (f"http://127.0.0.1:{_closed_port()}", "no MLflow server answers"),
        ("file:///tmp/rayml-mlruns", "use sqlite:////abs/path/mlflow.db"),
    ],
)
def test_a_bad_tracking_uri_is_a_clear_config_error(uri, message, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    tracker = Tracker.from_config(TrackingConfig(tracking_uri=uri), tmp_path, "job")
    with pytest.raises(ConfigError, match="tracking.tracking_uri") as err:
        tracker.start(tmp_path / "run", "run", {})
    assert message in str(err.value) and "tracking.enabled: false" in str(err.value)
    assert not (tmp_path / "run" / RUN_FILE).exists()


def test_config_rejects_a_uri_without_a_scheme() -> None:
    with pytest.raises(ConfigError, match="tracking_uri: got '/tmp/mlruns'; the tracking URI needs a scheme"):
        parse(TrackingConfig, {"tracking_uri": "/tmp/mlruns"}, source="tracking")
    with pytest.raises(ConfigError, match="unknown key"):
        parse(TrackingConfig, {"uri": "http://x"}, source="tracking")


def test_a_tracked_block_ends_its_run_finished_killed_or_failed(tracker, client, tmp_path) -> None:
    with tracker.run(tmp_path / "ok", "ok", {}) as ok:
        pass
    with pytest.raises(KeyboardInterrupt), tracker.run(tmp_path / "stopped", "stopped", {}) as stopped:
        raise KeyboardInterrupt
    with pytest.raises(ValueError), tracker.run(tmp_path / "broken", "broken", {}) as broken:
        raise ValueError("boom")
    assert [client.get_run(r).info.status for r in (ok, stopped, broken)] == ["FINISHED", "KILLED", "FAILED"]
