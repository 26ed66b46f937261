"""A Kafka topic (librdkafka's mock cluster) as a bounded pipeline source: read with ray.data.read_kafka through
the validate stage, every message accounted for, and bad ones quarantined with topic/partition/offset."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rayml import validate
from rayml.kafka_broker import MockBroker, produce_fraud, producer, send
from rayml.pipeline import load_job
from tests.conftest import REPO

pytestmark = pytest.mark.integration

JOB = REPO / "jobs" / "fraud_stream.yaml"


@pytest.fixture(scope="module")
def kafka():
    with MockBroker() as broker:
        yield broker.bootstrap


def _source(kafka: str, topic: str, *extra: str):
    job = load_job(JOB, [f"source.path={topic}", f"source.kafka.bootstrap_servers={kafka}", *extra])
    return job.source, job.validation


def test_topic_through_the_validate_stage_reconciles_and_locates_every_bad_message(ray_cluster, kafka, tmp_path):
    summary = produce_fraud(kafka, "bounded", 3000, seed=5, bad_fraction=0.03)
    extra = {}  # an oversized message and an empty one, at positions the broker reports
    client = producer(kafka)
    for name, value in (("oversized", b'{"transaction_id": "' + b"x" * 3000 + b'"}'), ("empty", None)):
        send(client, "bounded", value, b"k", lambda err, msg, name=name: extra.setdefault(
            name, (msg.partition(), msg.offset())))
    assert client.flush(30) == 0

    source, schema = _source(kafka, "bounded", "source.kafka.max_message_bytes=2000")
    result = validate.run_stage(source, schema, tmp_path / "validate")
    assert result["read_rows"] == 3002 == result["valid_rows"] + result["quarantined_rows"]
    assert result["quarantined_rows"] == summary["bad_rows"] + 2

    quarantined = pq.ParquetDataset(result["quarantine_path"]).read().to_pylist()
    where = {(row[validate.SOURCE_FILE], row[validate.SOURCE_ROW]): row for row in quarantined}
    assert len(where) == len(quarantined)  # each once
    expected = {(f"kafka://bounded/{p}", o) for p, o in [*summary["bad_positions"], *extra.values()]}
    assert set(where) == expected
    partition, offset = extra["oversized"]
    assert where[(f"kafka://bounded/{partition}", offset)][validate.ERROR].startswith(
        "message of 3022 bytes is over source.kafka.max_message_bytes=2000")
    partition, offset = extra["empty"]
    assert where[(f"kafka://bounded/{partition}", offset)][validate.ERROR].startswith("empty message")
    reasons = [row[validate.ERROR] for row in quarantined]
    assert sum(r.startswith(("not valid JSON", "not UTF-8 text")) for r in reasons) == summary["undecodable"]
    assert any(r.startswith("merchant_category: got 'carrier-pigeon'") for r in reasons)

    valid = pq.ParquetDataset(result["valid_path"]).read(columns=["transaction_id"]).column(0).to_pylist()
    assert len(valid) == len(set(valid)) == summary["good_rows"]
    assert not set(valid) & set(summary["bad_ids"])


def test_topic_read_between_offsets(ray_cluster, kafka, tmp_path):
    client = producer(kafka)
    for i in range(400):
        send(client, "ranged", json.dumps({"transaction_id": f"t{i}"}).encode(), str(i).encode())
    assert client.flush(30) == 0
    source, schema = _source(kafka, "ranged", "source.kafka.start=10", "source.kafka.end=25",
                             "validation.max_bad_fraction=1.0")
    result = validate.run_stage(source, schema, tmp_path / "validate")
    rows = pq.ParquetDataset(result["quarantine_path"]).read().to_pylist()  # every column but one is missing
    by_partition: dict[str, list[int]] = {}
    for row in rows:
        by_partition.setdefault(row[validate.SOURCE_FILE], []).append(row[validate.SOURCE_ROW])
    assert {name: sorted(offsets) for name, offsets in by_partition.items()} == {
        f"kafka://ranged/{p}": list(range(10, 25)) for p in range(4)
    }
