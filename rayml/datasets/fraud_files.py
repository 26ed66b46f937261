"""Writers of the synthetic fraud data set: Parquet, CSV or JSON Lines files, bad records included.

``rayml.datasets.fraud`` simulates records one chunk at a time and hands each chunk, with its bad rows'
defects, to the ``Sink`` of the chosen format; the sink applies the defects and writes the files. ``Files``
names the files and keeps the list the generator's summary reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rayml.datasets.fraud_schema import SCHEMA, Defect


class Files:
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


class Sink(Protocol):
    """Writes one format: ``write`` takes one chunk of records (and its bad rows' defects) at a time."""

    def write(self, table: pa.Table, day: np.ndarray, defects: dict[int, Defect]) -> None: ...

    def close(self) -> None: ...


class ParquetSink:
    """Good records by event date; bad ones buffered per (date, kind, dropped column) into their own files.

    Buffering keeps bad files few: a (date, kind) buffer is written once the data has moved past its date,
    or when it holds a file's worth of rows.
    """

    def __init__(self, files: Files, rows_per_file: int) -> None:
        self.files = files
        self.rows_per_file = rows_per_file
        self._buffers: dict[tuple[int, str, str], list[pa.Table]] = {}

    def write(self, table: pa.Table, day: np.ndarray, defects: dict[int, Defect]) -> None:
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


class CsvSink:
    """One CSV per chunk, bad records in place; records missing a column go to files without that column."""

    def __init__(self, files: Files, rows_per_file: int) -> None:
        self.files = files
        self.rows_per_file = rows_per_file
        self._missing: dict[str, list[pa.Table]] = {}

    def write(self, table: pa.Table, day: np.ndarray, defects: dict[int, Defect]) -> None:
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


class JsonlSink:
    """One JSON Lines file per chunk; bad records replace their line in place."""

    def __init__(self, files: Files, rows_per_file: int) -> None:
        self.files = files

    def write(self, table: pa.Table, day: np.ndarray, defects: dict[int, Defect]) -> None:
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


def _apply(record: dict[str, Any], defect: Defect) -> dict[str, Any]:
    """A copy of ``record`` with ``defect`` applied."""
    broken = dict(record)
    if defect.kind == "missing_column":
        del broken[defect.column]
    else:
        broken[defect.column] = defect.value
    return broken
