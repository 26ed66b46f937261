"""Every metric rayml emits, in one table, and the one place that builds them.

Each metric is a ``MetricSpec`` in ``METRICS``: its name, kind, meaning, tag keys and (for histograms) bucket
boundaries. Code never constructs a ``ray.util.metrics`` object itself; it calls ``make(name)`` or, in the
serving and training paths, a recorder of ``rayml.recorders``. Dashboards and alert rules query the names below.

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
  default), so every gauge set here is re-set with its last value every ``GAUGE_REFRESH_S`` (``rayml.recorders``).
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

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ray.util.metrics import Metric


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
        "Validation quality after the last completed epoch, metric = roc_auc and pr_auc (binary), accuracy "
        "(multiclass) or rmse (regression).",
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
