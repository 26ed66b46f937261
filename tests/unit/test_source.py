"""Unit tests for the pure parts of rayml.source: file listing and validated batches per file (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayml.errors import DataValidationError
from rayml.source import iter_raw_batches, list_files, validated_batches
from rayml.validate import ERROR, RAW, SOURCE_FILE, SOURCE_ROW, ColumnSpec, output_schema

COLUMNS = [
    ColumnSpec(name="id", type="int"),
    ColumnSpec(name="amount", type="float", min=0.0),
    ColumnSpec(name="kind", type="string"),
]


def read_all(path: Path, fmt: str, batch_rows: int = 1000, columns=COLUMNS) -> pa.Table:
    batches = list(validated_batches(str(path), fmt, batch_rows, columns))
    for b in batches:
        assert b.schema == output_schema(columns)
        assert b.num_rows <= batch_rows
    return pa.concat_tables(batches) if batches else output_schema(columns).empty_table()


def by_row(table: pa.Table) -> dict[int, dict]:
    return {r[SOURCE_ROW]: r for r in table.to_pylist()}


def bad_rows(table: pa.Table) -> list[int]:
    return sorted(r[SOURCE_ROW] for r in table.to_pylist() if r[ERROR] is not None)


# ---------------------------------------------------------------- list_files


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


def test_list_files_skips_metadata_names_and_other_formats(tmp_path):
    for rel in ["b.parquet", "a.parquet", "_SUCCESS", "_common_metadata.parquet", ".a.parquet.crc",
                ".hidden.parquet", "notes.txt", "sub/c.parq", "sub/_tmp/x.parquet", ".staging/y.parquet",
                "z/d.parquet"]:
        _touch(tmp_path / rel)
    found = list_files(str(tmp_path), "parquet")
    assert [str(Path(f).relative_to(tmp_path)) for f in found] == ["a.parquet", "b.parquet", "sub/c.parq",
                                                                   "z/d.parquet"]


def test_list_files_by_format(tmp_path):
    for rel in ["a.csv", "b.jsonl", "c.json", "d.ndjson", "e.parquet"]:
        _touch(tmp_path / rel)
    assert [Path(f).name for f in list_files(str(tmp_path), "csv")] == ["a.csv"]
    assert [Path(f).name for f in list_files(str(tmp_path), "jsonl")] == ["b.jsonl", "c.json", "d.ndjson"]


def test_list_files_of_a_single_file(tmp_path):
    path = tmp_path / "data.csv"
    _touch(path)
    assert list_files(str(path), "csv") == [str(path)]


def test_list_files_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataValidationError) as info:
        list_files(str(missing), "parquet")
    assert repr(str(missing)) in str(info.value)
    assert "does not exist" in str(info.value)
    assert "source.path" in str(info.value)


def test_list_files_without_matching_files_is_a_clear_error(tmp_path):
    _touch(tmp_path / "data.csv")
    _touch(tmp_path / "_SUCCESS")
    with pytest.raises(DataValidationError) as info:
        list_files(str(tmp_path), "parquet")
    message = str(info.value)
    assert "no parquet files" in message
    assert ".parquet" in message
    assert "source.path and source.format" in message


# ---------------------------------------------------------------- Parquet


def test_parquet_wrong_typed_column_quarantines_only_bad_rows(tmp_path):
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({
        "id": pa.array([1, 2, 3, 4], pa.int64()),
        "amount": ["1.5", "abc", "-2", "7"],  # strings, not doubles
        "kind": ["card", "cash", "card", None],
    }), path)
    out = read_all(path, "parquet")
    assert out.num_rows == 4
    assert out.column(SOURCE_FILE).to_pylist() == [str(path)] * 4
    rows = by_row(out)
    assert rows[0][ERROR] is None and rows[0]["amount"] == 1.5
    assert rows[1][ERROR] == "amount: got 'abc'; expected a number"
    assert rows[2][ERROR] == "amount: got '-2'; below the minimum 0.0"
    assert rows[3][ERROR] == "kind: null but required; supply a value or declare the column nullable"
    assert json.loads(rows[1][RAW]) == {"id": 1 + 1, "amount": "abc", "kind": "cash"}
    assert rows[3]["amount"] == 7.0


def test_parquet_missing_column_quarantines_every_row_with_position(tmp_path):
    path = tmp_path / "part-1.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "kind": ["a", "b", "c"]}), path)
    out = read_all(path, "parquet")
    assert out.column(SOURCE_ROW).to_pylist() == [0, 1, 2]
    assert out.column(SOURCE_FILE).to_pylist() == [str(path)] * 3
    assert out.column(ERROR).to_pylist() == ["amount: missing column; every record needs it"] * 3


def test_parquet_batches_are_bounded_and_positions_continuous(tmp_path):
    path = tmp_path / "big.parquet"
    n = 95
    pq.write_table(
        pa.table({"id": list(range(n)), "amount": [float(i) for i in range(n)], "kind": ["k"] * n}),
        path, row_group_size=13,
    )
    raw = list(iter_raw_batches(str(path), "parquet", 10))
    assert all(b.table.num_rows <= 10 for b in raw)
    assert [b.rows for b in raw] == [sum(x.table.num_rows for x in raw[:i]) for i in range(len(raw))]
    out = read_all(path, "parquet", batch_rows=10)
    assert out.column(SOURCE_ROW).to_pylist() == list(range(n))
    assert out.column("id").to_pylist() == list(range(n))
    assert out.column(ERROR).null_count == n


def test_unreadable_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataValidationError, match="not a readable Parquet file"):
        read_all(path, "parquet")


# ---------------------------------------------------------------- CSV


def test_csv_is_read_as_text_and_typed_by_validation(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,amount,kind\n1,2.5,card\n2,abc,cash\n3,-1,card\n")
    out = read_all(path, "csv")
    rows = by_row(out)
    assert rows[0] == {"id": 1, "amount": 2.5, "kind": "card", ERROR: None, SOURCE_FILE: str(path),
                       SOURCE_ROW: 0, RAW: None}
    assert rows[1][ERROR] == "amount: got 'abc'; expected a number"
    assert json.loads(rows[1][RAW]) == {"id": "2", "amount": "abc", "kind": "cash"}
    assert rows[2][ERROR] == "amount: got '-1'; below the minimum 0.0"


def test_csv_malformed_row_is_quarantined_and_the_read_goes_on(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,amount,kind\n1,2.5,card\n2,3.5,cash,EXTRA\n3,4.5,card\n4\n5,5.5,cash\n")
    out = read_all(path, "csv")
    assert out.num_rows == 5  # read = valid + quarantined
    assert out.column(SOURCE_FILE).to_pylist() == [str(path)] * 5
    valid = [r for r in out.to_pylist() if r[ERROR] is None]
    bad = [r for r in out.to_pylist() if r[ERROR] is not None]
    assert [r["id"] for r in valid] == [1, 3, 5]
    assert len(bad) == 2
    assert any("2,3.5,cash,EXTRA" in r[RAW] for r in bad)
    assert any(r[RAW] == "4" for r in bad)  # the malformed line's original text
    assert all(r[ERROR].startswith("malformed CSV row") for r in bad)
    assert sorted(out.column(SOURCE_ROW).to_pylist()) == [0, 1, 2, 3, 4]  # no duplicate positions


def test_csv_batches_are_bounded_and_positions_continuous(tmp_path):
    path = tmp_path / "data.csv"
    n = 47
    path.write_text("id,amount,kind\n" + "".join(f"{i},{i}.5,k\n" for i in range(n)))
    raw = list(iter_raw_batches(str(path), "csv", 10))
    assert [b.table.num_rows for b in raw] == [10, 10, 10, 10, 7]
    assert [int(b.rows[0]) for b in raw] == [0, 10, 20, 30, 40]
    assert all(b.table.schema.field(c).type == pa.string() for b in raw for c in ("id", "amount", "kind"))
    out = read_all(path, "csv", batch_rows=10)
    assert out.column(SOURCE_ROW).to_pylist() == list(range(n))
    assert out.column("id").to_pylist() == list(range(n))


def test_empty_csv_yields_nothing(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert list(validated_batches(str(path), "csv", 10, COLUMNS)) == []


# ---------------------------------------------------------------- JSON lines


JSONL = "\n".join([
    '{"id": 1, "amount": 2.5, "kind": "card"}',
    "this is not json",
    '{"id": 3, "kind": "cash"}',
    '{"id": 4, "amount": "lots", "kind": "card"}',
    '{"id": 5, "amount": true, "kind": ["a"]}',
    "[1, 2, 3]",
    '{"id": 7.0, "amount": 1e3, "kind": "cash", "extra": {"x": 1}}',
]) + "\n"


def test_jsonl_bad_lines_are_quarantined_with_exact_rows_and_original_text(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(JSONL)
    lines = JSONL.splitlines()
    out = read_all(path, "jsonl")
    assert out.num_rows == len(lines)
    assert out.column(SOURCE_FILE).to_pylist() == [str(path)] * len(lines)
    rows = by_row(out)
    assert bad_rows(out) == [1, 2, 3, 4, 5]
    for i in bad_rows(out):
        assert rows[i][RAW] == lines[i]  # the original line, byte for byte
    assert rows[0][ERROR] is None and rows[0]["amount"] == 2.5
    assert rows[6][ERROR] is None and (rows[6]["id"], rows[6]["amount"]) == (7, 1000.0)
    assert rows[1][ERROR].startswith("not valid JSON")
    assert rows[2][ERROR] == "amount: null but required; supply a value or declare the column nullable"
    assert rows[3][ERROR] == "amount: got 'lots'; expected a number"
    assert "amount: got 'true'; expected a number" in rows[4][ERROR]
    assert rows[4]["kind"] == '["a"]'  # a nested value is kept as its JSON text for a string column
    assert rows[5][ERROR].startswith("not a JSON object") or rows[5][ERROR].startswith("not valid JSON")


def test_jsonl_all_lines_unparseable(tmp_path):
    path = tmp_path / "junk.jsonl"
    path.write_text("nope\nstill nope\n")
    out = read_all(path, "jsonl")
    assert out.column(SOURCE_ROW).to_pylist() == [0, 1]
    assert out.column(RAW).to_pylist() == ["nope", "still nope"]
    assert all(e is not None for e in out.column(ERROR).to_pylist())


def test_jsonl_batches_are_bounded_and_positions_continuous(tmp_path):
    path = tmp_path / "events.jsonl"
    n = 23
    lines = [json.dumps({"id": i, "amount": i * 0.5, "kind": "k"}) for i in range(n)]
    lines[17] = '{"id": 17, "amount": -1, "kind": "k"}'
    path.write_text("\n".join(lines) + "\n")
    raw = list(iter_raw_batches(str(path), "jsonl", 5))
    assert [b.table.num_rows for b in raw] == [5, 5, 5, 5, 3]
    assert [int(b.rows[0]) for b in raw] == [0, 5, 10, 15, 20]
    assert [b.originals for b in raw] == [lines[i:i + 5] for i in range(0, n, 5)]
    out = read_all(path, "jsonl", batch_rows=5)
    assert out.column(SOURCE_ROW).to_pylist() == list(range(n))
    assert bad_rows(out) == [17]
    assert by_row(out)[17][RAW] == lines[17]


# ---------------------------------------------------------------- regressions (bugs found and fixed)


def test_csv_positions_are_exact_around_a_malformed_row(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,amount,kind\n1,2.5,card\n2,3.5,cash,EXTRA\n3,4.5,card\n")
    rows = by_row(read_all(path, "csv"))
    assert rows[0]["id"] == 1
    assert rows[1][ERROR] is not None and "2,3.5,cash,EXTRA" in rows[1][RAW]
    assert rows[2]["id"] == 3 and rows[2][ERROR] is None


def test_malformed_csv_row_is_quarantined_even_when_columns_are_nullable(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,kind\n1,card\n2,cash,EXTRA\n")
    columns = [
        ColumnSpec(name="id", type="int", nullable=True),
        ColumnSpec(name="kind", type="string", nullable=True),
    ]
    out = read_all(path, "csv", columns=columns)
    bad = [r for r in out.to_pylist() if r[ERROR] is not None]
    assert len(bad) == 1 and "2,cash,EXTRA" in bad[0][RAW]


def test_non_json_line_is_quarantined_even_when_columns_are_nullable(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"id": 1}\nnot json\n')
    columns = [ColumnSpec(name="id", type="int", nullable=True)]
    rows = by_row(read_all(path, "jsonl", columns=columns))
    assert rows[1][ERROR] is not None and rows[1][RAW] == "not json"


def test_csv_keeps_literal_na_text_in_string_columns(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,amount,kind\n1,2.5,NA\n2,2.5,null\n")
    out = read_all(path, "csv")
    assert out.column("kind").to_pylist() == ["NA", "null"]


def test_file_groups_cover_every_file_once_in_order_in_at_most_parallelism_runs():
    from rayml.source import file_groups

    files = [f"f{i}" for i in range(10)]
    assert file_groups(files, 4) == [files[0:3], files[3:6], files[6:8], files[8:10]]
    assert file_groups(files, 200) == [[f] for f in files]
    assert file_groups(files, 1) == [files]
    assert file_groups([], 8) == []
