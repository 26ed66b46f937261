"""Unit tests of exactly-once ingest's pure core (no Ray, no broker): offset-range planning, file names, the
checkpoint, atomic writes, date/hour partitioning, message decoding, and config errors."""

from __future__ import annotations

import datetime as dt
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayml import ingest, pipeline
from rayml.errors import ConfigError, DataValidationError
from rayml.ingest.plan import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    TMP_DIR,
    IngestState,
    OffsetRange,
    Output,
    file_name,
    load_state,
    parse_file_name,
    plan_batch,
    save_state,
)
from rayml.ingest.task import write_files
from rayml.kafka_source import KafkaSourceConfig, validate_messages
from rayml.validate import ERROR, RAW, SOURCE_FILE, SOURCE_ROW, ColumnSpec
from tests.conftest import REPO

JOB = REPO / "jobs" / "fraud_stream.yaml"
COLUMNS = [
    ColumnSpec(name="id", type="int"),
    ColumnSpec(name="at", type="timestamp"),
    ColumnSpec(name="amount", type="float", min=0.0),
]

# ---------------------------------------------------------------- planning


def test_plan_caps_the_batch_and_splits_it_into_task_ranges():
    ranges = plan_batch({0: 100}, {0: 10_000}, max_messages=2_500, task_messages=1_000)
    assert ranges == [OffsetRange(0, 100, 1100), OffsetRange(0, 1100, 2100), OffsetRange(0, 2100, 2600)]


def test_plan_shares_the_batch_evenly_and_gives_a_quiet_partition_its_whole_backlog():
    ranges = plan_batch({0: 0, 1: 50, 2: 7}, {0: 1_000_000, 1: 60, 2: 1_000_000}, max_messages=1000,
                        task_messages=10_000)
    by_partition = {r.partition: r for r in ranges}
    assert by_partition[1] == OffsetRange(1, 50, 60)  # its whole backlog of 10
    assert by_partition[0].size + by_partition[2].size == 990  # the rest, split evenly
    assert abs(by_partition[0].size - by_partition[2].size) <= 1
    assert by_partition[2].start == 7


def test_plan_never_exceeds_the_cap_however_large_the_backlog():
    positions = {p: 0 for p in range(7)}
    for cap in (1, 6, 7, 100, 12_345):
        ranges = plan_batch(positions, {p: 10**9 for p in range(7)}, max_messages=cap, task_messages=500)
        assert sum(r.size for r in ranges) == cap
        assert all(0 < r.size <= 500 for r in ranges)


def test_plan_is_empty_when_caught_up_and_consecutive_plans_are_contiguous():
    assert plan_batch({0: 5, 1: 9}, {0: 5, 1: 3}, max_messages=10, task_messages=10) == []
    positions, ends, seen = {0: 0, 1: 0}, {0: 25, 1: 13}, []
    while ranges := plan_batch(positions, ends, max_messages=7, task_messages=3):
        for r in ranges:
            assert r.start == positions[r.partition]
            positions[r.partition] = r.end
            seen.append(r)
    assert positions == ends
    assert sum(r.size for r in seen) == 38


def test_plan_rejects_a_zero_cap():
    with pytest.raises(ValueError, match="must be >= 1"):
        plan_batch({0: 0}, {0: 5}, max_messages=0, task_messages=5)


# ---------------------------------------------------------------- file names and checkpoint


def test_file_names_derive_from_topic_partition_and_range_and_sort_by_offset():
    name = file_name("card-tx.v2", OffsetRange(3, 990, 1500))
    assert name == "card-tx.v2-00003-0000000000000000990-0000000000000001500.parquet"
    assert parse_file_name(name) == ("card-tx.v2", OffsetRange(3, 990, 1500))
    assert parse_file_name("part-0.parquet") is None
    names = [file_name("t", OffsetRange(0, s, s + 10)) for s in (5, 100, 20, 1000)]
    assert sorted(names) == [file_name("t", OffsetRange(0, s, s + 10)) for s in (5, 20, 100, 1000)]


def test_checkpoint_round_trip_plan_then_commit(tmp_path):
    output = Output(str(tmp_path / "out"))
    assert load_state(output) is None
    state = IngestState("tx", "event_time", committed={0: 40})
    planned = state.planned([OffsetRange(0, 40, 50), OffsetRange(1, 0, 30), OffsetRange(1, 30, 35)])
    save_state(output, planned)
    loaded = load_state(output)
    assert loaded == planned and loaded.pending
    committed = loaded.commit(valid=40, quarantined=5)
    save_state(output, committed)
    loaded = load_state(output)
    assert loaded.committed == {0: 50, 1: 35} and loaded.pending == () and loaded.batch == 1
    assert loaded.totals == {"valid": 40, "quarantined": 5}
    assert os.listdir(tmp_path / "out" / TMP_DIR) == []  # written through a temporary file, then renamed


def test_a_corrupt_checkpoint_is_reported_with_the_fix(tmp_path):
    path = tmp_path / CHECKPOINT_DIR / CHECKPOINT_FILE
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(DataValidationError, match="not a readable ingest checkpoint.*new location"):
        load_state(Output(str(tmp_path)))
    path.write_text(json.dumps({**IngestState("t", "ts").to_json(), "format": 99}))
    with pytest.raises(DataValidationError, match="format 99"):
        load_state(Output(str(tmp_path)))


def test_atomic_write_replaces_and_clear_tmp_removes_leftovers(tmp_path):
    output = Output(str(tmp_path))
    output.write_atomically("a/b.txt", lambda s: s.write(b"first"))
    output.write_atomically("a/b.txt", lambda s: s.write(b"second"))
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"second"
    (tmp_path / TMP_DIR / "killed-attempt.tmp").write_bytes(b"half")
    output.clear_tmp()
    assert os.listdir(tmp_path / TMP_DIR) == []


# ---------------------------------------------------------------- decoding and partitioned writes


def messages(values: list[bytes | None], partition: int = 2, first: int = 100) -> pa.Table:
    n = len(values)
    return pa.table({
        "topic": ["tx"] * n,
        "partition": pa.array([partition] * n, pa.int32()),
        "offset": pa.array(range(first, first + n), pa.int64()),
        "value": pa.array(values, pa.binary()),
        "timestamp": pa.array([1_767_229_200_000] * n, pa.int64()),  # 2026-01-01T01:00:00Z
    })


def record(i: int, at: str = "2026-01-03T10:15:00+00:00", amount: float = 5.0) -> bytes:
    return json.dumps({"id": i, "at": at, "amount": amount}).encode()


def test_every_kind_of_bad_message_is_quarantined_with_its_reason_and_position():
    values = [record(1), b"{\"id\": 2, \"at\": ", b"\xff\xfe{}", b"x" * 300, None, b"[1, 2]",
              record(7, amount=-1.0), record(8)]
    out = validate_messages(messages(values), COLUMNS, max_message_bytes=200).to_pylist()
    reasons = [row[ERROR] for row in out]
    assert reasons[0] is None and reasons[7] is None
    assert reasons[1].startswith("not valid JSON")
    assert reasons[2].startswith("not UTF-8 text")
    assert reasons[3] == ("message of 300 bytes is over source.kafka.max_message_bytes=200 "
                          "(first 4096 bytes kept in _raw)")
    assert reasons[4].startswith("empty message")
    assert reasons[5] == "not a JSON object (got list)"
    assert reasons[6] == "amount: got -1.0; below the minimum 0.0"
    assert [row[SOURCE_FILE] for row in out] == ["kafka://tx/2"] * 8
    assert [row[SOURCE_ROW] for row in out] == list(range(100, 108))
    assert out[2][RAW] == "\\xff\\xfe{}"  # undecodable bytes stay visible
    assert out[6][RAW] == record(7, amount=-1.0).decode()
    assert out[0]["at"] == dt.datetime(2026, 1, 3, 10, 15, tzinfo=dt.timezone.utc)


def test_files_go_to_date_hour_folders_named_by_range_and_a_rerun_replaces_them(tmp_path):
    values = [record(0, "2026-01-03T10:15:00Z"), record(1, "2026-01-03T11:59:59Z"), b"oops",
              record(3, "2026-01-03T10:30:00Z"), record(4, "nope")]
    batch = messages(values)
    checked = validate_messages(batch, COLUMNS, 1000)
    offsets = OffsetRange(2, 100, 105)
    output = Output(str(tmp_path))
    for _ in range(2):  # a re-run after a crash writes the same files
        written = write_files(output, "tx", offsets, checked, batch.column("timestamp"), "at")
    name = file_name("tx", offsets)
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet"))
    assert found == sorted(str(p.relative_to(tmp_path)) for p in map(type(tmp_path), written))
    assert found == [
        # quarantine by day; a record without a valid event time by its message's Kafka timestamp
        f"quarantine/event_date=2026-01-01/{name}",
        f"valid/event_date=2026-01-03/event_hour=10/{name}",
        f"valid/event_date=2026-01-03/event_hour=11/{name}",
    ]
    ten = pq.read_table(tmp_path / f"valid/event_date=2026-01-03/event_hour=10/{name}")
    assert ten.column("id").to_pylist() == [0, 3]  # offset order inside a file
    bad = pq.read_table(tmp_path / f"quarantine/event_date=2026-01-01/{name}")
    assert bad.column(SOURCE_ROW).to_pylist() == [102, 104]


# ---------------------------------------------------------------- config errors


def load(*overrides: str) -> pipeline.JobConfig:
    return pipeline.load_job(JOB, list(overrides))


def problems(*overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(*overrides)
    return str(caught.value)


def test_kafka_source_config_errors_name_the_field_and_the_fix():
    text = problems("source.kafka.bootstrap_servers=localhost", "source.kafka.consumer_config={group.id: mine}")
    assert "source.kafka.bootstrap_servers: got 'localhost'; every broker must be host:port" in text
    assert "source.kafka.consumer_config: rayml sets group.id itself; remove it" in text
    assert "start offset 50 is after end offset 10; swap them" in problems("source.kafka.start=50",
                                                                           "source.kafka.end=10")
    assert "source.path is the topic; 'data/x' is not a Kafka topic name" in problems("source.path=data/x")
    assert "format kafka needs a kafka section" in problems("source.kafka=null")
    assert "source.kafka applies to format kafka, not parquet" in problems("source.format=parquet")


def test_kafka_bounds_take_offsets_times_and_per_partition_offsets():
    job = load("source.kafka.start={0: 5, 3: 7}", "source.kafka.end=2026-01-02T00:00:00")
    assert job.source.kafka.start == {0: 5, 3: 7}
    assert job.source.kafka.end == dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)  # no zone: UTC
    assert KafkaSourceConfig(bootstrap_servers="a:1,b:2", start=3, end="latest").start == 3


def test_ingest_cross_check_needs_kafka_and_a_timestamp_column():
    assert ingest.cross_check(load()) == []
    found = ingest.cross_check(load("ingest.timestamp_column=amount"))
    assert found == ["ingest.timestamp_column: column 'amount' has type float; name a timestamp column"]
    found = ingest.cross_check(load("source.format=parquet", "source.path=data", "source.kafka=null"))
    assert found and found[0].startswith("source.format: `rayml ingest` reads Kafka")
    assert "ingest: required by `rayml ingest` but missing" in ingest.cross_check(load("ingest=null"))[0]


def test_cli_reports_ingest_and_generate_mistakes_without_a_traceback(capsys):
    from rayml.cli import main

    assert main(["ingest", str(REPO / "jobs" / "fraud_detection.yaml")]) == 2
    err = capsys.readouterr().err
    assert "`rayml ingest` reads Kafka" in err and "ingest: required" in err
    assert main(["generate", "fraud", "--rows", "10", "--kafka", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--kafka BOOTSTRAP and --topic T go together" in err and "Traceback" not in err
    assert main(["check", str(REPO / "jobs" / "fraud_stream.yaml"), "ingest.timestamp_column=amount"]) == 2
    assert "ingest.timestamp_column: column 'amount' has type float" in capsys.readouterr().err


def test_records_table_keeps_every_key_and_types_each_column_on_its_own():
    from rayml.kafka_source import records_table

    table = records_table([None, {"a": 1}, {"a": 2.5, "b": "x"}, {"a": "twelve", "c": [1]}])
    assert table.column_names == ["a", "b", "c"]  # a key missing from the first record is still read
    assert table.column("a").to_pylist() == [None, "1", "2.5", "twelve"]  # mixed types: text, as JSON lines
    assert table.column("b").to_pylist() == [None, None, "x", None]
    assert table.column("c").to_pylist() == [None, None, None, "[1]"]
    typed = records_table([{"a": 1, "b": True}, {"a": 2.5, "b": None}])
    assert typed.column("a").type == pa.float64() and typed.column("b").type == pa.bool_()


def test_a_new_partition_starts_where_source_kafka_start_says_within_its_watermarks():
    from rayml.ingest import _initial_position

    class Broker:  # answers a time lookup as a real broker does (the mock cluster answers -1)
        def offsets_for_times(self, partitions, timeout):
            return [type("Found", (), {"offset": 42 if partitions[0].offset < 2 * 10**12 else -1})()]

    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert _initial_position(Broker(), "t", 0, "earliest", 5, 90) == 5
    assert _initial_position(Broker(), "t", 0, 3, 5, 90) == 5  # deleted by retention: the oldest kept
    assert _initial_position(Broker(), "t", 0, 500, 5, 90) == 90
    assert _initial_position(Broker(), "t", 1, {0: 7}, 5, 90) == 5  # a partition not listed: earliest
    assert _initial_position(Broker(), "t", 0, {0: 7}, 5, 90) == 7
    assert _initial_position(Broker(), "t", 0, start, 5, 90) == 42
    assert _initial_position(Broker(), "t", 0, dt.datetime(3000, 1, 1, tzinfo=dt.timezone.utc), 5, 90) == 90
