"""Kafka as a bounded source: a topic read between offsets or timestamps, validated message by message.

A job's source is a Kafka topic when ``source.format`` is ``kafka``: ``source.path`` names the topic and
``source.kafka`` the brokers and the range. ``read_validated`` reads the range with ``ray.data.read_kafka`` (one
read task per partition) and hands each block to the pure ``validate_messages``, which is also what each
micro-batch of ``rayml ingest`` runs. A message that is empty, over ``max_message_bytes``, not UTF-8, not
JSON or not a JSON object, or whose record breaks the schema, becomes a quarantined record: its reason in
``_error``, its topic and partition in ``_source_file`` (``kafka://<topic>/<partition>``), its offset in
``_source_row`` and its text in ``_raw``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from rayml.config import StrictModel
from rayml.validate import SOURCE_FILE, ColumnSpec, validate_batch

if TYPE_CHECKING:
    import ray.data

Offset = Annotated[int, Field(ge=0)]
# A bound: an offset for every partition, a time (the first message at or after it), or per-partition offsets.
StartBound = Offset | dt.datetime | Literal["earliest"] | dict[int, Offset]
EndBound = Offset | dt.datetime | Literal["latest"] | dict[int, Offset]

TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,249}")
RAW_LIMIT = 4096  # bytes of an oversized message kept in _raw: its topic/partition/offset locate the rest
_SCHEME = "kafka://"


class KafkaSourceConfig(StrictModel):
    """The brokers a Kafka source reads from and the range it reads (``source.path`` is the topic)."""

    bootstrap_servers: str = Field(
        min_length=3, description="comma-separated host:port list of brokers, e.g. 127.0.0.1:9092"
    )
    start: StartBound = Field(
        "earliest",
        description="first message: earliest, an offset, a time (ISO-8601; UTC if no zone) or {partition: offset}",
    )
    end: EndBound = Field(
        "latest",
        description="end, exclusive: latest (the high watermark when read), an offset, a time or {partition: offset}; "
        "rayml ingest ignores it",
    )
    max_message_bytes: int = Field(
        1_000_000, ge=1, le=1 << 30, description="longer messages are quarantined instead of decoded"
    )
    consumer_config: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="extra librdkafka consumer properties, e.g. security.protocol, sasl.mechanism",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError("every broker must be host:port; write e.g. 127.0.0.1:9092")
        return value

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: Any) -> Any:
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)  # as read_kafka does
        return value

    @field_validator("consumer_config")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(value) & {"bootstrap.servers", "enable.auto.commit", "group.id"})
        if reserved:
            raise ValueError(f"rayml sets {', '.join(reserved)} itself; remove it from consumer_config")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> KafkaSourceConfig:
        start, end = self.start, self.end
        if isinstance(start, int) and isinstance(end, int) and start > end:
            raise ValueError(f"start offset {start} is after end offset {end}; swap them")
        if isinstance(start, dt.datetime) and isinstance(end, dt.datetime) and start > end:
            raise ValueError(f"start time {start.isoformat()} is after end time {end.isoformat()}; swap them")
        return self


def check_source(fmt: str, path: str, kafka: KafkaSourceConfig | None) -> None:
    """Raise ValueError when a source's format, path and ``kafka`` section do not fit together."""
    if fmt == "kafka" and kafka is None:
        raise ValueError("format kafka needs a kafka section: add source.kafka.bootstrap_servers: host:port")
    if fmt != "kafka" and kafka is not None:
        raise ValueError(f"source.kafka applies to format kafka, not {fmt}; remove it or set source.format: kafka")
    if fmt == "kafka" and not TOPIC_PATTERN.fullmatch(path):
        raise ValueError(
            f"with format kafka, source.path is the topic; {path!r} is not a Kafka topic name "
            "(letters, digits, '.', '_', '-'; at most 249)"
        )


def consumer_settings(config: KafkaSourceConfig, group: str = "rayml") -> dict[str, Any]:
    """librdkafka consumer properties for reading assigned ranges (offsets are never committed to Kafka)."""
    return {
        **config.consumer_config,
        "bootstrap.servers": config.bootstrap_servers,
        "group.id": group,
        "enable.auto.commit": False,
        # An offset that retention already deleted resumes at the oldest kept message (and is reported),
        # never silently at the newest.
        "auto.offset.reset": "earliest",
    }


def decode(values: list[bytes | None], max_message_bytes: int) -> tuple[list[Any], Texts, list[str | None]]:
    """Each message value decoded as a JSON object: (records, original texts, problems).

    A message that cannot become a record gets a problem (the reason it is quarantined) and a None record.
    Its original text, for ``_raw``, is made only when asked for (see ``Texts``).
    """
    records: list[Any] = []
    problems: list[str | None] = []
    loads = json.loads
    for value in values:
        record, problem = None, None
        if value is None:
            problem = "empty message (no value); a JSON object was expected"
        elif len(value) > max_message_bytes:
            problem = (f"message of {len(value)} bytes is over source.kafka.max_message_bytes={max_message_bytes} "
                       f"(first {RAW_LIMIT} bytes kept in _raw)")
        else:
            try:
                record = loads(value.decode("utf-8"))  # JSON between systems is UTF-8 (RFC 8259)
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
            except (json.JSONDecodeError, RecursionError) as exc:
                problem = f"not valid JSON ({exc})"
            else:
                if record.__class__ is not dict:
                    problem, record = f"not a JSON object (got {type(record).__name__})", None
        records.append(record)
        problems.append(problem)
    return records, Texts(values, max_message_bytes), problems


class Texts:
    """The messages' text by index, decoded on demand (only quarantined records need theirs): bytes that are
    not UTF-8 as ``\\x..`` escapes, an oversized message's first ``RAW_LIMIT`` bytes, no value as ''."""

    def __init__(self, values: list[bytes | None], max_message_bytes: int) -> None:
        self._values = values
        self._limit = max_message_bytes

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, i: int) -> str:
        value = self._values[i]
        if value is None:
            return ""
        return (value[:RAW_LIMIT] if len(value) > self._limit else value).decode("utf-8", "backslashreplace")


def validate_messages(messages: pa.Table, columns: list[ColumnSpec], max_message_bytes: int) -> pa.Table:
    """Validate Kafka messages (columns ``topic``, ``partition``, ``offset``, ``value``, as ``ray.data.read_kafka``
    yields them) into ``validate.output_schema(columns)``: position = offset, file = ``kafka://topic/partition``."""
    records, originals, problems = decode(messages.column("value").to_pylist(), max_message_bytes)
    offsets = messages.column("offset").to_numpy().astype(np.int64)
    table = records_table(records)
    checked = validate_batch(table, columns, "", offsets, originals, problems if any(problems) else None)
    files = pc.binary_join_element_wise(
        _SCHEME, messages.column("topic").cast(pa.string()), "/", messages.column("partition").cast(pa.string()), ""
    )
    return checked.set_column(checked.schema.get_field_index(SOURCE_FILE), SOURCE_FILE, files)


def records_table(records: list[dict[str, Any] | None]) -> pa.Table:
    """Decoded JSON objects as a table for ``validate_batch`` to type (None: a message that did not decode).

    A column whose values share one JSON type becomes that Arrow type; a column mixing types (a bad record's
    ``"amount": "twelve"`` among numbers) becomes text, as JSON-lines files are read.
    """
    n = len(records)
    rows = [record if record is not None else {} for record in records]
    names: dict[str, None] = {}
    for record in rows:
        names.update(dict.fromkeys(record))
    if not names:
        return pa.table({"_unparsed": pa.nulls(n, pa.string())})
    arrays = {}
    for name in names:
        values = [record.get(name) for record in rows]
        try:
            array = pa.array(values)
            if not _flat(array.type):
                raise TypeError("nested values")
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
            array = pa.array(_texts(values), pa.string())
        arrays[name] = array
    return pa.table(arrays)


def _flat(kind: pa.DataType) -> bool:
    return pa.types.is_null(kind) or pa.types.is_boolean(kind) or pa.types.is_integer(kind) or (
        pa.types.is_floating(kind) or pa.types.is_string(kind))


def _texts(values: list[Any]) -> list[str | None]:
    """JSON values as text that parses back: numbers in repr form, booleans as true/false, the rest as JSON."""
    texts: list[str | None] = []
    for value in values:
        kind = value.__class__
        if value is None or kind is str:
            texts.append(value)
        elif kind is float or kind is int:
            texts.append(repr(value))
        elif kind is bool:
            texts.append("true" if value else "false")
        else:
            texts.append(json.dumps(value))
    return texts


def read_validated(topic: str, config: KafkaSourceConfig, columns: list[ColumnSpec]) -> ray.data.Dataset:
    """A Ray Dataset of every message of ``topic`` between ``config.start`` and ``config.end``, validated."""
    import ray.data

    def bound(value: Any) -> Any:
        return {topic: dict(value)} if isinstance(value, dict) else value

    messages = ray.data.read_kafka(
        topic,
        bootstrap_servers=config.bootstrap_servers,
        start_offset=bound(config.start),
        end_offset=bound(config.end),
        consumer_config={k: v for k, v in consumer_settings(config).items() if k != "bootstrap.servers"},
    )
    return messages.map_batches(
        validate_messages,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"columns": columns, "max_message_bytes": config.max_message_bytes},
    )
