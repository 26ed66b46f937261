"""What a record of the synthetic fraud data set looks like, and the one defect a bad record carries.

Shared by the generator (``rayml.datasets.fraud``), which draws the records and picks each bad record's
defect, and the writers (``rayml.datasets.fraud_files``), which apply the defects as they write files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

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


@dataclass(frozen=True)
class Defect:
    """One bad record's single defect: ``value`` replaces ``column`` (or the column is dropped)."""

    kind: str
    column: str
    value: Any = None


def pick_defect(j: int, table: pa.Table, row: int) -> Defect:
    """The defect of the ``j``-th bad record (in id order); kinds rotate, and fields rotate within a kind."""
    kind = BAD_KINDS[j % len(BAD_KINDS)]
    turn = j // len(BAD_KINDS)
    if kind == "wrong_type":
        return Defect(kind, *_WRONG_TYPE[turn % len(_WRONG_TYPE)])
    if kind == "null":
        return Defect(kind, _NULLABLE[turn % len(_NULLABLE)])
    if kind == "unknown_category":
        return Defect(kind, *_UNKNOWN[turn % len(_UNKNOWN)])
    if kind == "missing_column":
        return Defect(kind, _MISSING[turn % len(_MISSING)])
    amount = table["amount"][row].as_py()
    choice = turn % 5
    if choice < 3:
        return Defect(kind, "amount", [-amount, 0.0, MAX_AMOUNT + amount][choice])
    if choice == 3:
        return Defect(kind, "distance_from_home_km", -1.0 - table["distance_from_home_km"][row].as_py())
    return Defect(kind, "user_txn_count_24h", -1 - table["user_txn_count_24h"][row].as_py())
