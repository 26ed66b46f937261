"""The recorders rayml's serving replicas, training loop and pipeline driver use to emit the metrics of
``rayml.metrics``. They never raise: a metric must not fail a request or a run."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping

from rayml.metrics import make

logger = logging.getLogger(__name__)


# Ray 2.60's metrics agent drops a gauge series that its process has not set again within two export intervals
# (``OpenTelemetryMetricRecorder._gauge_metric_ttl_s``: 20 s by default), so a gauge set once per epoch or per
# 100 served rows would vanish from Prometheus between updates. Every process that sets a gauge therefore sets
# it again with its last value every few seconds; when the process exits, its series age out as Ray intends.
GAUGE_REFRESH_S = 5.0


class _GaugeKeeper:
    """Re-sets this process's gauges with their last values from one daemon thread, started on first use."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def keep(self, name: str, tags: Mapping[str, str], value: float) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(tags.items())))] = value
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rayml-gauge-refresh", daemon=True)
                self._thread.start()

    def forget(self, tags: Mapping[str, str]) -> None:
        """Stop refreshing every kept gauge whose tags include all of ``tags``."""
        wanted = set(tags.items())
        with self._lock:
            for key in [key for key in self._values if wanted <= set(key[1])]:
                del self._values[key]

    def refresh(self) -> None:
        with self._lock:
            values = list(self._values.items())
        for (name, tags), value in values:
            try:
                make(name).set(value, tags=dict(tags))
            except Exception:  # noqa: BLE001 - the first failure was logged when the gauge was set
                pass

    def _run(self) -> None:
        while True:
            time.sleep(GAUGE_REFRESH_S)
            self.refresh()


_keeper = _GaugeKeeper()


class _SafeRecorder:
    """Records metrics under fixed base tags and never raises: metrics must not fail a request or a run.

    A failure (Ray missing, no Ray worker context, a bad value) is logged once per metric and that record is
    dropped.
    """

    def __init__(self, tags: Mapping[str, str]) -> None:
        self._tags = {key: str(value) for key, value in tags.items()}
        self._warned: set[str] = set()

    def _inc(self, name: str, tags: Mapping[str, str], value: float = 1.0) -> None:
        if value <= 0:
            return  # Ray's counters reject increments <= 0; adding nothing is a no-op anyway
        try:
            make(name).inc(float(value), tags={**self._tags, **tags})
        except Exception as exc:  # noqa: BLE001 - metrics never break the caller
            self._warn(name, exc)

    def _set(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        final = {**self._tags, **tags}
        try:
            make(name).set(float(value), tags=final)
        except Exception as exc:  # noqa: BLE001 - metrics never break the caller
            self._warn(name, exc)
            return
        _keeper.keep(name, final, float(value))

    def _observe(self, name: str, values: Iterable[float], tags: Mapping[str, str]) -> None:
        try:
            histogram = make(name)
            final = {**self._tags, **tags}
            for value in values:
                # Ray accepts only int/float, and numpy's int64/float32 are neither
                histogram.observe(float(value), tags=final)
        except Exception as exc:  # noqa: BLE001 - metrics never break the caller
            self._warn(name, exc)

    def _warn(self, name: str, exc: Exception) -> None:
        if name not in self._warned:
            self._warned.add(name)
            logger.warning("metric %s not recorded (%s: %s); further failures are not logged", name,
                           type(exc).__name__, exc)


class Recorder(_SafeRecorder):
    """Records the serving metrics of one model version."""

    def __init__(self, model: str, version: str) -> None:
        super().__init__({"model": model, "version": version})

    def request(self, route: str, status: int | str, seconds: float) -> None:
        """One answered HTTP request: count it by status and observe its latency."""
        self._inc("rayml_serve_requests_total", {"route": str(route), "status": str(status)})
        self._observe("rayml_serve_request_latency_seconds", [seconds], {"route": str(route)})

    def observe_latency(self, route: str, seconds: float) -> None:
        """Latency of one request, without counting it (use ``request`` to do both)."""
        self._observe("rayml_serve_request_latency_seconds", [seconds], {"route": str(route)})

    def batch_rows(self, rows: int) -> None:
        """Rows in one scored batch."""
        self._observe("rayml_serve_batch_rows", [rows], {})

    def prediction_scores(self, scores: Iterable[float]) -> None:
        """One observation per scored row (about 1.3 us each, so ~5 ms for a 4096-row batch)."""
        self._observe("rayml_serve_prediction_score", scores, {})

    def feature_psi(self, values: Mapping[str, float]) -> None:
        """Set the PSI gauge of each feature (``rayml.drift.psi_by_feature``'s output)."""
        for feature, value in values.items():
            self._set("rayml_serve_feature_psi", value, {"feature": str(feature)})

    def close(self) -> None:
        """This version is no longer served: stop refreshing its gauges."""
        _keeper.forget(self._tags)

    def shadow(self, status: str, score_deltas: Iterable[float] = ()) -> None:
        """One batch mirrored to the shadow model: its outcome and per-row |primary - shadow| scores."""
        self._inc("rayml_serve_shadow_requests_total", {"status": str(status)})
        self._observe("rayml_serve_shadow_score_delta", (abs(float(d)) for d in score_deltas), {})


class TrainRecorder(_SafeRecorder):
    """Records the training metrics of one run; called by rank 0 of the training loop."""

    def __init__(self, run: str) -> None:
        super().__init__({"run": run})

    def started(self, attempt: int, planned_epochs: int) -> None:
        """The loop started: its attempt number (1 = first) and the epochs it is configured for."""
        self._set("rayml_train_attempts", attempt, {})
        self._set("rayml_train_planned_epochs", planned_epochs, {})

    def epoch(self, metrics: Mapping[str, float], finished_at: float) -> None:
        """One completed epoch: the loop's per-epoch metrics dict (epoch, losses, AUCs, rows, seconds)."""
        self._set("rayml_train_epoch", metrics["epoch"], {})
        self._set("rayml_train_loss", metrics["train_loss"], {"split": "train"})
        self._set("rayml_train_loss", metrics["val_loss"], {"split": "val"})
        for key in ("val_roc_auc", "val_pr_auc", "val_accuracy", "val_rmse"):
            if key in metrics:
                self._set("rayml_train_val_metric", metrics[key], {"metric": key.removeprefix("val_")})
        self._inc("rayml_train_samples_total", {}, metrics["train_rows"])
        self._observe("rayml_train_epoch_seconds", [metrics["epoch_seconds"]], {})
        self._set("rayml_train_last_epoch_timestamp_seconds", finished_at, {})

    def checkpoint_seconds(self, seconds: float) -> None:
        """Time to save and report one checkpoint."""
        self._observe("rayml_train_checkpoint_seconds", [seconds], {})


def record_validated(pipeline: str, valid: int, quarantined: int) -> None:
    """Count one validate stage's records (driver side)."""
    recorder = _SafeRecorder({"pipeline": pipeline})
    recorder._inc("rayml_data_records_total", {"status": "valid"}, valid)
    recorder._inc("rayml_data_records_total", {"status": "quarantined"}, quarantined)


class IngestRecorder(_SafeRecorder):
    """Records the metrics of one `rayml ingest` (driver side), under its topic."""

    def __init__(self, topic: str) -> None:
        super().__init__({"topic": topic})

    def batch(self, valid: int, quarantined: int, seconds: float, committed_at: float) -> None:
        """One committed micro-batch: its messages by status, its wall time and when it committed."""
        self._inc("rayml_ingest_messages_total", {"status": "valid"}, valid)
        self._inc("rayml_ingest_messages_total", {"status": "quarantined"}, quarantined)
        self._observe("rayml_ingest_batch_seconds", [seconds], {})
        self._set("rayml_ingest_last_commit_timestamp_seconds", committed_at, {})

    def lag(self, by_partition: Mapping[int, int]) -> None:
        """Messages between the committed offset and the high watermark, per partition."""
        for partition, messages in by_partition.items():
            self._set("rayml_ingest_lag_messages", messages, {"partition": str(partition)})

    def close(self) -> None:
        """The ingest stopped: stop refreshing its gauges (they then age out as Ray intends)."""
        _keeper.forget(self._tags)
