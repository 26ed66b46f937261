"""Record-level validation: raw Arrow batches in, typed columns plus a per-record ``_error`` out.

``validate_batch`` is pure (pyarrow/pandas only). It never raises on bad data: each record either comes out
typed and valid, or is marked with every reason it failed, its source position, and its original values as
JSON, so quarantine loses nothing. The Ray wiring lives in ``rayml.source``.

A ``binary`` column takes Arrow binary or base64 text (JSON); ``check_image`` quarantines bytes that do not
decode as an image, decoding as the image featurizer (``rayml.features.image``) does.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from rayml import storage as store
from rayml.config import StrictModel
from rayml.errors import DataValidationError
from rayml.storage import StorageConfig
from rayml.tapped_sink import Tap, write_parquet

ColumnType = Literal["string", "float", "int", "bool", "timestamp", "binary"]

ERROR = "_error"
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
RAW = "_raw"
META_COLUMNS = (ERROR, SOURCE_FILE, SOURCE_ROW, RAW)
PROBLEM_SEPARATOR = " | "  # between the problems of one record; a single problem's text may contain "; "

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "float": pa.float64(),
    "int": pa.int64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "binary": pa.binary(),
}
IMAGE_MAX_PIXELS = 40_000_000  # rayml.features.image.ImageFeatures' default max_pixels
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class ColumnSpec(StrictModel):
    """One expected column of the input records."""

    name: str = Field(min_length=1, description="column name as it appears in the source")
    type: ColumnType = Field(description="one of string, float, int, bool, timestamp, binary")
    nullable: bool = Field(False, description="whether a null value is valid")
    min: float | None = Field(None, description="inclusive lower bound for float/int columns")
    max: float | None = Field(None, description="inclusive upper bound for float/int columns")
    allowed: list[str] | None = Field(None, min_length=1, description="the valid values of a string column")
    check_image: bool = Field(False, description="binary columns: quarantine bytes that are not an image")

    @model_validator(mode="after")
    def _bounds_fit_type(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and self.type not in ("float", "int"):
            raise ValueError(f"min/max apply to float or int columns, not {self.type}; remove them")
        if self.allowed is not None and self.type != "string":
            raise ValueError(f"allowed applies to string columns, not {self.type}; remove it")
        if self.check_image and self.type != "binary":
            raise ValueError(f"check_image applies to binary columns, not {self.type}; remove it")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}; swap them")
        return self


class ValidateConfig(StrictModel):
    """The record schema and how many bad records a run tolerates."""

    columns: list[ColumnSpec] = Field(min_length=1, description="every column a record must have")
    max_bad_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="fail the run when quarantined/read exceeds this fraction"
    )

    @field_validator("columns")
    @classmethod
    def _unique_names(cls, columns: list[ColumnSpec]) -> list[ColumnSpec]:
        seen: set[str] = set()
        for col in columns:
            if col.name in seen:
                raise ValueError(f"column {col.name!r} is declared twice; keep one")
            seen.add(col.name)
        return columns


def arrow_type(column_type: ColumnType) -> pa.DataType:
    """The Arrow type a valid value of ``column_type`` has after validation."""
    return _ARROW_TYPES[column_type]


def output_schema(columns: list[ColumnSpec]) -> pa.Schema:
    """Schema of ``validate_batch`` output: typed declared columns, then the metadata columns."""
    fields = [pa.field(c.name, arrow_type(c.type)) for c in columns]
    fields += [
        pa.field(ERROR, pa.string()),
        pa.field(SOURCE_FILE, pa.string()),
        pa.field(SOURCE_ROW, pa.int64()),
        pa.field(RAW, pa.string()),
    ]
    return pa.schema(fields)


def validate_batch(
    raw: pa.Table,
    columns: list[ColumnSpec],
    source_file: str | list[str],
    first_row: int | np.ndarray,
    originals: list[str] | None = None,
    known_problems: list[str | None] | None = None,
) -> pa.Table:
    """Type and check every record of ``raw`` from ``source_file`` (one path, or one per record).

    ``first_row`` is the source position of the first record (the rest follow on), or an array giving each
    record's position. ``known_problems[i]``, when set, quarantines record ``i`` whatever its values (the
    reader found it malformed, e.g. a line that is not JSON).

    Returns a table with ``output_schema(columns)``; ``_error`` is null for valid records and lists every
    failed check (``'amount: got -3.0; below the minimum 0.01'``) for the rest, whose ``_raw`` holds the
    original record: ``originals[i]`` when the caller has the source text, else strict JSON.
    """
    n = raw.num_rows
    problems: list[list[str]] = [[] for _ in range(n)]
    if known_problems is not None:
        for i, problem in enumerate(known_problems):
            if problem:
                problems[i].append(problem)
    typed: list[pa.Array] = []
    for spec in columns:
        values, bad, why = _convert(raw, spec, n)
        for i in np.flatnonzero(bad):
            if not (known_problems is not None and known_problems[i]):
                problems[i].append(f"{spec.name}: {why(int(i))}")
        typed.append(values)

    errors = [(PROBLEM_SEPARATOR.join(p) if p else None) for p in problems]
    bad_rows = [i for i, p in enumerate(problems) if p]
    raw_json: list[str | None] = [None] * n
    if bad_rows and originals is not None:
        for i in bad_rows:
            raw_json[i] = originals[i]
    elif bad_rows:
        records = raw.take(pa.array(bad_rows, pa.int64())).to_pylist()
        for i, record in zip(bad_rows, records):
            raw_json[i] = json.dumps(_jsonable(record), sort_keys=True, allow_nan=False)
    if isinstance(first_row, np.ndarray):
        positions = first_row.astype(np.int64)
    else:
        positions = np.arange(first_row, first_row + n, dtype=np.int64)
    meta = [
        pa.array(errors, pa.string()),
        pa.array([source_file] * n if isinstance(source_file, str) else source_file, pa.string()),
        pa.array(positions),
        pa.array(raw_json, pa.string()),
    ]
    return pa.Table.from_arrays(typed + meta, schema=output_schema(columns))


def _convert(raw: pa.Table, spec: ColumnSpec, n: int) -> tuple[pa.Array, np.ndarray, Any]:
    """Typed values, a mask of failed rows, and a function giving the reason for one failed row."""
    target = arrow_type(spec.type)
    if spec.name not in raw.column_names:
        return pa.nulls(n, target), np.ones(n, dtype=bool), lambda i: "missing column; every record needs it"

    column = raw.column(spec.name).combine_chunks() if n else pa.array([], raw.schema.field(spec.name).type)
    original = column.to_pandas() if n else pd.Series([], dtype=object)
    present = ~pd.isna(original).to_numpy(dtype=bool) if n else np.zeros(0, dtype=bool)
    converted, parsed = _parse(column, original, spec.type)
    unparseable = present & ~parsed

    null = ~parsed & ~present if not spec.nullable else np.zeros(n, dtype=bool)
    low = np.zeros(n, dtype=bool)
    high = np.zeros(n, dtype=bool)
    outside = np.zeros(n, dtype=bool)
    if spec.type in ("float", "int") and n:
        numbers = pd.to_numeric(converted.where(parsed, None), errors="coerce").to_numpy(
            dtype=float, na_value=np.nan
        )
        with np.errstate(invalid="ignore"):
            if spec.min is not None:
                low = parsed & (numbers < spec.min)
            if spec.max is not None:
                high = parsed & (numbers > spec.max)
    if spec.allowed is not None and n:
        outside = parsed & ~converted.isin(spec.allowed).to_numpy(dtype=bool)
    checked = np.flatnonzero(parsed) if spec.check_image else []
    undecodable = {int(i): p for i in checked if (p := image_problem(converted.iloc[i])) is not None}
    not_image = np.isin(np.arange(n), list(undecodable))

    def why(i: int) -> str:
        value = original.iloc[i]
        value = value.item() if isinstance(value, np.generic) else value
        if i in undecodable:
            return undecodable[i]
        if unparseable[i]:
            long_text = spec.type == "binary" and isinstance(value, str) and len(value) > 40
            shown = f"a {len(value)}-character string" if long_text else repr(value)
            return f"got {shown}; expected {_EXPECTED[spec.type]}"
        if null[i]:
            return "null but required; supply a value or declare the column nullable"
        if low[i]:
            return f"got {value!r}; below the minimum {spec.min}"
        if high[i]:
            return f"got {value!r}; above the maximum {spec.max}"
        return f"got {value!r}; not one of the allowed values {spec.allowed}"

    bad = unparseable | null | low | high | outside | not_image
    keep = parsed & ~bad
    values = pa.array(converted.where(keep, None), type=target, from_pandas=True) if n else pa.nulls(0, target)
    return values, bad, why


_EXPECTED = {"string": "a string", "float": "a number", "int": "an integer", "bool": "true or false",
             "timestamp": "an ISO-8601 timestamp", "binary": "bytes (base64 text in JSON)"}


def decode_base64(text: str) -> bytes | None:
    """The bytes of standard base64 text (padded; whitespace ignored), or None if it is not base64."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def image_problem(data: bytes, max_pixels: int = IMAGE_MAX_PIXELS) -> str | None:
    """Why ``data`` does not decode as an image, or None. The same Pillow decode (open, size check, full load)
    as the image featurizer, so bytes that pass here featurize."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataValidationError("check_image needs Pillow; pip install 'rayml[features]'") from exc
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                return f"image of {image.width}x{image.height} pixels exceeds max_pixels={max_pixels}"
            image.load()  # decode every pixel: a truncated file fails here, not in featurize
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        detail = _OBJECT_ADDRESS.sub("", str(exc)).replace(" <_io.BytesIO object>", "")
        return f"cannot decode the image ({type(exc).__name__}: {detail}); expected PNG or JPEG bytes"
    return None


_OBJECT_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _parse(column: pa.Array, original: pd.Series, column_type: ColumnType) -> tuple[pd.Series, np.ndarray]:
    """Values converted to the target type (a Series) and a mask of the rows that converted.

    Conversions go through Arrow where the source is already typed, so integers keep full int64 precision
    and a null in an int column does not turn its other values into floats.
    """
    n = len(original)
    if n == 0:
        return original, np.zeros(0, dtype=bool)
    src = column.type
    textual = pa.types.is_string(src) or pa.types.is_large_string(src)
    integer = pa.types.is_integer(src)
    numeric = integer or pa.types.is_floating(src) or pa.types.is_decimal(src)
    if column_type == "string":
        if textual:
            series = original
        elif numeric or pa.types.is_boolean(src) or pa.types.is_timestamp(src):
            series = pc.cast(column, pa.string()).to_pandas()
        else:
            series = original.map(lambda v: None if _missing(v) else str(v))
        return series, ~pd.isna(series).to_numpy(dtype=bool)
    if column_type == "int":
        if integer:
            try:
                series = pd.Series(pc.cast(column, pa.int64()).to_pylist(), dtype=object)
            except pa.ArrowInvalid:  # uint64 values past int64: judge value by value
                series = pd.Series(column.to_pylist(), dtype=object).map(_to_int)
            return series, ~pd.isna(series).to_numpy(dtype=bool)
        if not (numeric or textual):
            return pd.Series([None] * n, dtype=object), np.zeros(n, dtype=bool)
        series = original.map(_to_int)
        return series, ~pd.isna(series).to_numpy(dtype=bool)
    if column_type == "binary":
        if pa.types.is_binary(src) or pa.types.is_large_binary(src) or pa.types.is_fixed_size_binary(src):
            series = pd.Series(column.to_pylist(), dtype=object)
        elif textual:
            series = original.map(lambda v: None if _missing(v) else decode_base64(str(v)))
        else:
            return pd.Series([None] * n, dtype=object), np.zeros(n, dtype=bool)
        return series, ~pd.isna(series).to_numpy(dtype=bool)
    if column_type == "float":
        if not (numeric or textual):
            return pd.Series([None] * n, dtype=object), np.zeros(n, dtype=bool)
        source = pc.cast(column, pa.float64()).to_pandas() if numeric else original
        numbers = pd.to_numeric(source, errors="coerce").astype("float64")
        finite = np.isfinite(numbers.to_numpy(dtype=float, na_value=np.nan))
        return numbers, finite
    if column_type == "bool":
        if pa.types.is_boolean(src):
            return original, ~pd.isna(original).to_numpy(dtype=bool)
        if numeric:
            values = pc.cast(column, pa.float64()).to_pylist()
            mapped = pd.Series([True if v == 1 else (False if v == 0 else None) for v in values], dtype=object)
        else:
            text = original.map(lambda v: None if _missing(v) else str(v).strip().lower())
            mapped = text.map(lambda v: True if v in _TRUE else (False if v in _FALSE else None))
        return mapped, ~pd.isna(mapped).to_numpy(dtype=bool)
    # timestamp
    if pa.types.is_timestamp(src):
        # A naive timestamp is taken as UTC, which is what Arrow's cast to a zoned type does.
        series = pc.cast(column, pa.timestamp("us", tz="UTC")).to_pandas()
        return series, ~pd.isna(series).to_numpy(dtype=bool)
    if textual or pa.types.is_dictionary(src):
        stamps = pd.to_datetime(original.astype(object), errors="coerce", utc=True, format="ISO8601")
        return stamps, ~pd.isna(stamps).to_numpy(dtype=bool)
    return pd.Series([None] * n, dtype=object), np.zeros(n, dtype=bool)


def _to_int(value: Any) -> int | None:
    """An exact int64 from an int, an integral float, or text such as '42', '42.0' or '4.2e1'; else None."""
    if _missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
    else:
        text = str(value).strip()
        try:
            number = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                return None
            if not math.isfinite(as_float) or not as_float.is_integer():
                return None
            number = int(as_float)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _jsonable(value: Any) -> Any:
    """A record made strictly JSON-safe: NaN/inf floats and other non-JSON values become strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")  # as a JSON request would send it
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def run_stage(source: Any, config: ValidateConfig, out_dir: str | Path, storage: StorageConfig | None = None,
              tap: Tap | None = None) -> dict[str, Any]:
    """Read ``source`` (a ``SourceConfig``) on Ray Data, validate every record, and write
    ``<out_dir>/records/_status=valid`` and ``.../_status=quarantined`` in one streaming pass. Either may be
    ``s3://`` (see ``rayml.storage``). Fails with DataValidationError past ``config.max_bad_fraction``; the
    outputs stay to inspect.

    With ``tap``, every written batch (typed, with ``_status``) also goes through ``tap``; the summary's
    ``tapped`` lists the results (see ``rayml.tapped_sink``).
    """
    from rayml.source import list_files, read_validated

    records = store.join(out_dir, "records")
    store.delete(records, storage)  # a rerun of an interrupted stage starts clean instead of appending
    files = list_files(source.path, source.format, storage)
    dataset = read_validated(source, config.columns, files, storage)
    dataset = dataset.map_batches(_with_status, batch_format="pyarrow")
    filesystem, inner = store.resolve(records, storage) if store.is_remote(records) else (None, str(records))
    tapped = write_parquet(dataset, inner, partition_cols=[STATUS], filesystem=filesystem, tap=tap)
    valid_path = store.join(records, f"{STATUS}={VALID}")
    quarantine_path = store.join(records, f"{STATUS}={QUARANTINED}")
    valid_rows, bad_rows = parquet_rows(valid_path, storage), parquet_rows(quarantine_path, storage)
    read_rows = valid_rows + bad_rows
    by_column = _quarantine_by_column(quarantine_path, storage)
    summary = {
        "source": {"path": source.path, "format": source.format, "files": len(files)},
        "read_rows": read_rows,
        "valid_rows": valid_rows,
        "quarantined_rows": bad_rows,
        "quarantine_by_column": by_column,
        "bad_fraction": bad_rows / read_rows if read_rows else 0.0,
        "valid_path": str(valid_path),
        "quarantine_path": str(quarantine_path),
    }
    if tapped is not None:
        summary["tapped"] = tapped
    if read_rows == 0:
        raise DataValidationError(f"source {source.path!r} holds no records; nothing to train on")
    if summary["bad_fraction"] > config.max_bad_fraction:
        raise DataValidationError(
            f"{bad_rows} of {read_rows} records ({summary['bad_fraction']:.2%}) failed validation, above "
            f"validation.max_bad_fraction={config.max_bad_fraction:g}. Most failures by column: {by_column}. "
            f"Inspect {summary['quarantine_path']}, fix the source or the schema, or raise the limit"
        )
    return summary


STATUS = "_status"
VALID = "valid"
QUARANTINED = "quarantined"


def _with_status(batch: pa.Table) -> pa.Table:
    status = pc.if_else(pc.is_null(batch.column(ERROR)), VALID, QUARANTINED)
    return batch.append_column(STATUS, status)


def parquet_rows(directory: str | Path, storage: StorageConfig | None = None) -> int:
    """Rows in the Parquet files under ``directory`` (local or s3://), from their footers (no data is read)."""
    total = 0
    for entry in store.list_files(directory, (".parquet",), storage):
        with store.open_input(entry.path, storage) as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def _quarantine_by_column(directory: str | Path, storage: StorageConfig | None) -> dict[str, int]:
    """How many quarantined records failed a check on each column (reads only the ``_error`` column)."""
    counts: dict[str, int] = {}
    for entry in store.list_files(directory, (".parquet",), storage):
        with store.open_input(entry.path, storage) as fh:
            messages = pq.read_table(fh, columns=[ERROR]).column(ERROR).to_pylist()
        for message in messages:
            for problem in (message or "").split(PROBLEM_SEPARATOR):
                column = problem.split(":", 1)[0]
                if column:
                    counts[column] = counts.get(column, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
