"""Synthetic card transactions with a known fraud probability, optionally salted with bad records.

``generate_fraud`` writes a data set (Parquet, CSV or JSON Lines) plus ``_generator.json``, a summary that
says exactly which records are bad and why, so the validation stage can be tested against ground truth.
``fraud_probability`` is the true model that drew ``is_fraud``; it lets tests compute the best ROC-AUC any
model could reach on the data.

Generation is vectorized and streams: users are drawn once, then records are simulated, labelled and
written one file's worth at a time, so memory stays flat however many rows are asked for.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rayml.errors import RaymlError

CATEGORIES: dict[str, list[str]] = {
    "merchant_category": [
        "grocery", "restaurant", "fuel", "travel", "electronics",
        "fashion", "gaming", "crypto", "health", "utilities",
    ],
    "country": ["US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "MX", "IN", "JP", "CN", "NG", "RU", "CA"],
    "channel": ["pos", "online", "atm", "mobile"],
    "device": ["chip", "swipe", "contactless", "web", "app"],
}

SCHEMA = pa.schema([
    ("transaction_id", pa.string()),
    ("user_id", pa.string()),
    ("event_time", pa.timestamp("us", tz="UTC")),
    ("amount", pa.float64()),
    ("merchant_category", pa.string()),
    ("country", pa.string()),
    ("channel", pa.string()),
    ("device", pa.string()),
    ("user_txn_count_24h", pa.int64()),
    ("user_avg_amount_30d", pa.float64()),
    ("seconds_since_last_txn", pa.float64()),
    ("distance_from_home_km", pa.float64()),
    ("is_fraud", pa.int64()),
    ("fraud_probability", pa.float64()),
])

FORMATS = ("parquet", "csv", "jsonl")
BAD_KINDS = ("wrong_type", "null", "out_of_range", "unknown_category", "missing_column")
MAX_AMOUNT = 50_000.0
TARGET_POSITIVE_RATE = 0.015

_US_PER_DAY = 86_400 * 1_000_000
_START_US = int(np.datetime64("2026-01-01T00:00:00", "us").astype(np.int64))
_SPAN_US = 30 * _US_PER_DAY

# Where each kind of defect goes; rotating through these lists gives every field its share of defects.
_WRONG_TYPE = [
    ("amount", "twelve"), ("event_time", "not-a-date"), ("user_txn_count_24h", "a few"),
    ("distance_from_home_km", "far away"), ("seconds_since_last_txn", "just now"),
    ("user_avg_amount_30d", "forty-ish"),
]
_NULLABLE = [
    "user_id", "event_time", "amount", "merchant_category", "country", "channel", "device",
    "user_txn_count_24h", "user_avg_amount_30d", "seconds_since_last_txn", "distance_from_home_km",
]
_UNKNOWN = [
    ("merchant_category", "carrier-pigeon"), ("country", "ZZ"), ("channel", "carrier-pigeon"),
    ("device", "telepathy"),
]
_MISSING = ["amount", "country", "channel", "event_time"]

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
    files = _Files(root)
    sink: _Sink = {"parquet": _ParquetSink, "csv": _CsvSink, "jsonl": _JsonlSink}[fmt](files, rows_per_file)

    good_positives = 0
    for chunk, first in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - first)
        sim = _simulate(np.random.default_rng([seed, 3, chunk]), first, n, rows, users)
        table = _to_table(sim, users)
        # The j-th bad record (in id order) gets the j-th defect, whichever file it falls in.
        lo, hi = np.searchsorted(bad_positions, [first, first + n])
        defects: dict[int, _Defect] = {}
        for j in range(lo, hi):
            row = int(bad_positions[j]) - first
            defects[row] = _defect(j, table, row)
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


@dataclass(frozen=True)
class _Defect:
    """One bad record's single defect: ``value`` replaces ``column`` (or the column is dropped)."""

    kind: str
    column: str
    value: Any = None


def _defect(j: int, table: pa.Table, row: int) -> _Defect:
    """The defect of the ``j``-th bad record (in id order); kinds rotate, and fields rotate within a kind."""
    kind = BAD_KINDS[j % len(BAD_KINDS)]
    turn = j // len(BAD_KINDS)
    if kind == "wrong_type":
        return _Defect(kind, *_WRONG_TYPE[turn % len(_WRONG_TYPE)])
    if kind == "null":
        return _Defect(kind, _NULLABLE[turn % len(_NULLABLE)])
    if kind == "unknown_category":
        return _Defect(kind, *_UNKNOWN[turn % len(_UNKNOWN)])
    if kind == "missing_column":
        return _Defect(kind, _MISSING[turn % len(_MISSING)])
    amount = table["amount"][row].as_py()
    choice = turn % 5
    if choice < 3:
        return _Defect(kind, "amount", [-amount, 0.0, MAX_AMOUNT + amount][choice])
    if choice == 3:
        return _Defect(kind, "distance_from_home_km", -1.0 - table["distance_from_home_km"][row].as_py())
    return _Defect(kind, "user_txn_count_24h", -1 - table["user_txn_count_24h"][row].as_py())


def _apply(record: dict[str, Any], defect: _Defect) -> dict[str, Any]:
    """A copy of ``record`` with ``defect`` applied."""
    broken = dict(record)
    if defect.kind == "missing_column":
        del broken[defect.column]
    else:
        broken[defect.column] = defect.value
    return broken


class _Files:
    """Hands out numbered data-file paths under ``root`` and remembers them (relative, POSIX)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: list[str] = []

    def new(self, folder: str, stem: str, suffix: str) -> Path:
        """A new path; one counter over the whole data set keeps every file name unique."""
        name = f"{stem}-{len(self.names):05d}{suffix}"
        relative = f"{folder}/{name}" if folder else name
        self.names.append(relative)
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


class _Sink(Protocol):
    """Writes one format: ``write`` takes one chunk of records (and its bad rows' defects) at a time."""

    def write(self, table: pa.Table, day: np.ndarray, defects: dict[int, _Defect]) -> None: ...

    def close(self) -> None: ...


class _ParquetSink:
    """Good records by event date; bad ones buffered per (date, kind, dropped column) into their own files.

    Buffering keeps bad files few: a (date, kind) buffer is written once the data has moved past its date,
    or when it holds a file's worth of rows.
    """

    def __init__(self, files: _Files, rows_per_file: int) -> None:
        self.files = files
        self.rows_per_file = rows_per_file
        self._buffers: dict[tuple[int, str, str], list[pa.Table]] = {}

    def write(self, table: pa.Table, day: np.ndarray, defects: dict[int, _Defect]) -> None:
        good = np.ones(len(table), dtype=bool)
        good[list(defects)] = False
        for d in np.unique(day[good]):
            self._write_file(int(d), "part", table.filter(pa.array(good & (day == d))))

        rows = sorted(defects)
        bad = table.take(np.array(rows, dtype=np.int64))
        groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
        for row, typed, text in zip(rows, bad.to_pylist(), _render(bad).to_pylist()):
            defect = defects[row]
            dropped = defect.column if defect.kind == "missing_column" else ""
            record = text if defect.kind == "wrong_type" else typed
            groups.setdefault((int(day[row]), defect.kind, dropped), []).append(_apply(record, defect))
        for key, records in groups.items():
            table_of_bad = pa.Table.from_pylist(records, schema=_bad_schema(key[1], key[2]))
            self._buffers.setdefault(key, []).append(table_of_bad)
        self._flush(lambda key, size: key[0] < day.min() or size >= self.rows_per_file)

    def close(self) -> None:
        self._flush(lambda key, size: True)

    def _flush(self, ready: Callable[[tuple[int, str, str], int], bool]) -> None:
        for key in sorted(self._buffers):
            tables = self._buffers[key]
            if ready(key, sum(len(t) for t in tables)):
                self._write_file(key[0], f"part-bad-{key[1]}", pa.concat_tables(tables))
                del self._buffers[key]

    def _write_file(self, day: int, stem: str, table: pa.Table) -> None:
        date = np.datetime64("2026-01-01") + np.timedelta64(day, "D")
        pq.write_table(table, self.files.new(f"event_date={date}", stem, ".parquet"))


class _CsvSink:
    """One CSV per chunk, bad records in place; records missing a column go to files without that column."""

    def __init__(self, files: _Files, rows_per_file: int) -> None:
        self.files = files
        self.rows_per_file = rows_per_file
        self._missing: dict[str, list[pa.Table]] = {}

    def write(self, table: pa.Table, day: np.ndarray, defects: dict[int, _Defect]) -> None:
        text = _render(table)
        in_place: dict[str, list[tuple[int, Any]]] = {}
        dropped: dict[str, list[int]] = {}
        for row in sorted(defects):
            defect = defects[row]
            if defect.kind == "missing_column":
                dropped.setdefault(defect.column, []).append(row)
            else:
                value = None if defect.value is None else str(defect.value)
                in_place.setdefault(defect.column, []).append((row, value))
        for column, cells in in_place.items():
            mask = np.zeros(len(text), dtype=bool)
            mask[[row for row, _ in cells]] = True
            values = pa.array([value for _, value in cells], pa.string())
            patched = pc.replace_with_mask(text[column], pa.array(mask), values)
            text = text.set_column(text.schema.get_field_index(column), column, patched)
        for column, rows in dropped.items():
            self._missing.setdefault(column, []).append(text.take(np.array(rows)).drop_columns([column]))
        keep = np.ones(len(text), dtype=bool)
        keep[[row for rows in dropped.values() for row in rows]] = False
        if keep.any():
            self._write_file("part", text.filter(pa.array(keep)))
        self._flush(lambda size: size >= self.rows_per_file)

    def close(self) -> None:
        self._flush(lambda size: True)

    def _flush(self, ready: Callable[[int], bool]) -> None:
        for column in sorted(self._missing):
            tables = self._missing[column]
            if ready(sum(len(t) for t in tables)):
                self._write_file("part-bad-missing_column", pa.concat_tables(tables))
                del self._missing[column]

    def _write_file(self, stem: str, table: pa.Table) -> None:
        # No quoting: no value we write holds a comma, quote or newline (the writer refuses if one did).
        pacsv.write_csv(table, self.files.new("", stem, ".csv"), pacsv.WriteOptions(quoting_style="none"))


class _JsonlSink:
    """One JSON Lines file per chunk; bad records replace their line in place."""

    def __init__(self, files: _Files, rows_per_file: int) -> None:
        self.files = files

    def write(self, table: pa.Table, day: np.ndarray, defects: dict[int, _Defect]) -> None:
        text = _render(table)
        # Good lines are assembled by Arrow string kernels (no Python loop); no value we generate needs
        # JSON escaping. Bad lines, a few, go through json.dumps.
        parts: list[Any] = []
        for field, column in zip(table.schema, text.columns):
            parts.append(("{" if not parts else ",") + json.dumps(field.name) + ":")
            if pa.types.is_string(field.type) or pa.types.is_timestamp(field.type):
                column = pc.binary_join_element_wise('"', column, '"', "")
            parts.append(column)
        lines = pc.binary_join_element_wise(*parts, "}", "").to_pylist()
        rows = sorted(defects)
        bad = table.set_column(table.schema.get_field_index("event_time"), "event_time", text["event_time"])
        for row, record in zip(rows, bad.take(np.array(rows, dtype=np.int64)).to_pylist()):
            lines[row] = json.dumps(_apply(record, defects[row]), separators=(",", ":"))
        self.files.new("", "part", ".jsonl").write_text("\n".join(lines) + "\n")

    def close(self) -> None:
        """Nothing is buffered: every chunk is written whole."""


def _bad_schema(kind: str, dropped: str) -> pa.Schema:
    """Schema of a Parquet file of bad records: all text for wrong types, one column short for missing."""
    if kind == "wrong_type":
        return pa.schema([(f.name, pa.string()) for f in SCHEMA])
    if kind == "missing_column":
        return pa.schema([f for f in SCHEMA if f.name != dropped])
    return SCHEMA


def _render(table: pa.Table) -> pa.Table:
    """Every column as text that parses back: decimal numbers, digits, ISO-8601 times with offset."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        if pa.types.is_timestamp(field.type):
            columns.append(_iso(column))
        elif pa.types.is_floating(field.type):
            # Arrow writes 38.0 as "38"; keep a decimal point so the text reads as a float everywhere.
            text = pc.cast(column, pa.string())
            is_integral = pc.invert(pc.match_substring_regex(text, r"[.eEn]"))
            columns.append(pc.if_else(is_integral, pc.binary_join_element_wise(text, ".0", ""), text))
        else:
            columns.append(pc.cast(column, pa.string()))
    return pa.table(columns, names=table.column_names)


def _iso(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """UTC timestamps as ISO-8601 text with an explicit offset, e.g. 2026-01-01T00:00:00.000000+00:00."""
    return pc.strftime(column, format="%Y-%m-%dT%H:%M:%S+00:00")


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
