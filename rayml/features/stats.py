"""Mergeable statistics: moments (count, mean, M2) and a quantile sketch with a relative-error bound.

Both merge exactly and in any order, so Ray Data can fit each block separately and combine the results:
merged moments equal the moments of the whole data up to float rounding, and a merged sketch equals the
sketch of the whole data bit for bit.

The quantile sketch is DDSketch's (Masson et al., VLDB 2019) bucketing, without its bucket-count cap: a
value x > 0 lands in bucket ceil(log(x) / log(gamma)) with gamma = (1 + alpha) / (1 - alpha), negatives in a
mirrored set of buckets, and |x| < 1e-9 in a zero bucket. Every value in bucket i is within a factor
alpha of the bucket's representative 2 gamma^i / (gamma + 1), so ``quantile(sketch, q)`` returns a value
within relative error ``alpha`` of the exact lower quantile ``np.quantile(x, q, method="lower")`` (within
1e-9 absolute when that quantile is below 1e-9 in magnitude). A sketch holds one count per occupied
bucket: with alpha = 0.005, values spanning 1e-6..1e6 use at most about 2,800 buckets per sign.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ZERO = 1e-9  # |x| below this counts as 0


def moments(values: np.ndarray) -> list[float]:
    """[count, mean, sum of squared deviations] of the finite values (NaN is skipped)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [0.0, 0.0, 0.0]
    mean = float(finite.mean())
    return [float(finite.size), mean, float(np.square(finite - mean).sum())]


def merge_moments(a: list[float], b: list[float]) -> list[float]:
    """Chan et al.'s pairwise update: exact, without the cancellation of E[x^2] - E[x]^2."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    if n == 0:
        return [0.0, 0.0, 0.0]
    delta = mean_b - mean_a
    return [n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n]


def std(m: list[float]) -> float:
    """Population standard deviation of ``moments``; 0 for fewer than one value."""
    return math.sqrt(m[2] / m[0]) if m[0] else 0.0


def sketch(values: np.ndarray, alpha: float) -> dict[str, Any]:
    """A quantile sketch of the finite values."""
    finite = values[np.isfinite(values)]
    log_gamma = math.log1p(2 * alpha / (1 - alpha))
    out: dict[str, Any] = {"alpha": alpha, "count": int(finite.size), "zero": 0, "pos": [], "neg": []}
    if finite.size == 0:
        out["min"] = out["max"] = None
        return out
    out["min"], out["max"] = float(finite.min()), float(finite.max())
    small = np.abs(finite) < ZERO
    out["zero"] = int(small.sum())
    for sign, key in ((1.0, "pos"), (-1.0, "neg")):
        side = finite[~small & (np.sign(finite) == sign)]
        if side.size:
            buckets = np.ceil(np.log(np.abs(side)) / log_gamma).astype(np.int64)
            keys, counts = np.unique(buckets, return_counts=True)
            out[key] = [[int(k), int(c)] for k, c in zip(keys, counts)]
    return out


def merge_sketches(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The sketch of the union of the values behind ``a`` and ``b`` (they must share ``alpha``)."""
    if a["alpha"] != b["alpha"]:
        raise ValueError(f"cannot merge sketches of alpha {a['alpha']} and {b['alpha']}")
    out: dict[str, Any] = {"alpha": a["alpha"], "count": a["count"] + b["count"]}
    out["zero"] = a["zero"] + b["zero"]
    for key in ("pos", "neg"):
        buckets: dict[int, int] = {}
        for k, c in [*a[key], *b[key]]:
            buckets[k] = buckets.get(k, 0) + c
        out[key] = [[k, buckets[k]] for k in sorted(buckets)]
    lows = [s["min"] for s in (a, b) if s["min"] is not None]
    highs = [s["max"] for s in (a, b) if s["max"] is not None]
    out["min"] = min(lows) if lows else None
    out["max"] = max(highs) if highs else None
    return out


def quantile(s: dict[str, Any], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a sketch, within its error bound; None for an empty sketch."""
    if s["count"] == 0:
        return None
    if q <= 0.0:
        return s["min"]
    if q >= 1.0:
        return s["max"]
    gamma = (1 + s["alpha"]) / (1 - s["alpha"])
    rank = math.floor(q * (s["count"] - 1))
    # Walk the buckets in value order: most negative first, then zero, then positives.
    ordered = [(-_representative(k, gamma), c) for k, c in reversed(s["neg"])]
    ordered.append((0.0, s["zero"]))
    ordered += [(_representative(k, gamma), c) for k, c in s["pos"]]
    seen = 0
    for value, count in ordered:
        seen += count
        if seen > rank:
            return min(max(value, s["min"]), s["max"])
    return s["max"]


def _representative(key: int, gamma: float) -> float:
    return 2.0 * gamma**key / (gamma + 1.0)
