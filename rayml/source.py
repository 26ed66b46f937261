"""Read records from Parquet, CSV or JSON-lines files, or a directory of images, and validate them as they are
read, on Ray Data. Paths are local or ``s3://`` (``rayml.storage``).

Each file is read in bounded batches by one Ray Data read task, which hands every batch to the pure
``validate.validate_batch``. Reading files ourselves (rather than ``ray.data.read_parquet``) is what lets a
file with a wrong-typed or missing column, or a line that is not JSON, turn into quarantined records with
their exact file and row instead of failing the read.

Images (``format: images``) are ``<root>/<label>/<name>.png|jpg|jpeg``, one record per file: ``path``,
``image`` (the encoded bytes) and ``label`` (the sub-folder of ``<root>`` the file is in); a read task takes a
group of files. Declare ``image`` a ``binary`` column with ``check_image: true`` to quarantine corrupt files.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from rayml import storage as store
from rayml.config import StrictModel
from rayml.errors import DataValidationError
from rayml.kafka_source import KafkaSourceConfig, check_source
from rayml.storage import StorageConfig, StorageError
from rayml.validate import ColumnSpec, output_schema, validate_batch

if TYPE_CHECKING:
    import ray.data
    from pyarrow.fs import FileSystem

SourceFormat = Literal["parquet", "csv", "jsonl", "images", "kafka"]
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "parquet": (".parquet", ".parq"),
    "csv": (".csv",),
    "jsonl": (".jsonl", ".json", ".ndjson"),
    "images": (".png", ".jpg", ".jpeg"),
}
IMAGE_TASK_BYTES = 32 << 20  # encoded image bytes per read task, at most (one file may exceed it)


class SourceConfig(StrictModel):
    """Where the raw records are and how they are encoded."""

    path: str = Field(min_length=1, description="a file or a directory (searched recursively); or s3://...")
    format: SourceFormat = Field("parquet", description="parquet, csv, jsonl or images (<path>/<label>/*)")
    batch_rows: int = Field(65_536, ge=1, le=10_000_000, description="records per validated batch")
    kafka: KafkaSourceConfig | None = Field(
        None, description="format kafka: brokers and offset range (source.path is then the topic)"
    )

    @model_validator(mode="after")
    def _kafka_fits(self) -> SourceConfig:
        check_source(self.format, self.path, self.kafka)
        return self


def list_files(path: str, fmt: SourceFormat, storage: StorageConfig | None = None) -> list[str]:
    """Data files under ``path`` (local or s3://) in a stable order; names starting with ``_`` or ``.`` are
    metadata."""
    if fmt == "kafka":
        return [path]  # the topic: rayml.kafka_source reads it
    kind = store.file_type(path, storage)
    if kind == "file":
        return [path]
    if kind == "missing":
        raise DataValidationError(f"source.path {path!r} does not exist; point it at a file or a directory")
    found = [entry.path for entry in store.list_files(path, _SUFFIXES[fmt], storage)]
    if not found:
        raise DataValidationError(
            f"no {fmt} files (suffix {' or '.join(_SUFFIXES[fmt])}) under {path!r}; "
            "check source.path and source.format"
        )
    return found


class RawBatch(NamedTuple):
    """Records of one file (or of one group of image files) as read, before validation."""

    table: pa.Table  # columns as found in the file (any types)
    rows: int | np.ndarray  # source position of the first record, or of each record
    originals: list[str] | None  # the source text of each record, where the format has one
    problems: list[str | None] | None  # a reader-level reason that quarantines the record (e.g. not JSON)
    files: list[str] | None = None  # the file of each record, where records come from several files


def iter_raw_batches(
    path: str, fmt: SourceFormat, batch_rows: int, filesystem: FileSystem | None = None
) -> Iterator[RawBatch]:
    """Batches of at most ``batch_rows`` records of one file, never the whole file at once."""
    if fmt == "parquet":
        yield from _parquet_batches(path, batch_rows, filesystem)
    elif fmt == "csv":
        yield from _csv_batches(path, batch_rows, filesystem)
    elif fmt == "jsonl":
        yield from _jsonl_batches(path, batch_rows, filesystem)
    else:  # one image file: its label is the folder it is in
        yield image_batch([path], os.path.dirname(os.path.dirname(path)), filesystem)


def validated_batches(
    path: str, fmt: SourceFormat, batch_rows: int, columns: list[ColumnSpec],
    filesystem: FileSystem | None = None,
) -> Iterator[pa.Table]:
    """Validated batches of one file, each with ``validate.output_schema(columns)``."""
    for raw in iter_raw_batches(path, fmt, batch_rows, filesystem):
        yield validate_batch(raw.table, columns, raw.files or path, raw.rows, raw.originals, raw.problems)


def validated_files(
    paths: list[str], fmt: SourceFormat, batch_rows: int, columns: list[ColumnSpec],
    filesystem: FileSystem | None = None,
) -> Iterator[pa.Table]:
    """Validated batches of each file of ``paths`` in turn (one read task's share of the source)."""
    for path in paths:
        yield from validated_batches(path, fmt, batch_rows, columns, filesystem)


def validated_images(
    paths: list[str], root: str, columns: list[ColumnSpec], filesystem: FileSystem | None = None
) -> Iterator[pa.Table]:
    """One validated batch of the image files ``paths`` under the source root ``root``."""
    batch = image_batch(paths, root, filesystem)
    yield validate_batch(batch.table, columns, batch.files or paths, batch.rows, None, batch.problems)


def read_validated(
    source: SourceConfig, columns: list[ColumnSpec], files: list[str] | None = None,
    storage: StorageConfig | None = None,
) -> ray.data.Dataset:
    """A Ray Dataset of every record under ``source`` (or of ``files``, already listed from it), typed
    and marked valid or not (see validate.py). For an s3:// source the driver resolves the filesystem
    (``storage``, else the AWS variables) and the read tasks use it: workers need no S3 settings."""
    import ray.data

    if source.format == "kafka" and source.kafka is not None:
        from rayml import kafka_source

        return kafka_source.read_validated(source.path, source.kafka, columns)
    files = files if files is not None else list_files(source.path, source.format, storage)
    filesystem = store.resolve(source.path, storage)[0] if store.is_remote(source.path) else None
    # Sizes let Ray Data size its blocks (without them it splits a small input into ~200 tiny files).
    listed = {e.path: e.size for e in store.list_files(source.path, None, storage)} if filesystem else {}
    # About 4 read tasks per CPU (Ray Data's default asks for at least 200, one per small file here).
    blocks = None if source.format == "images" else 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    return ray.data.read_datasource(
        _validating_datasource(files, source, columns, filesystem, listed), override_num_blocks=blocks
    )


@contextmanager
def _opened(path: str, filesystem: FileSystem | None) -> Iterator[Any]:
    """What pyarrow's readers take: a local path as is (read natively), or an open S3 file."""
    if filesystem is None or not store.is_remote(path):
        yield path
        return
    with store.translated(path, "read"):
        handle = filesystem.open_input_file(store.fs_path(path))
    with handle:
        yield handle


@contextmanager
def _text(path: str, filesystem: FileSystem | None, **options: Any) -> Iterator[Any]:
    """``path`` opened as text (``options`` as for ``open``), local or on S3."""
    with _opened(path, filesystem) as source:
        text = open(source, **options) if isinstance(source, str) else io.TextIOWrapper(source, **options)
        with text as fh:
            yield fh


def _parquet_batches(path: str, batch_rows: int, filesystem: FileSystem | None) -> Iterator[RawBatch]:
    with _opened(path, filesystem) as source:
        try:
            reader = pq.ParquetFile(source)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataValidationError(
                f"{path}: not a readable Parquet file ({exc}); remove or replace it"
            ) from exc
        first = 0
        for batch in reader.iter_batches(batch_size=batch_rows):
            yield RawBatch(pa.Table.from_batches([batch]), first, None, None)
            first += batch.num_rows


def _csv_batches(path: str, batch_rows: int, filesystem: FileSystem | None) -> Iterator[RawBatch]:
    """CSV read as text. A row with the wrong number of fields is quarantined whole, at its own position.

    Positions are 0-based data-row indexes (line number - 2, the header being line 1), exact as long as no
    quoted field spans lines.
    """
    with _text(path, filesystem, newline="", encoding="utf-8", errors="replace") as fh:
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
    with _opened(path, filesystem) as source:
        reader = pacsv.open_csv(
            source,
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


def _jsonl_batches(path: str, batch_rows: int, filesystem: FileSystem | None) -> Iterator[RawBatch]:
    """JSON lines; positions are 0-based line numbers (blank lines count but yield no record)."""
    lines: list[str] = []
    positions: list[int] = []
    with _text(path, filesystem, encoding="utf-8", errors="replace") as fh:
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
            name = str(key)
            if name not in columns:  # not setdefault: it would build an n-long list for every value (quadratic)
                columns[name] = [None] * len(records)
            columns[name][i] = _as_text(value)
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


def image_batch(paths: list[str], root: str, filesystem: FileSystem | None = None) -> RawBatch:
    """Records ``path``, ``image`` (the file's bytes) and ``label`` of image files under ``root``.

    A file that cannot be read, or that is not inside a label folder, becomes a record with a reader-level
    problem (quarantined); the others are read on. Decoding is ``validate``'s job (``check_image``).
    """
    images: list[bytes | None] = []
    labels: list[str | None] = []
    problems: list[str | None] = []
    for path in paths:
        label = image_label(path, root)
        problem = None if label else f"image is not inside a <label>/ folder under {root!r}; move it into one"
        try:
            with _opened(path, filesystem) as source:
                if isinstance(source, str):
                    with open(source, "rb") as fh:
                        content: bytes | None = fh.read()
                else:
                    content = source.read()
        except (OSError, StorageError) as exc:
            content, problem = None, f"cannot read the file ({exc})"
        images.append(content)
        labels.append(label)
        problems.append(problem)
    table = pa.table({"path": pa.array(paths, pa.string()), "image": pa.array(images, pa.binary()),
                      "label": pa.array(labels, pa.string())})
    rows = np.zeros(len(paths), dtype=np.int64)
    return RawBatch(table, rows, None, problems if any(problems) else None, list(paths))


def image_label(path: str, root: str) -> str | None:
    """The sub-folder of ``root`` that holds ``path`` (``<root>/<label>/.../<file>``), or None."""
    base = root.rstrip("/")
    if path.rstrip("/") == base:  # the source is this one file: the folder it is in is its label
        return os.path.basename(os.path.dirname(base)) or None
    if not path.startswith(base + "/"):
        return None
    parts = path[len(base) + 1:].split("/")
    return parts[0] if len(parts) >= 2 and parts[0] else None


def file_groups(files: list[str], parallelism: int) -> list[list[str]]:
    """``files`` in at most ``parallelism`` runs of consecutive files, as even in count as possible."""
    count = max(1, min(len(files), parallelism))
    size, extra = divmod(len(files), count)
    groups, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        groups.append(files[start:end])
        start = end
    return [group for group in groups if group]


def image_groups(
    files: list[str], sizes: list[int | None], batch_rows: int, parallelism: int
) -> list[list[str]]:
    """Image files split into read tasks: about ``parallelism`` tasks, each of at most ``batch_rows`` files
    and ``IMAGE_TASK_BYTES`` bytes (where sizes are known)."""
    per_task = min(batch_rows, max(1, math.ceil(len(files) / max(parallelism, 1))))
    groups: list[list[str]] = []
    current: list[str] = []
    held = 0
    for path, size in zip(files, sizes):
        if current and (len(current) >= per_task or held + (size or 0) > IMAGE_TASK_BYTES):
            groups.append(current)
            current, held = [], 0
        current.append(path)
        held += size or 0
    if current:
        groups.append(current)
    return groups


def _file_size(path: str) -> int | None:
    if store.is_remote(path):
        return None  # sizes come from the listing, not a HEAD request per file
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _validating_datasource(files: list[str], source: SourceConfig, columns: list[ColumnSpec],
                           filesystem: FileSystem | None, listed: dict[str, int | None]) -> Any:
    """A Ray Data datasource with one read task per group of files (about ``parallelism`` groups: many small
    files do not each pay a task's overhead); each task yields validated batches.

    The class is defined here rather than at module level so importing rayml.source does not import Ray.
    """
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    schema = output_schema(columns)
    fmt, batch_rows = source.format, source.batch_rows
    sizes = [listed[f] if f in listed else _file_size(f) for f in files]

    class ValidatingDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return sum(s for s in sizes if s is not None) or None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            if fmt == "images":
                groups = image_groups(files, sizes, batch_rows, parallelism)
                read = functools.partial(validated_images, root=source.path, columns=columns,
                                         filesystem=filesystem)
                return [_task(group, functools.partial(read, group)) for group in groups]
            read = functools.partial(validated_files, fmt=fmt, batch_rows=batch_rows, columns=columns,
                                     filesystem=filesystem)
            return [_task(group, functools.partial(read, group)) for group in file_groups(files, parallelism)]

        def get_name(self) -> str:
            return f"Validated{fmt.capitalize()}"

    def _task(paths: list[str], read: Any) -> ReadTask:
        known = [sizes[index[p]] for p in paths]
        size = None if None in known else sum(s for s in known if s is not None)
        meta = BlockMetadata(num_rows=None, size_bytes=size, input_files=paths, exec_stats=None)
        return ReadTask(read, meta, schema=schema)

    index = {path: i for i, path in enumerate(files)}
    return ValidatingDatasource()
