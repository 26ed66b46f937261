"""A Kafka broker for tests and the local demo, and a producer of the generated fraud stream.

`rayml kafka-broker` (or ``python -m rayml.kafka_broker``) runs librdkafka's mock cluster: real Kafka protocol
on a 127.0.0.1 port, held by this one long-lived process, which prints its bootstrap address (and writes it to
``--address-file``) for the other processes: producers, `rayml ingest`, Ray's read tasks. ``MockBroker`` starts
one for tests and benchmarks. What the mock cluster does differently from a real broker:

- topics are created on first use, with 4 partitions (it does not answer CreateTopics);
- each partition keeps only its last ~5 MiB of (compressed) message batches: produce compressed, and ingest
  before that fills up (``produce_fraud`` uses zstd: about 60k generated records per partition);
- it does not look offsets up by time (``offsets_for_times`` answers -1), so time-bounded reads need a real broker.

``produce_fraud`` sends ``rayml.datasets.fraud``'s records as JSON messages (key = user id). Its malformed
messages are the generator's bad records (schema violations), of which every third becomes bytes no consumer
can decode: alternately cut-off JSON and bytes that are not UTF-8.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from rayml.errors import RaymlError

PARTITIONS = 4  # of a topic the mock cluster creates on first use
_BANNER = "Kafka mock broker at "


def serve(address_file: str | None = None, exit_on_stdin_eof: bool = False) -> int:
    """Run the mock cluster in this process until SIGINT/SIGTERM (or end of stdin); print its address first."""
    from confluent_kafka.admin import AdminClient

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # The cluster lives as long as the client that created it; its brokers listen on 127.0.0.1.
    client = AdminClient({"test.mock.num.brokers": 1, "log_level": 3})
    brokers = client.list_topics(timeout=10).brokers
    address = ",".join(f"{b.host}:{b.port}" for b in brokers.values())
    if address_file:
        tmp = f"{address_file}.tmp"
        Path(tmp).write_text(address + "\n")
        os.replace(tmp, address_file)
    print(f"{_BANNER}{address} (Ctrl-C stops it)", flush=True)
    if exit_on_stdin_eof:  # the parent holds our stdin: when it goes away, so do we
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    if address_file and Path(address_file).read_text().strip() == address:
        Path(address_file).unlink()
    return 0


class MockBroker:
    """A mock-cluster process for the duration of a ``with`` block; ``bootstrap`` is its address."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.bootstrap = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> MockBroker:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "rayml.kafka_broker", "--exit-on-stdin-eof"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = _read_line(self._process, self.timeout_s)
        if not line.startswith(_BANNER):
            self.__exit__(None, None, None)
            raise RaymlError(f"the Kafka mock broker did not start (it printed {line!r})")
        self.bootstrap = line[len(_BANNER):].split(" ", 1)[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(process.stdout.readline() if process.stdout else ""),
                              daemon=True)
    reader.start()
    reader.join(timeout_s)
    return found[0].strip() if found else ""


def producer(bootstrap: str, **extra: Any) -> Any:
    """A confluent-kafka Producer batching and compressing as a high-throughput producer would."""
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 200, "batch.size": 1_000_000,
                     "compression.type": "zstd", "queue.buffering.max.messages": 200_000, **extra})


def send(client: Any, topic: str, value: bytes | None, key: bytes | None = None, on_delivery: Any = None) -> None:
    """Produce one message, waiting for room when the local queue is full."""
    while True:
        try:
            client.produce(topic, value=value, key=key, on_delivery=on_delivery)
            return
        except BufferError:
            client.poll(0.1)


def produce_fraud(bootstrap: str, topic: str, rows: int, *, seed: int = 0, bad_fraction: float = 0.0,
                  span_hours: float | None = None) -> dict[str, Any]:
    """Produce ``rows`` generated transactions to ``topic`` as JSON messages, in transaction order.

    The generator spreads event times over 30 days; ``span_hours`` squeezes them into that many hours from its
    start, as a live stream of that rate would have them. Returns the generator's summary plus ``bad_positions``
    (sorted ``[partition, offset]`` of every malformed message), ``undecodable`` (how many of them are not JSON
    at all) and ``topic``.
    """
    import datetime as dt
    import json

    from rayml.datasets.fraud import generate_fraud

    bad_positions: list[list[int]] = []
    failures: list[str] = []

    def bad_delivered(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(str(error))
        else:
            bad_positions.append([message.partition(), message.offset()])

    with tempfile.TemporaryDirectory(prefix="rayml-fraud-") as tmp:
        summary = generate_fraud(rows, Path(tmp) / "data", seed=seed, bad_fraction=bad_fraction, fmt="jsonl")
        bad_ids = set(summary["bad_ids"])
        client = producer(bootstrap)
        turn = 0
        for name in summary["files"]:
            with open(Path(tmp) / "data" / name, "rb") as lines:
                for line in lines:
                    value = line.rstrip(b"\n")
                    record = json.loads(value)
                    key = str(record.get("user_id")).encode()
                    if span_hours is not None and _squeeze(record, span_hours / (30 * 24), dt):
                        value = json.dumps(record, separators=(",", ":")).encode()
                    if record["transaction_id"] not in bad_ids:
                        send(client, topic, value, key)
                        continue
                    if turn % 3 == 2:  # every third malformed message: undecodable bytes
                        value = value[: len(value) // 2] if turn % 6 == 2 else b"\xff\xfe" + value[2:]
                    turn += 1
                    send(client, topic, value, key, on_delivery=bad_delivered)
            client.poll(0)
        remaining = client.flush(120)
    if remaining or failures:
        raise RaymlError(f"could not produce to {topic!r} at {bootstrap}: {remaining} message(s) undelivered "
                         f"{'; '.join(failures[:3])}; is the broker running (rayml kafka-broker)?")
    return {**summary, "topic": topic, "bad_positions": sorted(bad_positions), "undecodable": turn // 3}


def _squeeze(record: dict[str, Any], factor: float, dt: Any) -> bool:
    """Scale the record's event time towards the generator's start; False when it has no readable time."""
    try:
        when = dt.datetime.fromisoformat(record["event_time"])
    except (KeyError, TypeError, ValueError):
        return False
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    record["event_time"] = (start + (when - start) * factor).isoformat()
    return True


def generate_cli(args: Any) -> int:
    """`rayml generate fraud --kafka BOOTSTRAP --topic T`: the generated stream, produced to Kafka."""
    from rayml.errors import ConfigError
    from rayml.kafka_source import TOPIC_PATTERN

    problems = []
    if not args.kafka or not args.topic:
        problems.append("--kafka BOOTSTRAP and --topic T go together; pass both")
    elif not TOPIC_PATTERN.fullmatch(args.topic):
        problems.append(f"--topic {args.topic!r} is not a Kafka topic name (letters, digits, '.', '_', '-')")
    if args.out or args.format != "parquet":
        problems.append("--out and --format write files; with --kafka leave them out")
    if problems:
        raise ConfigError(problems, "generate")
    summary = produce_fraud(args.kafka, args.topic, args.rows, seed=args.seed, bad_fraction=args.bad_fraction,
                            span_hours=args.span_hours)
    print(f"produced {summary['rows']} messages ({summary['bad_rows']} malformed, {summary['undecodable']} of them "
          f"not JSON) to {args.topic} at {args.kafka}; positive rate {summary['positive_rate']:.2%}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rayml.kafka_broker", description=__doc__.split("\n")[0])
    _arguments(parser)
    args = parser.parse_args(argv)
    return serve(args.address_file, args.exit_on_stdin_eof)


def _arguments(parser: Any) -> None:
    parser.add_argument("--address-file", help="also write the bootstrap address to this file (removed on exit)")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when standard input closes")


def add_cli(verbs: Any) -> None:
    """The ``kafka-broker`` verb."""
    broker = verbs.add_parser("kafka-broker", help="run a local Kafka (librdkafka's mock cluster) until Ctrl-C")
    _arguments(broker)
    broker.set_defaults(func=lambda args: serve(args.address_file, args.exit_on_stdin_eof))


if __name__ == "__main__":
    sys.exit(main())
