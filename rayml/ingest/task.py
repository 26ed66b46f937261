"""One task of a micro-batch: read one offset range of one partition, validate it, write its Parquet files.

``ingest_range`` is a plain function (Ray runs it as a task; tests and benchmarks may call it directly). Its
output depends only on the messages in its range, so running it again, after a crash or as a Ray retry,
rewrites the same files with the same records.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow.fs import FileSystem
import pyarrow.parquet as pq

from rayml.errors import DataValidationError
from rayml.ingest.plan import QUARANTINE_DIR, VALID_DIR, OffsetRange, Output, file_name
from rayml.kafka_source import validate_messages
from rayml.validate import ERROR, ColumnSpec

_US_PER_HOUR = 3_600_000_000
_CONSUME_MAX = 10_000


def read_range(settings: dict[str, Any], topic: str, offsets: OffsetRange, timeout_s: float) -> pa.Table:
    """Messages ``offsets.start <= offset < offsets.end`` of one partition as a table (topic, partition, offset,
    value, timestamp in ms). Offsets that retention already deleted are missing from it; offsets that hold no
    message (transaction markers, compacted records) are passed over. Raises DataValidationError when the range
    cannot be read within ``timeout_s`` of the last message received."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer(settings)
    found: list[int] = []
    values: list[bytes | None] = []
    stamps: list[int] = []
    partition = TopicPartition(topic, offsets.partition, offsets.start)
    try:
        consumer.assign([partition])
        deadline = time.monotonic() + timeout_s
        done = offsets.size <= 0
        while not done:
            # Ask for no more than the range still holds: consume() waits for the full count or the timeout.
            wanted = offsets.end - (found[-1] + 1 if found else offsets.start)
            messages = consumer.consume(min(_CONSUME_MAX, wanted), timeout=0.2)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                offset = message.offset()
                if offset >= offsets.end:
                    done = True
                    break
                found.append(offset)
                values.append(message.value())
                stamps.append(message.timestamp()[1])
                done = offset == offsets.end - 1
            if messages:
                deadline = time.monotonic() + timeout_s
            elif not done:
                done = consumer.position([partition])[0].offset >= offsets.end
                if not done and time.monotonic() > deadline:
                    raise DataValidationError(
                        f"{topic} partition {offsets.partition}: no message for {timeout_s:g} s at offset "
                        f"{found[-1] + 1 if found else offsets.start} of [{offsets.start}, {offsets.end}); check that "
                        "the brokers are reachable (source.kafka.bootstrap_servers) or raise ingest.read_timeout_s"
                    )
    finally:
        consumer.close()
    n = len(found)
    return pa.table({
        "topic": pa.array([topic] * n, pa.string()),
        "partition": pa.array(np.full(n, offsets.partition, dtype=np.int32)),
        "offset": pa.array(found, pa.int64()),
        "value": pa.array(values, pa.binary()),
        "timestamp": pa.array(stamps, pa.int64()),
    })


def write_files(output: Output, topic: str, offsets: OffsetRange, records: pa.Table, kafka_ms: pa.Array,
                timestamp_column: str) -> list[str]:
    """Write valid records under ``valid/event_date=YYYY-MM-DD/event_hour=HH/`` of ``timestamp_column`` and
    quarantined ones under ``quarantine/event_date=YYYY-MM-DD/`` (of the message's Kafka timestamp where the record
    has no valid time; a day is fine-grained enough for the few records there), one file per folder, named after
    ``offsets``. Returns the paths written."""
    if records.num_rows == 0:
        return []
    kafka_us = pc.multiply(pc.max_element_wise(_array(kafka_ms), 0), 1000)
    when = pc.coalesce(_array(records.column(timestamp_column)), kafka_us.cast(pa.timestamp("us", tz="UTC")))
    hours = np.floor_divide(when.cast(pa.int64()).to_numpy(), _US_PER_HOUR)
    bad = pc.is_valid(_array(records.column(ERROR))).to_numpy(zero_copy_only=False)
    hours = np.where(bad, hours - hours % 24, hours)
    keys, inverse = np.unique(hours * 2 + bad, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # stable: each file keeps offset order
    grouped = records.take(pa.array(order))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(keys)))])
    name = file_name(topic, offsets)
    written = []
    for i, key in enumerate(keys):
        hour = dt.datetime.fromtimestamp(int(key // 2) * 3600, dt.timezone.utc)
        if key % 2:
            relative = f"{QUARANTINE_DIR}/event_date={hour:%Y-%m-%d}/{name}"
        else:
            relative = f"{VALID_DIR}/event_date={hour:%Y-%m-%d}/event_hour={hour:%H}/{name}"
        part = grouped.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
        written.append(output.write_atomically(relative, lambda stream, part=part: pq.write_table(part, stream)))
    return written


def ingest_range(settings: dict[str, Any], topic: str, offsets: OffsetRange, columns: list[ColumnSpec],
                 max_message_bytes: int, output_uri: str, timestamp_column: str, timeout_s: float,
                 filesystem: FileSystem | None = None) -> dict[str, Any]:
    """Read, validate and write one range to ``output_uri`` (on ``filesystem``, which the driver resolved);
    return its counts."""
    messages = read_range(settings, topic, offsets, timeout_s)
    records = validate_messages(messages, columns, max_message_bytes)
    output = Output(output_uri, filesystem=filesystem)
    files = write_files(output, topic, offsets, records, messages.column("timestamp"), timestamp_column)
    bad = records.num_rows - records.column(ERROR).null_count
    first = messages.column("offset")[0].as_py() if messages.num_rows else offsets.end
    return {
        "partition": offsets.partition, "start": offsets.start, "end": offsets.end, "read": records.num_rows,
        "valid": records.num_rows - bad, "quarantined": bad, "files": len(files),
        "skipped": max(0, first - offsets.start),  # deleted by retention, or offsets holding no message
    }


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
