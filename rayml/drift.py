"""Input drift for serving: the population stability index (PSI) of each feature against training.

At export time ``reference_profile`` summarizes the training inputs as JSON stored in the registry: the
buckets of each feature and the share of training rows in each. A serving replica counts every live batch
into the same buckets (``counts``), keeps the most recent rows in a ``RollingWindow``, and turns the window
into one PSI per feature (``psi_by_feature``) for the ``rayml_serve_feature_psi`` gauge.

Rule of thumb: PSI < 0.1 is stable, 0.1..0.25 a moderate shift, > 0.25 significant drift. Sampling noise
alone gives roughly (buckets - 1) / window_rows, so judge a window of a few thousand rows, not a handful.

Profile layout (``PROFILE_VERSION`` 1), every feature's last bucket holds nulls::

    {"version": 1, "rows": 10000, "bins": 10, "top_k": 20, "features": {
        "amount":   {"kind": "numeric", "edges": [e1, ..., ek], "proportions": [k + 1 bins..., null]},
        "merchant": {"kind": "categorical", "values": ["a", ...],
                     "proportions": [per value..., other, null]}}}

Numeric buckets are (-inf, e1), [e1, e2), ..., [ek, +inf): quantile cut points of the training values,
deduplicated, so the first and last buckets are open-ended and any live value has a bucket. NaN and None are
null; +-inf fall in the outer buckets. Categorical values are compared as text (an int code 7 is '7', as in
``featurize``); a value outside the top-k of training, including one never seen, counts as 'other'.

Pure numpy: no Ray, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rayml.errors import DataValidationError, RegistryError

PROFILE_VERSION = 1


def reference_profile(
    columns: Mapping[str, Any],
    numeric: list[str],
    categorical: list[str],
    bins: int = 10,
    top_k: int = 20,
) -> dict[str, Any]:
    """The JSON-ready training reference of ``numeric`` and ``categorical`` columns (see the module doc).

    ``bins`` is the number of quantile bins per numeric feature before deduplication (ties can merge some);
    ``top_k`` the number of most frequent values kept per categorical feature.
    """
    if bins < 1 or top_k < 1:
        raise ValueError(f"Got bins={bins}, top_k={top_k}; both must be at least 1")
    _require(columns, [*numeric, *categorical])
    rows = _rows(columns, [*numeric, *categorical])
    if rows == 0:
        raise DataValidationError("no rows to profile; build the drift profile from the training split")
    features: dict[str, dict[str, Any]] = {}
    for name in numeric:
        values = _as_float(columns[name])
        finite = values[np.isfinite(values)]
        if finite.size:
            cuts = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])
            edges = [float(e) for e in np.unique(cuts)]
        else:
            edges = []
        spec: dict[str, Any] = {"kind": "numeric", "edges": edges}
        spec["proportions"] = _proportions(_bucket_counts(spec, columns[name]))
        features[name] = spec
    for name in categorical:
        text, null = _as_text(columns[name])
        uniques, freq = np.unique(text[~null], return_counts=True)
        # most frequent first; ties by value so the profile is deterministic
        order = sorted(range(len(uniques)), key=lambda i: (-int(freq[i]), str(uniques[i])))[:top_k]
        spec = {"kind": "categorical", "values": [str(uniques[i]) for i in order]}
        spec["proportions"] = _proportions(_bucket_counts(spec, columns[name]))
        features[name] = spec
    return {"version": PROFILE_VERSION, "rows": rows, "bins": bins, "top_k": top_k, "features": features}


def counts(profile: Mapping[str, Any], columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per-feature bucket counts (int64, the profile's buckets in order, nulls last) of one live batch."""
    features = _features(profile)
    _require(columns, list(features))
    return {name: _bucket_counts(spec, columns[name]) for name, spec in features.items()}


class RollingWindow:
    """Bucket counts of (about) the most recent ``size`` rows, per feature, in bounded memory.

    Batches are summed into ``slots`` slots of about ``size / slots`` rows each; a ring of slots covers the
    window and the oldest slot is dropped once the newer ones alone hold ``size`` rows. The window therefore
    always spans at least ``size`` rows once that many have arrived, and at most one slot (plus the last
    batch) more, whatever the batch sizes; memory is about ``slots + 2`` count vectors per feature.
    """

    def __init__(self, size: int, slots: int = 10) -> None:
        if size < 1 or slots < 1:
            raise ValueError(f"Got size={size}, slots={slots}; both must be at least 1")
        self.size = size
        self._slot_rows = max(1, size // slots)
        self._ring: deque[tuple[int, dict[str, np.ndarray]]] = deque()  # closed slots, oldest first
        self._open_rows = 0
        self._open: dict[str, np.ndarray] = {}
        self._total_rows = 0
        self._totals: dict[str, np.ndarray] = {}

    @property
    def rows(self) -> int:
        """Rows the window currently covers."""
        return self._total_rows

    def add(self, batch_counts: Mapping[str, np.ndarray], rows: int) -> None:
        """Add one batch: its ``counts(...)`` and its number of rows."""
        if rows < 0:
            raise ValueError(f"Got rows={rows}; a batch has zero or more rows")
        for name, value in batch_counts.items():
            value = np.asarray(value, dtype=np.int64)
            if name in self._totals and self._totals[name].shape != value.shape:
                raise ValueError(
                    f"feature {name!r} has {value.size} buckets in this batch but {self._totals[name].size} "
                    "in the window; count every batch with the same profile"
                )
            self._totals[name] = self._totals.get(name, 0) + value
            self._open[name] = self._open.get(name, 0) + value
        self._total_rows += rows
        self._open_rows += rows
        if self._open_rows >= self._slot_rows:
            self._ring.append((self._open_rows, self._open))
            self._open, self._open_rows = {}, 0
        while self._ring and self._total_rows - self._ring[0][0] >= self.size:
            old_rows, old = self._ring.popleft()
            self._total_rows -= old_rows
            for name, value in old.items():
                self._totals[name] = self._totals[name] - value

    def totals(self) -> dict[str, np.ndarray]:
        """Summed bucket counts of the window, per feature (copies)."""
        return {name: np.array(value, dtype=np.int64) for name, value in self._totals.items()}


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population stability index: sum((a - e) * ln(a / e)) over bucket proportions.

    ``expected`` and ``actual`` are counts or proportions over the same buckets; each is normalized to sum
    to 1, and proportions below ``epsilon`` are raised to it, so an empty bucket adds a large but finite term.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(
            f"expected and actual must be 1-D over the same buckets; got shapes {e.shape} and {a.shape}"
        )
    if e.sum() <= 0 or a.sum() <= 0 or (e < 0).any() or (a < 0).any():
        raise ValueError("expected and actual must be non-negative with a positive total")
    e = np.maximum(e / e.sum(), epsilon)
    a = np.maximum(a / a.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_by_feature(profile: Mapping[str, Any], window_totals: Mapping[str, np.ndarray]) -> dict[str, float]:
    """PSI of each profiled feature that has rows in ``window_totals`` (a ``RollingWindow.totals()``)."""
    out: dict[str, float] = {}
    for name, spec in _features(profile).items():
        actual = window_totals.get(name)
        if actual is None or np.sum(actual) <= 0:
            continue
        out[name] = psi(np.asarray(spec["proportions"], dtype=np.float64), np.asarray(actual))
    return out


def _bucket_counts(spec: Mapping[str, Any], values: Any) -> np.ndarray:
    """Counts per bucket of ``values`` under one feature's spec; the last bucket is null."""
    if spec["kind"] == "numeric":
        edges = np.asarray(spec["edges"], dtype=np.float64)
        x = _as_float(values)
        null = np.isnan(x)
        index = np.searchsorted(edges, x[~null], side="right")  # value == edge goes to the upper bucket
        n_buckets = edges.size + 2
    else:
        kept = list(spec["values"])
        text, null = _as_text(values)
        uniques, inverse = np.unique(text[~null], return_inverse=True)
        lookup = {value: i for i, value in enumerate(kept)}
        other = len(kept)
        index = np.array([lookup.get(str(u), other) for u in uniques], dtype=np.int64)[inverse.reshape(-1)]
        n_buckets = len(kept) + 2
    out = np.bincount(index, minlength=n_buckets).astype(np.int64)
    out[-1] += int(null.sum())
    return out


def _proportions(bucket_counts: np.ndarray) -> list[float]:
    total = int(bucket_counts.sum())
    return [float(c) / total if total else 0.0 for c in bucket_counts]


def _as_float(values: Any) -> np.ndarray:
    """A column as float64 with NaN for nulls (None, NaN, or text that is not a number)."""
    array = np.asarray(values)
    if array.dtype.kind in "biuf":
        return array.astype(np.float64).reshape(-1)
    out = np.empty(array.size, dtype=np.float64)
    for i, value in enumerate(array.reshape(-1)):
        try:
            out[i] = np.nan if value is None else float(value)
        except (TypeError, ValueError):
            out[i] = np.nan
    return out


def _as_text(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """A column as an object array of str, and a mask of its nulls (None or NaN)."""
    array = np.asarray(values).reshape(-1)
    if array.dtype.kind in "biuUS":
        return array.astype(str).astype(object), np.zeros(array.size, dtype=bool)
    if array.dtype.kind == "f":
        null = np.isnan(array)
        return array.astype(str).astype(object), null
    null = np.array([v is None or (isinstance(v, float) and v != v) for v in array], dtype=bool)
    text = np.array(["" if n else str(v) for v, n in zip(array, null)], dtype=object)
    return text, null


def _features(profile: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    if not isinstance(profile, Mapping) or profile.get("version") != PROFILE_VERSION:
        found = profile.get("version") if isinstance(profile, Mapping) else type(profile).__name__
        raise RegistryError(
            f"drift profile version {found!r}; this rayml reads version {PROFILE_VERSION}. "
            "Re-export the model"
        )
    features = profile.get("features")
    if not isinstance(features, Mapping):
        raise RegistryError("drift profile has no 'features' mapping; re-export the model")
    return dict(features)


def _require(columns: Mapping[str, Any], names: Sequence[str]) -> None:
    missing = [n for n in names if n not in columns]
    if missing:
        raise DataValidationError(
            f"columns {missing} are missing from the batch; the drift profile needs them"
        )


def _rows(columns: Mapping[str, Any], names: Sequence[str]) -> int:
    lengths = {n: int(np.asarray(columns[n]).reshape(-1).size) for n in names}
    if len(set(lengths.values())) > 1:
        raise DataValidationError(f"columns have different lengths {lengths}; pass one row per index")
    return next(iter(lengths.values()), 0)
