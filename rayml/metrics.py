"""Every metric rayml emits, in one table, and the one place that builds them.

Each metric is a ``MetricSpec`` in ``METRICS``: its name, kind, meaning, tag keys and (for histograms) bucket
boundaries. Code never constructs a ``ray.util.metrics`` object itself; it calls ``make(name)`` or, in the
serving path, a ``Recorder``. Dashboards and alert rules query the names below.

How the names appear in Prometheus (read from Ray 2.60's source, and checked by feeding these names through
Ray's dashboard-agent recorder and rendering the Prometheus text):

- Ray's metrics export prefixes every user metric with the namespace ``ray_``: the default OpenTelemetry
  path (``ray/_private/telemetry/open_telemetry_metric_recorder.py``: ``NAMESPACE = "ray"``, instruments are
  created as ``f"{NAMESPACE}_{name}"``) and the legacy OpenCensus path (``RAY_enable_open_telemetry=0``;
  ``reporter_agent.py`` builds the exporter with ``namespace="ray"`` and ``metrics_agent.py`` exports
  ``f"{namespace}_{metric_name}"``) both do. So ``rayml_serve_requests_total`` is scraped as
  ``ray_rayml_serve_requests_total``. Query ``ray_rayml_...`` in PromQL and Grafana.
- Counters: the Prometheus client appends ``_total`` to a counter's name unless it already ends with it, so
  counters here are named ``..._total`` and appear exactly once as ``ray_rayml_..._total`` (a name without
  it would still be exported as ``..._total``; on the legacy path it would also get a deprecated gauge twin).
- Histograms appear as ``ray_<name>_bucket{le=...}``, ``ray_<name>_sum`` and ``ray_<name>_count``. Ray's agent
  rebuilds each histogram from its bucket counts (``OpenTelemetryMetricRecorder``, bucket midpoints), so
  ``_count`` and the buckets are exact but ``_sum`` is the sum of bucket midpoints (seen: 60 batches of 10 rows
  reported a ``_sum`` of 720); prefer ``histogram_quantile`` over ``_sum / _count``.
- Gauges: the agent forgets a gauge its process has not set again within two export intervals (20 s by
  default), so every gauge set here is re-set with its last value every ``GAUGE_REFRESH_S`` (``_GaugeKeeper``).
- Ray registers every instrument with unit ``"1"``, which maps to no unit suffix, so ``_seconds`` and
  ``_rows`` stay where the name puts them.
- Series carry the tag keys below plus labels that Ray adds itself (for instance ``WorkerId``, subject to
  Ray's cardinality settings, and OpenTelemetry scope labels).

Ray's constraints that shape the table: histogram boundaries must be positive (> 0; ``ray.util.metrics``
rejects 0 and negatives), so a signed quantity such as the shadow score difference is recorded as its absolute
value; every declared tag key needs a value on every record; tag values are strings.

Keep tag values low-cardinality: ``route`` is the route template (``/predict/{model}``), never the raw path.
Importing this module imports nothing from Ray; ``make`` does that on first use.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ray.util.metrics import Metric

logger = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One rayml metric: what it measures and how it is tagged and bucketed."""

    name: str
    kind: Kind
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] | None = None


# Prometheus' usual latency buckets, stretched to cover 1 ms .. 10 s.
_LATENCY_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Powers of two over 1..4096 rows: batch sizes are usually powers of two, so each lands on its own boundary.
_BATCH_ROWS = tuple(float(2**i) for i in range(13))  # 1 .. 4096
# 20 equal-width bins over [0, 1]; a score of 0 falls in the first (le=0.05) bucket: Ray forbids a 0 boundary.
_SCORE = tuple(round(0.05 * i, 2) for i in range(1, 21))
# |primary - shadow| score difference; anything above 1 cannot happen for probabilities and lands in +Inf.
# Epoch and micro-batch wall times: 0.1 s .. ~1 h.
_EPOCH_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_SCORE_DELTA = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

_SPECS = (
    MetricSpec(
        "rayml_serve_requests_total",
        "counter",
        "HTTP requests answered by the rayml serving app, by route template and HTTP status code.",
        ("model", "version", "route", "status"),
    ),
    MetricSpec(
        "rayml_serve_request_latency_seconds",
        "histogram",
        "Time from request received to response ready inside the replica (excludes the proxy), in seconds.",
        ("model", "version", "route"),
        _LATENCY_SECONDS,
    ),
    MetricSpec(
        "rayml_serve_batch_rows",
        "histogram",
        "Rows in each batch the model scored (after Serve's request batching).",
        ("model", "version"),
        _BATCH_ROWS,
    ),
    MetricSpec(
        "rayml_serve_prediction_score",
        "histogram",
        "Distribution of predicted positive-class scores in [0, 1], one observation per scored row.",
        ("model", "version"),
        _SCORE,
    ),
    MetricSpec(
        "rayml_serve_feature_psi",
        "gauge",
        "Population stability index of one input feature: the live rolling window against the training "
        "reference profile (rayml.drift). Above 0.25 is the usual sign of significant drift.",
        ("model", "version", "feature"),
    ),
    MetricSpec(
        "rayml_serve_shadow_requests_total",
        "counter",
        "Batches mirrored to the shadow model, by outcome (ok, error, timeout).",
        ("model", "version", "status"),
    ),
    MetricSpec(
        "rayml_serve_shadow_score_delta",
        "histogram",
        "Absolute difference between the primary and the shadow model's score, one observation per row "
        "(absolute because Ray's histogram boundaries must be positive).",
        ("model", "version"),
        _SCORE_DELTA,
    ),
    # Training: recorded by rank 0 of the Ray Train loop (rayml.train) once per epoch; ``run`` is the run name.
    MetricSpec(
        "rayml_train_epoch",
        "gauge",
        "Epochs completed by the training run (1-based; the epoch a resumed run starts at counts as done).",
        ("run",),
    ),
    MetricSpec(
        "rayml_train_loss",
        "gauge",
        "Mean loss of the last completed epoch, split = train or val.",
        ("run", "split"),
    ),
    MetricSpec(
        "rayml_train_val_metric",
        "gauge",
        "Validation quality after the last completed epoch, metric = roc_auc or pr_auc.",
        ("run", "metric"),
    ),
    MetricSpec(
        "rayml_train_samples_total",
        "counter",
        "Training rows processed, summed over all workers; rate() is the cluster's training throughput.",
        ("run",),
    ),
    MetricSpec(
        "rayml_train_epoch_seconds",
        "histogram",
        "Wall time of the training pass of each epoch (excludes validation and checkpointing), in seconds.",
        ("run",),
        _EPOCH_SECONDS,
    ),
    MetricSpec(
        "rayml_train_checkpoint_seconds",
        "histogram",
        "Time to write and report each epoch's checkpoint, in seconds.",
        ("run",),
        _LATENCY_SECONDS,
    ),
    MetricSpec(
        "rayml_train_last_epoch_timestamp_seconds",
        "gauge",
        "Unix time at which the last epoch finished; time() minus this is how long the run has made no progress.",
        ("run",),
    ),
    MetricSpec(
        "rayml_train_planned_epochs",
        "gauge",
        "Epochs the run is configured for; rayml_train_epoch below it means the run is not finished.",
        ("run",),
    ),
    MetricSpec(
        "rayml_train_attempts",
        "gauge",
        "Times the training loop of this run has started: 1, plus one per restart from a checkpoint (a worker "
        "failure retried by Ray Train, or a resumed run). A gauge rather than a counter because each attempt "
        "runs in new worker processes, and Ray labels every series with its worker.",
        ("run",),
    ),
    # Data: recorded by the driver after each validate stage, and (ingest) after each micro-batch.
    MetricSpec(
        "rayml_data_records_total",
        "counter",
        "Records read by a pipeline's validate stage, status = valid or quarantined; pipeline = the job's name "
        "(not `job`, which Prometheus reserves for the scrape job).",
        ("pipeline", "status"),
    ),
    MetricSpec(
        "rayml_ingest_messages_total",
        "counter",
        "Kafka messages written by `rayml ingest`, status = valid or quarantined.",
        ("topic", "status"),
    ),
    MetricSpec(
        "rayml_ingest_lag_messages",
        "gauge",
        "Messages between the committed offset and the high watermark of one partition.",
        ("topic", "partition"),
    ),
    MetricSpec(
        "rayml_ingest_batch_seconds",
        "histogram",
        "Wall time of one ingest micro-batch from read to committed offsets, in seconds.",
        ("topic",),
        _EPOCH_SECONDS,
    ),
    MetricSpec(
        "rayml_ingest_last_commit_timestamp_seconds",
        "gauge",
        "Unix time of the last committed ingest micro-batch.",
        ("topic",),
    ),
)

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}


# Ray's own metrics that rayml's alert rules and dashboards query, as scraped from a Ray 2.60 node (Serve's
# replica and controller metrics; the HTTP proxy's are missing under the HAProxy ingress, so none are used).
RAY_METRICS_USED = frozenset({
    "ray_serve_deployment_replica_healthy",
    "ray_serve_deployment_request_counter_total",
    "ray_serve_deployment_processing_latency_ms_bucket",
    "ray_serve_deployment_processing_latency_ms_sum",
    "ray_serve_deployment_processing_latency_ms_count",
    "ray_serve_deployment_queued_queries",
    "ray_serve_replica_utilization_percent",
    "ray_serve_num_ongoing_requests_at_replicas",
})

_PROMQL_NAME = re.compile(r"\bray_[a-z0-9_]+\b")


def exported_names() -> set[str]:
    """Every series name rayml's metrics appear under in Prometheus (with Ray's ``ray_`` prefix)."""
    names: set[str] = set()
    for spec in _SPECS:
        if spec.kind == "histogram":
            names.update(f"ray_{spec.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(f"ray_{spec.name}")
    return names


def unknown_names(expr: str) -> list[str]:
    """The ``ray_*`` metric names in a PromQL expression that neither rayml nor ``RAY_METRICS_USED`` declares."""
    known = exported_names() | RAY_METRICS_USED
    return sorted({name for name in _PROMQL_NAME.findall(expr) if name not in known})


_built: dict[str, Metric] = {}
_built_lock = threading.Lock()


def make(name: str) -> Metric:
    """The ``ray.util.metrics`` object for ``name``, built from its spec on first use and cached per process.

    Building one does not start or connect to Ray. Raises ``KeyError`` for a name missing from ``METRICS``
    and ``ImportError`` when Ray is not installed.
    """
    spec = METRICS.get(name)
    if spec is None:
        raise KeyError(f"unknown metric {name!r}; declare it in METRICS in rayml/metrics.py before using it")
    with _built_lock:
        metric = _built.get(name)
        if metric is None:
            metric = _built[name] = _build(spec)
        return metric


def _build(spec: MetricSpec) -> Metric:
    from ray.util import metrics as ray_metrics  # lazy: importing rayml must not import Ray

    if spec.kind == "counter":
        return ray_metrics.Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    if spec.kind == "gauge":
        return ray_metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    return ray_metrics.Histogram(
        spec.name,
        description=spec.description,
        boundaries=list(spec.boundaries or ()),
        tag_keys=spec.tag_keys,
    )


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
        self._set("rayml_train_val_metric", metrics["val_roc_auc"], {"metric": "roc_auc"})
        self._set("rayml_train_val_metric", metrics["val_pr_auc"], {"metric": "pr_auc"})
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
