"""Synthetic card transactions with a known fraud probability, optionally salted with bad records.

``generate_fraud`` writes a data set (Parquet, CSV or JSON Lines) plus ``_generator.json``, a summary that
says exactly which records are bad and why, so the validation stage can be tested against ground truth.
``fraud_probability`` is the true model that drew ``is_fraud``; it lets tests compute the best ROC-AUC any
model could reach on the data.

Generation is vectorized and streams: users are drawn once, then records are simulated, labelled and
written one file's worth at a time, so memory stays flat however many rows are asked for.

The record layout (``SCHEMA``, ``CATEGORIES``, ``BAD_KINDS``, ...) lives in ``fraud_schema`` and the file
writers in ``fraud_files``; the constants are imported here and stay part of this module's API.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayml.datasets.fraud_files import CsvSink, Files, JsonlSink, ParquetSink, Sink
from rayml.datasets.fraud_schema import (
    BAD_KINDS,
    CATEGORIES,
    FORMATS,
    MAX_AMOUNT,
    SCHEMA,
    Defect,
    pick_defect,
)
from rayml.errors import RaymlError

TARGET_POSITIVE_RATE = 0.015

_US_PER_DAY = 86_400 * 1_000_000
_START_US = int(np.datetime64("2026-01-01T00:00:00", "us").astype(np.int64))
_SPAN_US = 30 * _US_PER_DAY

# Shares of home countries, and rough country centroids (lat, lon) for cross-border distances.
_HOME_WEIGHTS = np.array([.25, .08, .08, .07, .05, .05, .03, .07, .05, .08, .05, .05, .03, .03, .03])
_CENTROIDS = np.array([
    (39.8, -98.6), (54.0, -2.0), (51.2, 10.4), (46.6, 2.2), (40.4, -3.7), (42.8, 12.6), (52.1, 5.3),
    (-10.8, -52.9), (23.6, -102.6), (21.0, 78.0), (36.2, 138.3), (35.9, 104.2), (9.1, 8.7),
    (61.5, 105.3), (56.1, -106.3),
])
# Category mix of ordinary spending vs. of card-compromise attacks, and each category's typical size.
_CATEGORY_P = np.array([.20, .15, .10, .05, .06, .10, .04, .02, .08, .20])
_CATEGORY_P_ATTACK = np.array([.05, .05, .03, .10, .25, .10, .15, .20, .02, .05])
_CATEGORY_SIZE = np.array([0.8, 0.7, 0.9, 3.0, 2.5, 1.3, 0.6, 2.0, 1.0, 1.2])
_CHANNEL_P = np.array([.55, .20, .07, .18])
_CHANNEL_P_ATTACK = np.array([.10, .50, .05, .35])
# Device given (attack, channel): pos reads chip/swipe/contactless, atm chip/swipe, online web, mobile app.
_DEVICE_P = np.array([
    [[.45, .15, .40, 0, 0], [0, 0, 0, 1, 0], [.80, .20, 0, 0, 0], [0, 0, 0, 0, 1]],
    [[.20, .60, .20, 0, 0], [0, 0, 0, 1, 0], [.30, .70, 0, 0, 0], [0, 0, 0, 0, 1]],
])


def generate_fraud(
    rows: int,
    out: str | Path,
    *,
    seed: int = 0,
    bad_fraction: float = 0.0,
    fmt: Literal["parquet", "csv", "jsonl"] = "parquet",
    rows_per_file: int = 50_000,
) -> dict[str, Any]:
    """Write ``rows`` synthetic card transactions under the new directory ``out`` and return a summary.

    ``round(rows * bad_fraction)`` of the records are bad, each with exactly one defect; the kinds rotate
    through ``BAD_KINDS``. Parquet goes in hive-style ``event_date=YYYY-MM-DD/`` folders, with bad records
    in their own ``part-bad-<kind>-NNNNN.parquet`` files; CSV and JSON Lines interleave bad records with
    good ones (CSV rows missing a column go in their own files, whose header lacks it). The summary is
    also written to ``out/_generator.json``; files whose names start with ``_`` are metadata, not data.
    ``positive_rate`` is the share of good records with ``is_fraud == 1``. The same arguments always
    write the same records (and, with the same pyarrow version, the same bytes).
    """
    _check_args(rows, seed, bad_fraction, fmt, rows_per_file)
    rows, seed, rows_per_file = int(rows), int(seed), int(rows_per_file)
    root = Path(out)
    _prepare_dir(root)
    n_bad = round(rows * bad_fraction)
    users = _make_users(np.random.default_rng([seed, 1]), max(50, rows // 20))
    bad_positions = np.sort(np.random.default_rng([seed, 2]).choice(rows, size=n_bad, replace=False))
    files = Files(root)
    sink: Sink = {"parquet": ParquetSink, "csv": CsvSink, "jsonl": JsonlSink}[fmt](files, rows_per_file)

    good_positives = 0
    for chunk, first in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - first)
        sim = _simulate(np.random.default_rng([seed, 3, chunk]), first, n, rows, users)
        table = _to_table(sim, users)
        # The j-th bad record (in id order) gets the j-th defect, whichever file it falls in.
        lo, hi = np.searchsorted(bad_positions, [first, first + n])
        defects: dict[int, Defect] = {}
        for j in range(lo, hi):
            row = int(bad_positions[j]) - first
            defects[row] = pick_defect(j, table, row)
        is_good = np.ones(n, dtype=bool)
        is_good[list(defects)] = False
        good_positives += int(sim["is_fraud"][is_good].sum())
        sink.write(table, sim["day"], defects)
    sink.close()

    k = len(BAD_KINDS)
    bad_by_kind = {kind: n_bad // k + (i < n_bad % k) for i, kind in enumerate(BAD_KINDS)}
    summary: dict[str, Any] = {
        "rows": rows,
        "good_rows": rows - n_bad,
        "bad_rows": n_bad,
        "bad_by_kind": bad_by_kind,
        "bad_ids": [_transaction_id(int(p)) for p in bad_positions],
        "positive_rate": good_positives / (rows - n_bad) if rows > n_bad else 0.0,
        "seed": seed,
        "format": fmt,
        "files": sorted(files.names),
    }
    # Written last, so its presence says the data set is complete.
    (root / "_generator.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def fraud_probability(table: pd.DataFrame) -> np.ndarray:
    """The true probability that each transaction in ``table`` is fraud (the model that drew ``is_fraud``).

    Needs the feature columns of a generated data set; ``event_time`` may be datetimes or ISO strings.
    """
    return _sigmoid(_base_logit() + _risk_logit(table))


def _risk_logit(table: pd.DataFrame) -> np.ndarray:
    """Log-odds of fraud up to the calibrated constant: a sum of non-linear interactions of the features."""
    needed = ["event_time", "amount", "merchant_category", "channel", "device", "user_txn_count_24h",
              "user_avg_amount_30d", "seconds_since_last_txn", "distance_from_home_km"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise RaymlError(f"fraud_probability needs columns {missing}; pass a table with every feature column")
    amount = table["amount"].to_numpy(dtype=np.float64)
    usual = table["user_avg_amount_30d"].to_numpy(dtype=np.float64)
    ratio = np.log(np.maximum(amount, 0.01) / np.maximum(usual, 0.01))
    card_absent = table["channel"].isin(["online", "mobile"]).to_numpy()
    # Only spending well above the user's usual matters, and far more so when no card is present.
    logit = np.logaddexp(0.0, 1.6 * (ratio - 1.0)) * np.where(card_absent, 1.2, 0.4)

    hour = pd.to_datetime(table["event_time"], utc=True).dt.hour.to_numpy()
    risky = table["merchant_category"].isin(["crypto", "gaming", "electronics"]).to_numpy()
    logit += 0.6 * risky + 2.0 * (risky & (hour < 6))

    # A purchase thousands of km from home is abroad; abroad and card-absent together is the classic theft.
    far = _sigmoid((table["distance_from_home_km"].to_numpy(dtype=np.float64) - 1500.0) / 300.0)
    logit += 1.2 * far + 1.2 * far * card_absent

    count = np.maximum(table["user_txn_count_24h"].to_numpy(dtype=np.float64), 0.0)
    gap = np.maximum(table["seconds_since_last_txn"].to_numpy(dtype=np.float64), 0.0)
    logit += 1.3 * np.log1p(count) * np.exp(-gap / 300.0)

    logit -= 1.4 * table["device"].isin(["chip", "contactless"]).to_numpy()
    return logit


@functools.lru_cache(maxsize=1)
def _base_logit() -> float:
    """The constant that puts the positive rate at ``TARGET_POSITIVE_RATE``, found once by bisection.

    It is fitted on a fixed sample with a fixed seed, so it is the same constant for every data set.
    """
    n = 200_000
    users = _make_users(np.random.default_rng([20260101, 1]), 10_000)
    sim = _simulate(np.random.default_rng([20260101, 3]), 0, n, n, users, label=False)
    risk = _risk_logit(_feature_frame(sim))
    lo, hi = -30.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(mid + risk).mean() < TARGET_POSITIVE_RATE:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class _Users:
    """The user pool: who they are, where they live, how much and how often they spend."""

    ids: pa.Array
    home: np.ndarray
    typical_amount: np.ndarray
    daily_rate: np.ndarray
    travel: np.ndarray
    pick_cdf: np.ndarray


def _make_users(rng: np.random.Generator, n: int) -> _Users:
    """Draw ``n`` users; busier users are picked more often."""
    width = max(7, len(str(n - 1)))
    home = _draw(rng, _HOME_WEIGHTS, n)
    typical = np.exp(rng.normal(math.log(40.0), 0.8, n))
    rate = np.exp(rng.normal(math.log(0.8), 0.9, n))
    travel = rng.beta(1.0, 25.0, n)
    cdf = np.cumsum(rate) / rate.sum()
    return _Users(_ids("u-", np.arange(n), width), home, typical, rate, travel, cdf)


def _simulate(
    rng: np.random.Generator, first: int, n: int, total: int, users: _Users, label: bool = True
) -> dict[str, np.ndarray]:
    """Simulate records ``first .. first+n-1`` of ``total``; categoricals come back as integer codes.

    A small share of records are card-compromise attacks: they draw their features from a riskier mix
    (card-absent, risky categories, abroad, bursts, big amounts). The attack flag itself is not kept, so
    the label depends on the features only, through ``fraud_probability``.
    """
    index = np.arange(first, first + n)
    # Spread evenly over 30 days with a few minutes of jitter: increasing, but not strictly.
    t = _START_US + ((index + rng.random(n)) / total * _SPAN_US).astype(np.int64)
    t += rng.normal(0.0, 300e6, n).astype(np.int64)
    # Reflect jitter that crosses an end of the window back inside, instead of piling records on the edge.
    t = np.where(t < _START_US, 2 * _START_US - t, t)
    t = np.where(t >= _START_US + _SPAN_US, 2 * (_START_US + _SPAN_US - 1) - t, t)
    night = (t - _START_US) // 3_600_000_000 % 24 < 6
    attack = rng.random(n) < np.where(night, 0.05, 0.012)
    user = np.minimum(np.searchsorted(users.pick_cdf, rng.random(n), side="right"), len(users.home) - 1)

    category = np.where(attack, _draw(rng, _CATEGORY_P_ATTACK, n), _draw(rng, _CATEGORY_P, n))
    channel = np.where(attack, _draw(rng, _CHANNEL_P_ATTACK, n), _draw(rng, _CHANNEL_P, n))
    device_cdf = np.cumsum(_DEVICE_P, axis=2)[attack.astype(int), channel]
    device = np.minimum((rng.random(n)[:, None] >= device_cdf).sum(axis=1), device_cdf.shape[1] - 1)

    home = users.home[user]
    n_countries = len(CATEGORIES["country"])
    abroad = rng.random(n) < np.where(attack, 0.45, users.travel[user])
    country = np.where(abroad, (home + 1 + rng.integers(0, n_countries - 1, n)) % n_countries, home)
    local = np.exp(rng.normal(math.log(6.0), 1.3, n))
    distance = np.where(abroad, _km_between(home, country) + 5 * local, local)

    burst = rng.random(n) < np.where(attack, 0.35, 0.02)
    rate = users.daily_rate[user]
    count = rng.poisson(rate) + burst * (3 + rng.poisson(5.0, n))
    gap = np.where(burst, rng.exponential(90.0, n), rng.exponential(86_400.0 / rate))

    typical = users.typical_amount[user]
    amount = typical * _CATEGORY_SIZE[category] * np.exp(rng.normal(0.0, 0.6, n))
    amount *= np.where(attack, np.exp(rng.normal(0.9, 0.7, n)), 1.0)
    usual = typical * np.exp(rng.normal(0.0, 0.12, n))

    sim = {
        "index": index, "user": user, "t": t, "day": (t - _START_US) // _US_PER_DAY,
        "amount": np.clip(np.round(amount, 2), 0.01, MAX_AMOUNT),
        "merchant_category": category, "country": country, "channel": channel, "device": device,
        "user_txn_count_24h": count.astype(np.int64),
        "user_avg_amount_30d": np.maximum(np.round(usual, 2), 0.01),
        "seconds_since_last_txn": np.round(np.minimum(gap, 30 * 86_400.0), 3),
        "distance_from_home_km": np.round(distance, 1),
    }
    if label:
        sim["fraud_probability"] = fraud_probability(_feature_frame(sim))
        sim["is_fraud"] = (rng.random(n) < sim["fraud_probability"]).astype(np.int64)
    return sim


def _feature_frame(sim: dict[str, np.ndarray]) -> pd.DataFrame:
    """The simulated features as a DataFrame, categoricals as pandas Categoricals (cheap to build)."""
    frame = pd.DataFrame({"event_time": pd.Series(sim["t"].astype("datetime64[us]")).dt.tz_localize("UTC")})
    for name in ("amount", "user_txn_count_24h", "user_avg_amount_30d", "seconds_since_last_txn",
                 "distance_from_home_km"):
        frame[name] = sim[name]
    for name, values in CATEGORIES.items():
        frame[name] = pd.Categorical.from_codes(sim[name], values)
    return frame


def _to_table(sim: dict[str, np.ndarray], users: _Users) -> pa.Table:
    """The simulated records as an Arrow table with exactly ``SCHEMA``."""
    columns: dict[str, pa.Array] = {
        "transaction_id": _ids("tx-", sim["index"], 12),
        "user_id": users.ids.take(pa.array(sim["user"])),
        "event_time": pa.array(sim["t"], type=pa.timestamp("us", tz="UTC")),
    }
    for field in SCHEMA:
        if field.name in columns:
            continue
        if field.name in CATEGORIES:
            columns[field.name] = pa.array(CATEGORIES[field.name]).take(pa.array(sim[field.name]))
        else:
            columns[field.name] = pa.array(sim[field.name], type=field.type)
    return pa.table(columns, schema=SCHEMA)



def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Zero-padded ids such as ``tx-000000000123``, built in Arrow (no Python loop)."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _transaction_id(number: int) -> str:
    return f"tx-{number:012d}"


def _draw(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    """``n`` category codes drawn with probabilities ``p``."""
    cdf = np.cumsum(p) / np.sum(p)
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(p) - 1)


def _km_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between the centroids of country codes ``a`` and ``b``."""
    lat1, lon1 = np.radians(_CENTROIDS[a]).T
    lat2, lon2 = np.radians(_CENTROIDS[b]).T
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.minimum(h, 1.0)))


def _sigmoid(x: np.ndarray | float) -> Any:
    # tanh form: no overflow warnings for large |x|.
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def _check_args(rows: Any, seed: Any, bad_fraction: Any, fmt: Any, rows_per_file: Any) -> None:
    """Raise one RaymlError listing every bad argument and how to fix it."""
    problems = []
    if not _is_int(rows) or rows < 1:
        problems.append(f"rows must be an integer >= 1, got {rows!r}; pass e.g. rows=100_000")
    if not _is_int(seed) or seed < 0:
        problems.append(f"seed must be an integer >= 0, got {seed!r}; pass e.g. seed=0")
    if (isinstance(bad_fraction, bool) or not isinstance(bad_fraction, (int, float))
            or not 0.0 <= bad_fraction < 1.0):
        problems.append(
            f"bad_fraction must be a number in [0, 1), got {bad_fraction!r}; pass e.g. bad_fraction=0.01"
        )
    if fmt not in FORMATS:
        problems.append(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}; pass e.g. fmt='parquet'")
    if not _is_int(rows_per_file) or rows_per_file < 1:
        problems.append(
            f"rows_per_file must be an integer >= 1, got {rows_per_file!r}; pass e.g. rows_per_file=50_000"
        )
    if problems:
        raise RaymlError("generate_fraud: " + "; ".join(problems))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _prepare_dir(root: Path) -> None:
    """Create ``root``; refuse to write into an existing file or a non-empty directory."""
    if root.exists() and not root.is_dir():
        raise RaymlError(f"output path {str(root)!r} is a file; pass a new directory path as out")
    if root.is_dir() and any(root.iterdir()):
        raise RaymlError(
            f"output directory {str(root)!r} already exists and is not empty; pass a new path as out, "
            "or delete the old data set first"
        )
    root.mkdir(parents=True, exist_ok=True)
