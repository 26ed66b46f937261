"""`rayml ingest` against a real Kafka protocol broker (librdkafka's mock cluster) on the shared Ray cluster:
SIGKILLed at random points and restarted, every message still lands exactly once; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayml.ingest.plan import CHECKPOINT_DIR, CHECKPOINT_FILE, QUARANTINE_DIR, VALID_DIR
from rayml.kafka_broker import MockBroker, produce_fraud
from rayml.validate import SOURCE_FILE, SOURCE_ROW
from tests.conftest import REPO

pytestmark = pytest.mark.integration

JOB = REPO / "jobs" / "fraud_stream.yaml"


@pytest.fixture(scope="module")
def kafka():
    with MockBroker() as broker:
        yield broker.bootstrap


def _command(kafka: str, topic: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rayml", "ingest", str(JOB), f"source.path={topic}",
            f"source.kafka.bootstrap_servers={kafka}", f"ingest.output={out}", *extra]


def _checkpoint(out: Path) -> dict:
    try:
        return json.loads((out / CHECKPOINT_DIR / CHECKPOINT_FILE).read_text())
    except (OSError, ValueError):  # not written yet
        return {}


def _wait(process: subprocess.Popen, ready, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert process.poll() is None, f"ingest exited with {process.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(0.02)


def _progressed(before: dict, now: dict) -> bool:
    """A micro-batch committed, or a new one planned, since ``before``."""
    return now.get("batch", 0) > before.get("batch", 0) or now.get("pending", []) not in ([], before.get("pending"))


def _output(out: Path) -> tuple[list[str], list[tuple[str, int]]]:
    valid = pq.ParquetDataset(out / VALID_DIR).read(columns=["transaction_id"]).column(0).to_pylist()
    bad = pq.ParquetDataset(out / QUARANTINE_DIR).read(columns=[SOURCE_FILE, SOURCE_ROW]).to_pylist()
    return valid, [(row[SOURCE_FILE], row[SOURCE_ROW]) for row in bad]


def test_sigkill_at_random_points_then_restart_ingests_every_message_exactly_once(ray_cluster, kafka, tmp_path):
    topic, out = "exactly-once", tmp_path / "out"
    summary = produce_fraud(kafka, topic, 6000, seed=7, bad_fraction=0.04)
    command = _command(kafka, topic, out, "ingest.max_batch_messages=600", "ingest.task_messages=200",
                       "--until-caught-up")
    rng = random.Random(20260101)
    recovered = 0
    with open(tmp_path / "ingest.log", "w+") as log:
        for attempt in range(4):
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                before = _checkpoint(out)
                # Kill once a new micro-batch is planned (its plan saved, its files being written), right away or
                # a random moment later (files written, offsets maybe committed).
                _wait(process, lambda before=before: _progressed(before, _checkpoint(out)), "a new micro-batch")
                time.sleep(0 if attempt % 2 == 0 else rng.uniform(0.05, 0.6))
            finally:
                process.kill()
                process.wait()
            recovered += bool(_checkpoint(out).get("pending"))
        final = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=300)
        log.seek(0)
        text = log.read()
    assert final.returncode == 0, text[-3000:]
    assert recovered >= 1 and text.count("re-running the uncommitted micro-batch") >= recovered, text[-3000:]

    valid, quarantined = _output(out)
    good = sorted(set(f"tx-{i:012d}" for i in range(6000)) - set(summary["bad_ids"]))
    assert sorted(valid) == good  # every valid message, once
    assert sorted(quarantined) == sorted((f"kafka://{topic}/{p}", o) for p, o in summary["bad_positions"])
    state = _checkpoint(out)
    assert state["pending"] == [] and sum(state["committed"].values()) == 6000
    assert state["totals"] == {"valid": len(good), "quarantined": summary["bad_rows"]}
    assert not list((out / "_tmp").iterdir())


def test_sigterm_finishes_the_batch_and_exits_cleanly(ray_cluster, kafka, tmp_path):
    topic, out = "stoppable", tmp_path / "out"
    produce_fraud(kafka, topic, 1500, seed=8, bad_fraction=0.02)
    process = subprocess.Popen(_command(kafka, topic, out, "ingest.poll_interval_s=0.5"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:  # runs on, polling for more, once everything is in
        _wait(process, lambda: sum(_checkpoint(out).get("committed", {}).values()) == 1500, "every message committed")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-3000:]
    assert "SIGTERM: finishing the current micro-batch, then stopping" in output
    assert "ingested 1,500 messages (1,470 valid, 30 quarantined)" in output
    valid, quarantined = _output(out)
    assert len(valid) == len(set(valid)) == 1470 and len(quarantined) == 30
