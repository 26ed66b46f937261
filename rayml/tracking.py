"""Experiment tracking with MLflow: params, per-epoch metrics, the evaluation report and plots, and where the
model was registered.

By default each run root gets a local store, ``<run.root>/mlruns/mlflow.db`` (SQLite) with artifacts in
``<run.root>/mlruns/artifacts``. MLflow 3 keeps its ``file:`` store only behind ``MLFLOW_ALLOW_FILE_STORE=true``
("maintenance mode") and recommends SQLite for local use, so that is what rayml creates. Browse it with
``mlflow ui --backend-store-uri sqlite:///runs/mlruns/mlflow.db`` (the full ``mlflow`` package has the UI).
Point ``tracking.tracking_uri`` at a tracking server (``http://host:5000``) on a multi-node cluster: a SQLite
file on the head node is not reachable from a rank-0 worker on another node.

A ``Tracker`` is a small frozen value (enabled, tracking URI, experiment): the driver builds it from the job
(``Tracker.from_config``) and hands ``tracker.to_dict()`` to the training workers, where rank 0 rebuilds it and
logs each epoch by run id. The MLflow run id is saved in ``<run dir>/mlflow_run.json``, so rerunning or
resuming a run continues the same MLflow run. mlflow is imported only when tracking is enabled and used.

Only ``start`` raises (a wrong URI is a config error better found before training). Failures of the logging
calls are warned about and training goes on: a tracking-server hiccup must not kill a long training run.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from rayml.artifacts import write_json
from rayml.config import StrictModel
from rayml.errors import ConfigError, RaymlError

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"  # <run dir>/mlflow_run.json: the MLflow run id this run logs to
STORE_DIR = "mlruns"
STATUSES = ("FINISHED", "FAILED", "KILLED")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
_PARAMS_PER_BATCH = 100  # MLflow's limit on params per log_batch call
_METRICS_PER_BATCH = 1000
_CONNECT_TIMEOUT_S = 5.0
_DB_SCHEMES = ("sqlite:", "postgresql", "mysql", "mssql")
_clients: dict[str, Any] = {}  # one MlflowClient per tracking URI per process (opening a store costs seconds)


class TrackingConfig(StrictModel):
    """Experiment tracking with MLflow."""

    enabled: bool = Field(True, description="record params, per-epoch metrics, the report and plots in MLflow")
    tracking_uri: str | None = Field(
        None, min_length=1, description="MLflow tracking URI (http://host:5000, sqlite:////abs/mlflow.db, ...); "
        "null = a local SQLite store in <run.root>/mlruns"
    )
    experiment: str | None = Field(
        None, min_length=1, max_length=500, description="MLflow experiment name; null = the job name"
    )

    @field_validator("tracking_uri")
    @classmethod
    def _has_scheme(cls, value: str | None) -> str | None:
        if value is not None and not _SCHEME.match(value):
            raise ValueError(
                "the tracking URI needs a scheme, e.g. http://127.0.0.1:5000 or sqlite:////abs/path/mlflow.db "
                "(a bare path would be MLflow's deprecated file store)"
            )
        return value


@dataclass(frozen=True)
class Tracker:
    """Logs one pipeline run to MLflow. Every method is a no-op (and imports nothing) when disabled."""

    enabled: bool
    tracking_uri: str = ""
    experiment: str = ""

    @classmethod
    def from_config(cls, config: TrackingConfig, runs_root: str | Path, job_name: str) -> Tracker:
        """Resolve the defaults: the local store under ``runs_root`` and the experiment named after the job."""
        if not config.enabled:
            return cls(enabled=False)
        uri = config.tracking_uri or default_uri(runs_root)
        return cls(enabled=True, tracking_uri=uri, experiment=config.experiment or job_name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tracker:
        """Rebuild a tracker from ``to_dict`` (e.g. inside a Ray Train worker)."""
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a Ray worker's config."""
        return asdict(self)

    def connect(self) -> None:
        """Import mlflow and open the store now (seconds), e.g. on rank 0 before the first timed epoch."""
        if self.enabled:
            _client(self.tracking_uri)

    def start(self, run_dir: str | Path, run_name: str, params: Mapping[str, Any]) -> str | None:
        """Start the MLflow run of ``run_dir``, or reopen the one saved in ``<run_dir>/mlflow_run.json``; log
        the flattened ``params`` and return the run id (None when disabled)."""
        if not self.enabled:
            return None
        client = _client(self.tracking_uri)
        run_id = self._saved_run(client, Path(run_dir))
        if run_id is None:
            experiment_id = self._experiment_id(client)
            run = client.create_run(experiment_id, run_name=run_name, tags={"rayml.run_dir": str(run_dir)})
            run_id = run.info.run_id
            write_json(Path(run_dir) / RUN_FILE, {
                "run_id": run_id, "experiment_id": experiment_id, "tracking_uri": self.tracking_uri,
                "experiment": self.experiment,
            })
            log.info("tracking: MLflow run %s in experiment %r at %s", run_id, self.experiment, self.tracking_uri)
        else:
            client.update_run(run_id, status="RUNNING")
            log.info("tracking: continuing MLflow run %s", run_id)
        self._log_new_params(client, run_id, flatten(params))
        return run_id

    @contextmanager
    def run(self, run_dir: str | Path, run_name: str, params: Mapping[str, Any]) -> Iterator[str | None]:
        """``start`` the run, then ``finish`` it when the block ends: FINISHED, KILLED on Ctrl-C, FAILED on
        any other error (which goes on up)."""
        run_id = self.start(run_dir, run_name, params)
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.finish(run_id, status)

    def log_epoch(self, run_id: str | None, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Log one epoch's numeric metrics at step ``epoch`` (from the driver or a rank-0 worker)."""
        self._safely("epoch metrics", run_id, lambda client: _log_metrics(client, run_id, metrics, step=epoch))

    def log_report(self, run_id: str | None, report: Mapping[str, Any], artifacts: list[Path],
                   *, prefix: str = "") -> None:
        """Log every number in ``report`` as a metric (nested keys joined by '.'; lists such as the confusion
        matrix are left to report.json), the report itself as ``evaluate/report.json``, and each file of
        ``artifacts`` (plots) under ``evaluate/``."""

        def log_all(client: Any) -> None:
            numbers = {key: value for key, value in flatten(report, prefix).items() if _number(value) is not None}
            _log_metrics(client, run_id, numbers, step=0)
            client.log_dict(run_id, json.loads(json.dumps(report, default=str)), "evaluate/report.json")
            for path in artifacts:
                if Path(path).is_file():
                    client.log_artifact(run_id, str(path), artifact_path="evaluate")
                else:
                    log.warning("tracking: artifact %s does not exist; not logged", path)

        self._safely("evaluation report", run_id, log_all)

    def log_registered(self, run_id: str | None, version_dir: str, model_name: str, version: str) -> None:
        """Tag the run with the registry path, model name and version it produced."""
        tags = {"rayml.registry_path": str(version_dir), "rayml.model_name": model_name,
                "rayml.model_version": str(version)}

        def tag_all(client: Any) -> None:
            for key, value in tags.items():
                client.set_tag(run_id, key, value)

        self._safely("registered model", run_id, tag_all)

    def log_child(self, parent_id: str | None, name: str, params: Mapping[str, Any],
                  history: list[Mapping[str, Any]], status: str = "FINISHED") -> None:
        """A finished run nested under ``parent_id`` (e.g. one Tune trial): its ``params`` and each entry of
        ``history`` as that epoch's metrics (the entries' numeric values, at step ``epoch``)."""
        state = _terminal_status(status)

        def log_all(client: Any) -> None:
            parent = client.get_run(parent_id)
            child = client.create_run(parent.info.experiment_id, run_name=name,
                                      tags={"mlflow.parentRunId": parent_id})
            child_id = child.info.run_id
            self._log_new_params(client, child_id, flatten(params))
            for entry in history:
                _log_metrics(client, child_id, {k: v for k, v in entry.items() if k != "epoch"},
                             step=int(entry.get("epoch", 0)))
            client.set_terminated(child_id, status=state)

        self._safely(f"child run {name}", parent_id, log_all)

    def finish(self, run_id: str | None, status: str = "FINISHED") -> None:
        """End the run with ``status`` FINISHED, FAILED or KILLED (a resume sets it RUNNING again)."""
        state = _terminal_status(status)
        self._safely("run status", run_id, lambda client: client.set_terminated(run_id, status=state))

    def _saved_run(self, client: Any, run_dir: Path) -> str | None:
        """The run id in ``mlflow_run.json`` if that run exists in this store, else None (a new run follows)."""
        path = run_dir / RUN_FILE
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text())
            run_id = str(saved["run_id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("tracking: %s is unreadable (%s); starting a new MLflow run", path, exc)
            return None
        if saved.get("tracking_uri") != self.tracking_uri:
            log.warning("tracking: %s names run %s in store %s, not %s; starting a new MLflow run there",
                        path, run_id, saved.get("tracking_uri"), self.tracking_uri)
            return None
        try:
            run = client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001 - MlflowException for a missing run; anything else means "gone"
            log.warning("tracking: MLflow run %s of %s is gone (%s); starting a new one", run_id, path, exc)
            return None
        return None if run.info.lifecycle_stage == "deleted" else run_id

    def _experiment_id(self, client: Any) -> str:
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = _artifact_location(self.tracking_uri)
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except Exception:
            # Another process may have created it between the two calls.
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _log_new_params(self, client: Any, run_id: str, params: dict[str, Any]) -> None:
        """Log params the run does not have yet; MLflow refuses to change a logged param, so a changed value on
        resume is warned about and kept as first logged."""
        from mlflow.entities import Param

        existing = client.get_run(run_id).data.params
        fresh: list[Any] = []
        for name, value in params.items():
            key, text = _key(name), _param_text(value)
            if key not in existing:
                fresh.append(Param(key, text))
            elif existing[key] != text:
                log.warning("tracking: param %s changed from %r to %r on resume; MLflow keeps %r",
                            key, existing[key], text, existing[key])
        for i in range(0, len(fresh), _PARAMS_PER_BATCH):
            client.log_batch(run_id, params=fresh[i : i + _PARAMS_PER_BATCH])

    def _safely(self, what: str, run_id: str | None, action: Callable[[Any], None]) -> None:
        if not self.enabled or run_id is None:
            return
        try:
            action(_client(self.tracking_uri))
        except Exception as exc:  # noqa: BLE001 - tracking must not end a training run
            log.warning("tracking: could not log %s to MLflow run %s at %s: %s", what, run_id,
                        self.tracking_uri, exc)


def _terminal_status(status: str) -> str:
    """``status`` as MLflow names it: FINISHED, FAILED or KILLED."""
    state = status.upper()
    if state not in STATUSES:
        raise RaymlError(f"tracking status {status!r} is not one of {', '.join(STATUSES)}")
    return state


def default_uri(runs_root: str | Path) -> str:
    """The local SQLite store of a run root: ``sqlite:///<abs runs_root>/mlruns/mlflow.db``."""
    return "sqlite:///" + str((Path(runs_root).resolve() / STORE_DIR / "mlflow.db"))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with '.'-joined keys: ``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _client(uri: str) -> Any:
    """The process's MlflowClient for ``uri``, opened (and checked) on first use."""
    if uri in _clients:
        return _clients[uri]
    local = _local_sqlite_path(uri)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        _check_reachable(uri)
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ConfigError(
            f"tracking.enabled: MLflow is not installed ({exc}). Install mlflow-skinny, sqlalchemy and alembic, "
            "or set tracking.enabled: false", "tracking"
        ) from exc
    missing = [m for m in ("sqlalchemy", "alembic") if uri.startswith(_DB_SCHEMES) and not find_spec(m)]
    if missing:  # mlflow-skinny alone then says the scheme is "unsupported", which misleads
        raise ConfigError(
            f"tracking.tracking_uri: the database store {uri!r} needs {' and '.join(missing)}; pip install "
            "sqlalchemy alembic (or the full mlflow package), or set tracking.enabled: false", "tracking"
        )
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # opens the store: a bad URI fails here, not mid-training
    except MlflowException as exc:
        hint = ""
        if "MLFLOW_ALLOW_FILE_STORE" in str(exc):
            hint = " MLflow 3 retired its file store: use sqlite:////abs/path/mlflow.db (or null for the default)."
        raise ConfigError(
            f"tracking.tracking_uri: MLflow cannot use {uri!r}: {exc.message.strip().rstrip('.')}.{hint} Fix "
            "tracking.tracking_uri, or set tracking.enabled: false", "tracking"
        ) from exc
    _clients[uri] = client
    return client


def _check_reachable(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when no server answers at ``uri``."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=_CONNECT_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # something answered (maybe asking for credentials): MLflow reports the details
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"tracking.tracking_uri: no MLflow server answers at {uri!r} ({reason}). Start the tracking server, "
            "fix tracking.tracking_uri, or set tracking.enabled: false", "tracking"
        ) from exc


def _local_sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside it (MLflow's default is ./mlruns under the current directory)."""
    db = _local_sqlite_path(uri)
    return (db.parent / "artifacts").resolve().as_uri() if db is not None else None


def _log_metrics(client: Any, run_id: str | None, metrics: Mapping[str, Any], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(_key(key), number, now, int(step))
             for key, value in metrics.items() if (number := _number(value)) is not None]
    for i in range(0, len(batch), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=batch[i : i + _METRICS_PER_BATCH])


def _number(value: Any) -> float | None:
    """A finite float, or None for anything that is not a plain number (bools, strings, None, NaN)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars register as Real
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _param_text(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else str(value)
    return text if len(text) <= _MAX_PARAM_LENGTH else text[: _MAX_PARAM_LENGTH - 3] + "..."


def _key(name: str) -> str:
    """MLflow allows letters, digits, '_', '-', '.', ' ' and '/' in names."""
    return _BAD_KEY_CHARS.sub("_", name)[:250]
