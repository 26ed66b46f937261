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
- Histograms appear as ``ray_<name>_bucket{le=...}``, ``ray_<name>_sum`` and ``ray_<name>_count``.
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
import threading
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
)

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}


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


class Recorder:
    """Records the serving metrics of one model version. Never raises: metrics must not fail a request.

    A failure (Ray missing, a bad value) is logged once per metric and that record is dropped.
    """

    def __init__(self, model: str, version: str) -> None:
        self._tags = {"model": str(model), "version": str(version)}
        self._warned: set[str] = set()

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
        name = "rayml_serve_feature_psi"
        try:
            gauge = make(name)
            for feature, value in values.items():
                gauge.set(float(value), tags={**self._tags, "feature": str(feature)})
        except Exception as exc:  # noqa: BLE001 - metrics never break serving
            self._warn(name, exc)

    def shadow(self, status: str, score_deltas: Iterable[float] = ()) -> None:
        """One batch mirrored to the shadow model: its outcome and per-row |primary - shadow| scores."""
        self._inc("rayml_serve_shadow_requests_total", {"status": str(status)})
        self._observe("rayml_serve_shadow_score_delta", (abs(float(d)) for d in score_deltas), {})

    def _inc(self, name: str, tags: dict[str, str]) -> None:
        try:
            make(name).inc(1.0, tags={**self._tags, **tags})
        except Exception as exc:  # noqa: BLE001 - metrics never break serving
            self._warn(name, exc)

    def _observe(self, name: str, values: Iterable[float], tags: dict[str, str]) -> None:
        try:
            histogram = make(name)
            final = {**self._tags, **tags}
            for value in values:
                # Ray accepts only int/float, and numpy's int64/float32 are neither
                histogram.observe(float(value), tags=final)
        except Exception as exc:  # noqa: BLE001 - metrics never break serving
            self._warn(name, exc)

    def _warn(self, name: str, exc: Exception) -> None:
        if name not in self._warned:
            self._warned.add(name)
            logger.warning("metric %s not recorded (%s: %s); further failures are not logged", name,
                           type(exc).__name__, exc)
