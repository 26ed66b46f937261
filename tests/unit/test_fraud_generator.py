"""The synthetic fraud generator: schema, label model, bad records, formats, determinism, argument checks."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from rayml.datasets.fraud import CATEGORIES, fraud_probability, generate_fraud
from rayml.errors import RaymlError

# Written out here, not imported, so a change to the generator's schema has to change this test too.
EXPECTED_SCHEMA = pa.schema([
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
COLUMNS = EXPECTED_SCHEMA.names
NUMERIC = {"amount", "user_txn_count_24h", "user_avg_amount_30d", "seconds_since_last_txn",
           "distance_from_home_km", "is_fraud", "fraud_probability"}
NON_NEGATIVE = {"user_txn_count_24h", "distance_from_home_km", "seconds_since_last_txn"}
KINDS = ("wrong_type", "null", "out_of_range", "unknown_category", "missing_column")


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Exact ROC-AUC from ranks (Mann-Whitney U), ties given their average rank."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    positive = y == 1
    n_pos = int(positive.sum())
    n_neg = len(y) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def problems(record: dict[str, Any]) -> list[str]:
    """Every defect of one record, as ``kind:column``; values may be typed or text (CSV)."""
    found = [f"missing_column:{c}" for c in COLUMNS if c not in record]
    for column, value in record.items():
        if value is None or value == "":
            found.append(f"null:{column}")
        elif column in NUMERIC:
            try:
                number = float(value)
            except (TypeError, ValueError):
                found.append(f"wrong_type:{column}")
                continue
            if column == "amount" and not 0.0 < number <= 50_000.0:
                found.append(f"out_of_range:{column}")
            if column in NON_NEGATIVE and number < 0:
                found.append(f"out_of_range:{column}")
        elif column == "event_time" and isinstance(value, str):
            try:
                dt.datetime.fromisoformat(value)
            except ValueError:
                found.append(f"wrong_type:{column}")
        elif column in CATEGORIES and value not in CATEGORIES[column]:
            found.append(f"unknown_category:{column}")
    return found


def read_records(root: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every record of a generated data set, read file by file with plain pyarrow/pandas/json."""
    records: list[dict[str, Any]] = []
    for name in summary["files"]:
        path = root / name
        if summary["format"] == "parquet":
            records.extend(pq.read_table(path).to_pylist())
        elif summary["format"] == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            records.extend(frame.to_dict(orient="records"))
        else:
            with path.open() as lines:
                records.extend(json.loads(line) for line in lines)
    return records


def test_roc_auc_helper() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("clean") / "fraud"
    return root, generate_fraud(50_000, root, seed=3, rows_per_file=20_000)


def test_label_model_positive_rate_and_auc(clean: tuple[Path, dict[str, Any]]) -> None:
    root, summary = clean
    table = pads.dataset(root, format="parquet", partitioning="hive").to_table()
    y = table["is_fraud"].to_numpy()
    p = table["fraud_probability"].to_numpy()
    assert len(y) == summary["rows"] == summary["good_rows"] == 50_000
    assert 0.01 <= y.mean() <= 0.02
    assert summary["positive_rate"] == pytest.approx(y.mean())
    assert 0.85 <= roc_auc(y, p) <= 0.97
    # The public function is the model that labelled the data.
    frame = table.drop_columns(["event_date"]).to_pandas()
    np.testing.assert_allclose(fraud_probability(frame), p, rtol=1e-12)


def test_good_parquet_schema_and_values(clean: tuple[Path, dict[str, Any]]) -> None:
    root, summary = clean
    assert (root / "_generator.json").is_file()
    assert json.loads((root / "_generator.json").read_text()) == summary
    ids: list[str] = []
    users: set[str] = set()
    for name in summary["files"]:
        folder, file = name.split("/")
        assert folder.startswith("event_date=") and file.startswith("part-") and file.endswith(".parquet")
        table = pq.read_table(root / name, partitioning=None)
        assert table.schema.remove_metadata() == EXPECTED_SCHEMA
        frame = table.to_pandas()
        assert (frame["event_time"].dt.strftime("%Y-%m-%d") == folder.removeprefix("event_date=")).all()
        assert frame["event_time"].min() >= pd.Timestamp("2026-01-01", tz="UTC")
        assert frame["event_time"].max() < pd.Timestamp("2026-01-31", tz="UTC")
        assert ((frame["amount"] > 0) & (frame["amount"] <= 50_000)).all()
        assert (frame["user_avg_amount_30d"] > 0).all()
        for column in ("user_txn_count_24h", "seconds_since_last_txn", "distance_from_home_km"):
            assert (frame[column] >= 0).all()
        assert set(frame["is_fraud"].unique()) <= {0, 1}
        for column, allowed in CATEGORIES.items():
            assert set(frame[column].unique()) <= set(allowed)
        ids.extend(frame["transaction_id"])
        users.update(frame["user_id"])
    assert sorted(ids) == [f"tx-{i:012d}" for i in range(50_000)]
    assert len(users) >= 50 and all(u.startswith("u-") for u in users)


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = {"seed": 11, "bad_fraction": 0.05, "rows_per_file": 700}
    first = generate_fraud(2_000, tmp_path / "a", **kwargs)
    second = generate_fraud(2_000, tmp_path / "b", **kwargs)
    other = generate_fraud(2_000, tmp_path / "c", **{**kwargs, "seed": 12})
    assert first == second
    for name in [*first["files"], "_generator.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert other["bad_ids"] != first["bad_ids"]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_bad_records_each_have_exactly_one_defect(tmp_path: Path, fmt: str) -> None:
    rows = 3_000
    summary = generate_fraud(rows, tmp_path / fmt, seed=5, bad_fraction=0.1, fmt=fmt, rows_per_file=1_000)
    assert summary["bad_rows"] == 300 and summary["good_rows"] == 2_700 and summary["rows"] == rows
    assert sum(summary["bad_by_kind"].values()) == summary["bad_rows"]
    assert set(summary["bad_by_kind"]) == set(KINDS)
    assert max(summary["bad_by_kind"].values()) - min(summary["bad_by_kind"].values()) <= 1

    records = read_records(tmp_path / fmt, summary)
    ids = [r["transaction_id"] for r in records]
    assert len(records) == rows and len(set(ids)) == rows
    assert sorted(ids) == [f"tx-{i:012d}" for i in range(rows)]
    bad_ids = set(summary["bad_ids"])
    assert len(bad_ids) == 300 and summary["bad_ids"] == sorted(bad_ids)
    by_kind = dict.fromkeys(KINDS, 0)
    for record in records:
        found = problems(record)
        if record["transaction_id"] in bad_ids:
            assert len(found) == 1, (record, found)
            by_kind[found[0].split(":")[0]] += 1
            assert record["is_fraud"] is not None and record["fraud_probability"] is not None
        else:
            assert found == [], (record, found)
    assert by_kind == summary["bad_by_kind"]


def test_parquet_bad_files(tmp_path: Path) -> None:
    summary = generate_fraud(2_000, tmp_path / "p", seed=1, bad_fraction=0.2, rows_per_file=1_000)
    dropped = set()
    for name in summary["files"]:
        schema = pq.read_schema(tmp_path / "p" / name)
        stem = name.split("/")[1]
        if stem.startswith("part-bad-wrong_type-"):
            assert schema.names == COLUMNS and all(t == pa.string() for t in schema.types)
        elif stem.startswith("part-bad-missing_column-"):
            lacking = set(COLUMNS) - set(schema.names)
            assert len(lacking) == 1 and len(schema.names) == len(COLUMNS) - 1
            dropped |= lacking
        else:
            assert schema.remove_metadata() == EXPECTED_SCHEMA
    assert dropped == {"amount", "country", "channel", "event_time"}


def test_text_formats_read_back_with_standard_readers(tmp_path: Path) -> None:
    generate_fraud(1_500, tmp_path / "csv", seed=2, fmt="csv", rows_per_file=1_000)
    table = pads.dataset(tmp_path / "csv", format="csv").to_table()
    assert table.num_rows == 1_500 and table.column_names == COLUMNS
    assert pa.types.is_timestamp(table.schema.field("event_time").type)
    assert table.schema.field("event_time").type.tz == "UTC"
    assert table.schema.field("amount").type == pa.float64()
    assert pacsv.read_csv(tmp_path / "csv" / "part-00000.csv").num_rows == 1_000

    summary = generate_fraud(1_500, tmp_path / "jsonl", seed=2, fmt="jsonl", rows_per_file=1_000)
    frame = pd.concat([pd.read_json(tmp_path / "jsonl" / f, lines=True) for f in summary["files"]])
    assert len(frame) == 1_500 and list(frame.columns) == COLUMNS
    assert frame["amount"].dtype == np.float64 and frame["user_txn_count_24h"].dtype == np.int64


def test_small_and_all_bad_edge_cases(tmp_path: Path) -> None:
    one = generate_fraud(1, tmp_path / "one")
    assert one["rows"] == 1 and one["bad_rows"] == 0 and len(one["files"]) == 1
    mostly_bad = generate_fraud(10, tmp_path / "bad", bad_fraction=0.99, fmt="csv")
    assert mostly_bad["bad_rows"] == 10 and mostly_bad["good_rows"] == 0
    assert len(read_records(tmp_path / "bad", mostly_bad)) == 10


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"rows": 0}, "rows"),
        ({"rows": 2.5}, "rows"),
        ({"rows": True}, "rows"),
        ({"bad_fraction": 1.0}, "bad_fraction"),
        ({"bad_fraction": -0.1}, "bad_fraction"),
        ({"bad_fraction": float("nan")}, "bad_fraction"),
        ({"fmt": "xml"}, "fmt"),
        ({"rows_per_file": 0}, "rows_per_file"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict[str, Any], argument: str) -> None:
    args = {"rows": 10, **kwargs}
    with pytest.raises(RaymlError, match=f"{argument} must be"):
        generate_fraud(args.pop("rows"), tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_refuses_non_empty_output_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    generate_fraud(10, tmp_path / "empty")
    with pytest.raises(RaymlError, match="not empty"):
        generate_fraud(10, tmp_path / "empty")


def test_fraud_probability_names_missing_columns() -> None:
    with pytest.raises(RaymlError, match="amount"):
        fraud_probability(pd.DataFrame({"channel": ["pos"]}))
