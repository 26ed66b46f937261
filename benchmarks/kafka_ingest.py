"""Does `rayml ingest` keep up with a plain Kafka consumer?

Messages/s of `rayml ingest JOB --until-caught-up` (one Ray task per offset range: decode, validate against the
job's schema, quarantine, Parquet by event date/hour, exactly-once checkpoint) against a plain confluent-kafka
loop in one process (consume, json.loads, Parquet by event date/hour; no validation, no checkpoint, no
exactly-once), on the same topic of the librdkafka mock broker, in the same run; medians of ``--repeats``.

The `rayml ingest` figure is the whole command as a user runs it against a running cluster (Python start,
connecting to Ray, the job's first Ray workers); "ingest loop" is the rate it logs itself (first plan to last
commit). The stream's event times span ``--span-hours`` (default 6), as a live stream of that rate would; the
generator's own 30-day span would give every micro-batch hundreds of near-empty hour folders.

    .venv/bin/python benchmarks/kafka_ingest.py                          # 200k messages, 3 repeats
    .venv/bin/python benchmarks/kafka_ingest.py --messages 50000 --repeats 1

The mock broker keeps ~5 MiB of compressed batches per partition (4 partitions): about 300k generated messages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rayml.kafka_broker import MockBroker, produce_fraud  # noqa: E402
from tests.conftest import free_port  # noqa: E402

TOPIC = "bench"


def plain_loop(bootstrap: str, partitions: dict[int, int], out: Path) -> int:
    """Consume every message, decode the JSON, write Parquet by event date/hour: what a hand-written consumer does."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"plain-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in partitions])
    total, seen, batch_no = sum(partitions.values()), 0, 0
    while seen < total:
        rows = []
        for message in consumer.consume(min(10_000, total - seen), timeout=1.0):
            seen += 1
            try:
                record = json.loads(message.value())
            except ValueError:
                continue
            if isinstance(record, dict):
                rows.append(record)
        if not rows:
            continue
        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a malformed record mixes types: keep everything as text
            table = pa.Table.from_pylist([{k: None if v is None else str(v) for k, v in r.items()} for r in rows])
        when = pd.to_datetime(table.column("event_time").to_pandas(), utc=True, format="ISO8601", errors="coerce")
        table = table.append_column("event_date", pa.array(when.dt.strftime("%Y-%m-%d")))
        table = table.append_column("event_hour", pa.array(when.dt.strftime("%H")))
        pq.write_to_dataset(table, str(out), partition_cols=["event_date", "event_hour"],
                            basename_template=f"part-{batch_no}-{{i}}.parquet")
        batch_no += 1
    consumer.close()
    return seen


def start_ray(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(workdir / "ray.log", "w")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--num-cpus={os.cpu_count()}",
         "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
         f"--metrics-export-port={free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in (workdir / "ray.log").read_text(errors="replace"):
        if head.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"ray start failed: {(workdir / 'ray.log').read_text()[-2000:]}")
        time.sleep(0.5)
    return head, f"127.0.0.1:{port}"


def rayml_ingest(bootstrap: str, address: str, out: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds of the command, and the messages/s its own summary line reports."""
    command = [sys.executable, "-m", "rayml", "ingest", str(REPO / "jobs" / "fraud_stream.yaml"),
               f"source.path={TOPIC}", f"source.kafka.bootstrap_servers={bootstrap}", f"ingest.output={out}",
               *extra, "--until-caught-up"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": address},
                          cwd=REPO, timeout=600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"rayml ingest failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rate = re.search(r"stopped: .* \(([\d,]+) msg/s\)", done.stdout)
    return wall, float(rate.group(1).replace(",", "")) if rate else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bad-fraction", type=float, default=0.01)
    parser.add_argument("--span-hours", type=float, default=6.0)
    parser.add_argument("overrides", nargs="*", help="job overrides for rayml ingest, e.g. ingest.task_messages=50000")
    args = parser.parse_args()
    from confluent_kafka import Consumer, TopicPartition

    workdir = Path(tempfile.mkdtemp(prefix="rayml-kafka-bench-"))
    with MockBroker() as broker:
        started = time.perf_counter()
        produce_fraud(broker.bootstrap, TOPIC, args.messages, seed=1, bad_fraction=args.bad_fraction,
                      span_hours=args.span_hours)
        probe = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "probe"})
        marks = {p: probe.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10) for p in range(4)}
        probe.close()
        kept = sum(high - low for low, high in marks.values())
        if kept != args.messages or any(low for low, _ in marks.values()):
            raise SystemExit(f"the mock broker kept {kept:,} of {args.messages:,} messages (it keeps ~5 MiB per "
                             "partition); pass fewer --messages")
        print(f"produced {args.messages:,} messages ({args.bad_fraction:.0%} malformed) in "
              f"{time.perf_counter() - started:.0f} s; per partition {[h for _, h in marks.values()]}", flush=True)
        head, address = start_ray(workdir)
        plain, ingest, loop = [], [], []
        try:
            for repeat in range(args.repeats):
                out = workdir / f"plain-{repeat}"
                t0 = time.perf_counter()
                assert plain_loop(broker.bootstrap, {p: h for p, (_, h) in marks.items()}, out) == args.messages
                plain.append(time.perf_counter() - t0)
                wall, rate = rayml_ingest(broker.bootstrap, address, workdir / f"rayml-{repeat}", args.overrides)
                ingest.append(wall)
                loop.append(rate)
                print(f"repeat {repeat + 1}: plain loop {plain[-1]:.1f} s, rayml ingest {wall:.1f} s "
                      f"(ingest loop {rate:,.0f} msg/s)", flush=True)
                shutil.rmtree(out)
                shutil.rmtree(workdir / f"rayml-{repeat}")
        finally:
            head.terminate()
            head.wait(timeout=60)
    n = args.messages
    plain_rate, ingest_rate = n / statistics.median(plain), n / statistics.median(ingest)
    print(f"\n{n:,} messages, {os.cpu_count()} CPU cores, medians of {args.repeats}")
    print("| consumer | seconds | messages/s | vs plain loop |")
    print("|---|---|---|---|")
    print(f"| plain confluent-kafka loop (1 process) | {statistics.median(plain):.1f} | {plain_rate:,.0f} | 1.00x |")
    print(f"| `rayml ingest --until-caught-up` (whole command) | {statistics.median(ingest):.1f} | "
          f"{ingest_rate:,.0f} | {ingest_rate / plain_rate:.2f}x |")
    print(f"| rayml ingest loop (its own log: first plan to last commit) | - | {statistics.median(loop):,.0f} | "
          f"{statistics.median(loop) / plain_rate:.2f}x |")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
