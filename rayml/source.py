"""Read records from Parquet, CSV or JSON-lines files and validate them as they are read, on Ray Data.

Each file is read in bounded batches by one Ray Data read task, which hands every batch to the pure
``validate.validate_batch``. Reading files ourselves (rather than ``ray.data.read_parquet``) is what lets a
file with a wrong-typed or missing column, or a line that is not JSON, turn into quarantined records with
their exact file and row instead of failing the read.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import Field

from rayml.config import StrictModel
from rayml.errors import DataValidationError
from rayml.validate import ColumnSpec, output_schema, validate_batch

if TYPE_CHECKING:
    import ray.data

SourceFormat = Literal["parquet", "csv", "jsonl"]
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "parquet": (".parquet", ".parq"),
    "csv": (".csv",),
    "jsonl": (".jsonl", ".json", ".ndjson"),
}


class SourceConfig(StrictModel):
    """Where the raw records are and how they are encoded."""

    path: str = Field(min_length=1, description="a file or a directory (searched recursively)")
    format: SourceFormat = Field("parquet", description="parquet, csv or jsonl")
    batch_rows: int = Field(65_536, ge=1, le=10_000_000, description="records per validated batch")


def list_files(path: str, fmt: SourceFormat) -> list[str]:
    """Data files under ``path`` in a stable order; names starting with ``_`` or ``.`` are metadata."""
    root = Path(path)
    if root.is_file():
        return [str(root)]
    if not root.is_dir():
        raise DataValidationError(f"source.path {path!r} does not exist; point it at a file or a directory")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        for name in sorted(filenames):
            if not name.startswith(("_", ".")) and name.endswith(_SUFFIXES[fmt]):
                found.append(os.path.join(dirpath, name))
    if not found:
        raise DataValidationError(
            f"no {fmt} files (suffix {' or '.join(_SUFFIXES[fmt])}) under {path!r}; "
            "check source.path and source.format"
        )
    return found


class RawBatch(NamedTuple):
    """Records of one file as read, before validation."""

    table: pa.Table  # columns as found in the file (any types)
    rows: int | np.ndarray  # source position of the first record, or of each record
    originals: list[str] | None  # the source text of each record, where the format has one
    problems: list[str | None] | None  # a reader-level reason that quarantines the record (e.g. not JSON)


def iter_raw_batches(path: str, fmt: SourceFormat, batch_rows: int) -> Iterator[RawBatch]:
    """Batches of at most ``batch_rows`` records of one file, never the whole file at once."""
    if fmt == "parquet":
        yield from _parquet_batches(path, batch_rows)
    elif fmt == "csv":
        yield from _csv_batches(path, batch_rows)
    else:
        yield from _jsonl_batches(path, batch_rows)


def validated_batches(path: str, fmt: SourceFormat, batch_rows: int, columns: list[ColumnSpec]) -> Iterator[pa.Table]:
    """Validated batches of one file, each with ``validate.output_schema(columns)``."""
    for batch in iter_raw_batches(path, fmt, batch_rows):
        yield validate_batch(batch.table, columns, path, batch.rows, batch.originals, batch.problems)


def read_validated(source: SourceConfig, columns: list[ColumnSpec], files: list[str] | None = None) -> ray.data.Dataset:
    """A Ray Dataset of every record under ``source`` (or of ``files``, already listed from it), typed and marked
    valid or not (see validate.py)."""
    import ray.data

    files = files if files is not None else list_files(source.path, source.format)
    return ray.data.read_datasource(
        _validating_datasource(files, source.format, source.batch_rows, columns)
    )


def _parquet_batches(path: str, batch_rows: int) -> Iterator[RawBatch]:
    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataValidationError(f"{path}: not a readable Parquet file ({exc}); remove or replace it") from exc
    first = 0
    for batch in reader.iter_batches(batch_size=batch_rows):
        yield RawBatch(pa.Table.from_batches([batch]), first, None, None)
        first += batch.num_rows


def _csv_batches(path: str, batch_rows: int) -> Iterator[RawBatch]:
    """CSV read as text. A row with the wrong number of fields is quarantined whole, at its own position.

    Positions are 0-based data-row indexes (line number - 2, the header being line 1), exact as long as no
    quoted field spans lines.
    """
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        return
    skipped: list[tuple[int, str]] = []  # (data-row index, text) of malformed rows, in file order

    def on_invalid(row: Any) -> str:
        index = row.number - 2 if row.number is not None else -1
        skipped.append((index, row.text))
        return "skip"

    # Every column is read as text, and only an empty field is null: one bad value becomes one quarantined
    # record instead of a failed read, and literal text such as "NA" stays text.
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=1 << 22, use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header}, null_values=[""], strings_can_be_null=True
        ),
    )
    good = 0  # good rows seen so far
    emitted = 0  # malformed rows already yielded
    for block in reader:
        table = pa.Table.from_batches([block])
        for start in range(0, table.num_rows, batch_rows):
            chunk = table.slice(start, batch_rows)
            # The parser reports a block's malformed rows before handing the block over, so every skipped
            # row before this chunk is known: shift each good row past the skipped rows at or before it.
            positions = np.arange(good, good + chunk.num_rows, dtype=np.int64)
            for index, _ in skipped:
                positions[positions >= index] += 1
            yield RawBatch(chunk, positions, None, None)
            good += chunk.num_rows
        pending = skipped[emitted:]
        if pending:
            yield _malformed_csv(header, pending)
            emitted = len(skipped)
    pending = skipped[emitted:]
    if pending:
        yield _malformed_csv(header, pending)


def _malformed_csv(header: list[str], rows: list[tuple[int, str]]) -> RawBatch:
    table = pa.table({name: pa.nulls(len(rows), pa.string()) for name in header})
    reason = f"malformed CSV row: expected {len(header)} comma-separated fields"
    return RawBatch(
        table, np.array([i for i, _ in rows], dtype=np.int64), [text for _, text in rows], [reason] * len(rows)
    )


def _jsonl_batches(path: str, batch_rows: int) -> Iterator[RawBatch]:
    """JSON lines; positions are 0-based line numbers (blank lines count but yield no record)."""
    lines: list[str] = []
    positions: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh):
            if not line.strip():
                continue
            lines.append(line.rstrip("\n"))
            positions.append(number)
            if len(lines) == batch_rows:
                yield _json_batch(lines, positions)
                lines, positions = [], []
    if lines:
        yield _json_batch(lines, positions)


def _json_batch(lines: list[str], positions: list[int]) -> RawBatch:
    records: list[Any] = []
    problems: list[str | None] = []
    for line in lines:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            record, problem = None, f"not valid JSON ({exc})"
        else:
            problem = None if isinstance(record, dict) else f"not a JSON object (got {type(record).__name__})"
        records.append(record)
        problems.append(problem)
    table = records_table(records)
    return RawBatch(table, np.array(positions, dtype=np.int64), lines, problems if any(problems) else None)


def records_table(records: list[Any]) -> pa.Table:
    """Decoded JSON records as a table of text columns, for ``validate_batch`` to type.

    Values are re-encoded as text (numbers in ``repr`` form, booleans as true/false, nested values as JSON) so
    that a column mixing types across records still forms one Arrow column; a non-object record is all null.
    """
    columns: dict[str, list[str | None]] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            continue
        for key, value in record.items():
            values = columns.setdefault(str(key), [None] * len(records))
            values[i] = _as_text(value)
    if not columns:
        return pa.table({"_unparsed": pa.nulls(len(records), pa.string())})
    return pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def _file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _validating_datasource(files: list[str], fmt: SourceFormat, batch_rows: int, columns: list[ColumnSpec]) -> Any:
    """A Ray Data datasource with one read task per file; each task yields validated batches.

    The class is defined here rather than at module level so importing rayml.source does not import Ray.
    """
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    schema = output_schema(columns)

    class ValidatingDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            sizes = [_file_size(f) for f in files]
            return sum(s for s in sizes if s is not None) or None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            tasks = []
            for path in files:
                meta = BlockMetadata(num_rows=None, size_bytes=_file_size(path), input_files=[path], exec_stats=None)
                read = functools.partial(validated_batches, path, fmt, batch_rows, columns)
                tasks.append(ReadTask(read, meta, schema=schema))
            return tasks

        def get_name(self) -> str:
            return f"Validated{fmt.capitalize()}"

    return ValidatingDatasource()
