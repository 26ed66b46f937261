"""`rayml ingest JOB.yaml`: continuous micro-batches from a Kafka topic to validated Parquet, exactly once.

Each micro-batch (see ``plan``): the driver reads the partitions' watermarks, plans offset ranges (at most
``ingest.max_batch_messages`` in all, ``ingest.task_messages`` per range), saves the plan in
``<output>/_checkpoint/offsets.json``, runs one Ray task per range (``task.ingest_range``: read the range with its
own consumer, validate it with ``kafka_source.validate_messages``, write Parquet files named
``<topic>-<partition>-<start>-<end>.parquet`` under ``valid/event_date=../event_hour=../`` and
``quarantine/event_date=../``, atomically), and only then commits the ranges' ends in the checkpoint. A restart re-runs a saved but uncommitted plan first, which
rewrites the same files, so every message lands exactly once. The driver holds no message data; each task
holds one range, so memory is bounded however far behind the ingest is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import Field

from rayml.config import StrictModel
from rayml.errors import ConfigError, DataValidationError
from rayml.ingest.plan import IngestState, OffsetRange, Output, load_state, plan_batch, save_state

if TYPE_CHECKING:
    from rayml.kafka_source import KafkaSourceConfig
    from rayml.pipeline import JobConfig

log = logging.getLogger("rayml.ingest")


class IngestConfig(StrictModel):
    """Where `rayml ingest` writes, how its output is partitioned and how large its micro-batches are."""

    output: str = Field(
        min_length=1,
        description="output root, a path or a URI such as s3://bucket/prefix: valid/, quarantine/ and "
        "_checkpoint/ go under it",
    )
    timestamp_column: str = Field(
        min_length=1, description="timestamp column whose date and hour partition the output (event_date/event_hour)"
    )
    max_batch_messages: int = Field(
        100_000, ge=1, le=10_000_000,
        description="most messages in one micro-batch over all partitions: bounds the work a restart redoes",
    )
    task_messages: int = Field(
        25_000, ge=1, le=1_000_000,
        description="most messages one Ray task reads, validates and writes: bounds a task's memory",
    )
    poll_interval_s: float = Field(2.0, gt=0, le=600, description="wait between looks at a topic with nothing new")
    read_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="fail a micro-batch whose messages stop arriving for this long"
    )


def cross_check(job: JobConfig) -> list[str]:
    """Problems that stop `rayml ingest` from running this job (besides the job's own checks)."""
    problems = []
    if job.ingest is None:
        problems.append("ingest: required by `rayml ingest` but missing. Add ingest.output and "
                        "ingest.timestamp_column")
    if job.source.format != "kafka":
        problems.append(f"source.format: `rayml ingest` reads Kafka, got {job.source.format!r}. Set source.format: "
                        "kafka, source.path: <topic> and source.kafka.bootstrap_servers")
    if job.ingest is not None:
        column = job.ingest.timestamp_column
        types = {c.name: c.type for c in job.validation.columns}
        if types.get(column) != "timestamp":
            what = "is not declared under validation.columns" if column not in types else f"has type {types[column]}"
            problems.append(f"ingest.timestamp_column: column {column!r} {what}; name a timestamp column")
    return problems


def run(job: JobConfig, *, until_caught_up: bool = False, stop: threading.Event | None = None) -> dict[str, Any]:
    """Ingest ``job``'s topic until ``stop`` is set, or (``until_caught_up``) until every message that was
    waiting when it started is committed. Returns the totals of this run."""
    from confluent_kafka import Consumer

    from rayml import recorders, runtime
    from rayml.kafka_source import consumer_settings

    config, kafka, topic = job.ingest, job.source.kafka, job.source.path
    problems = cross_check(job)
    if problems or config is None or kafka is None:
        raise ConfigError(problems, "rayml ingest")
    stop = stop or threading.Event()
    output = Output(config.output, job.storage)
    state = load_state(output) or IngestState(topic, config.timestamp_column)
    if (state.topic, state.timestamp_column) != (topic, config.timestamp_column):
        raise ConfigError(
            f"ingest.output {config.output!r} holds topic {state.topic!r} partitioned by {state.timestamp_column!r}, "
            f"not {topic!r} by {config.timestamp_column!r}: point ingest.output at a new location",
            "rayml ingest",
        )
    if kafka.end != "latest":
        log.info("source.kafka.end bounds `rayml run`'s read of the topic; `rayml ingest` reads on past it")
    output.clear_tmp()
    connected = runtime.connect(job.runtime)
    if connected != "already connected":
        log.info("%s", connected)
    settings = consumer_settings(kafka, group=f"rayml-ingest-{job.name}")
    batches = _Batches(job, config, kafka, output, settings, recorders.IngestRecorder(topic))
    broker = Consumer(settings)
    started, before = time.perf_counter(), dict(state.totals)
    try:
        if state.pending:
            log.info("re-running the uncommitted micro-batch %d (%s) of the last attempt", state.batch + 1,
                     _describe(state.pending))
            state = batches.run(state, list(state.pending))
        targets = _watermarks(broker, topic, required=True)[1] if until_caught_up else None
        while not stop.is_set():
            state, waiting = _next_batch(config, kafka, topic, broker, batches, state, targets)
            if not waiting:
                if targets is not None:
                    break
                stop.wait(config.poll_interval_s)
    finally:
        broker.close()
        batches.recorder.close()
    seconds = time.perf_counter() - started
    done = {key: state.totals[key] - before[key] for key in before}
    total = done["valid"] + done["quarantined"]
    log.info("stopped: %s messages (%s valid, %s quarantined) in %.1f s (%s msg/s); %d micro-batches committed "
             "in all", f"{total:,}", f"{done['valid']:,}", f"{done['quarantined']:,}", seconds,
             f"{total / seconds:,.0f}" if seconds > 0 else "-", state.batch)
    return {"messages": total, **done, "seconds": seconds, "batches": state.batch,
            "committed": dict(state.committed), "output": config.output}


def _next_batch(config: IngestConfig, kafka: KafkaSourceConfig, topic: str, broker: Any, batches: _Batches,
                state: IngestState, targets: dict[int, int] | None) -> tuple[IngestState, bool]:
    """Plan and run one micro-batch; returns the new state and whether any message was waiting."""
    lows, highs = _watermarks(broker, topic, required=targets is not None)
    positions = {}
    for p in sorted(highs):
        position = state.committed.get(p)
        if position is None:
            position = _initial_position(broker, topic, p, kafka.start, lows[p], highs[p])
        if position < lows[p]:
            log.warning("%s partition %d: offsets %d..%d were deleted by retention before they were ingested",
                        topic, p, position, lows[p] - 1)
            position = lows[p]
        positions[p] = position
    ends = highs if targets is None else {p: min(high, targets.get(p, 0)) for p, high in highs.items()}
    ranges = plan_batch(positions, ends, config.max_batch_messages, config.task_messages)
    if not ranges:
        batches.recorder.lag({p: max(0, highs[p] - positions[p]) for p in highs})
        return state, False
    return batches.run(state, ranges, {p: (positions[p], high) for p, high in highs.items()}), True


class _Batches:
    """Runs micro-batches: save the plan, one Ray task per range, commit."""

    def __init__(self, job: JobConfig, config: IngestConfig, kafka: KafkaSourceConfig, output: Output,
                 settings: dict[str, Any], recorder: Any) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from rayml.ingest.task import ingest_range

        self.output, self.recorder, self.topic = output, recorder, job.source.path
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": 3}
        if output.local:  # a local output is on this machine's disk: write it from here
            node = ray.get_runtime_context().get_node_id()
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        self._task = ray.remote(ingest_range).options(**options)
        self._args = (settings, self.topic)
        self._kwargs = {
            "columns": job.validation.columns, "max_message_bytes": kafka.max_message_bytes,
            "output_uri": output.root if output.local else output.uri, "filesystem": output.fs,
            "timestamp_column": config.timestamp_column, "timeout_s": config.read_timeout_s,
        }

    def run(self, state: IngestState, ranges: list[OffsetRange],
            watermarks: dict[int, tuple[int, int]] | None = None) -> IngestState:
        """Run ``ranges`` as one micro-batch; ``watermarks`` (partition: (position, high watermark) when planned)
        give the lag to report."""
        import ray

        started = time.perf_counter()
        state = state.planned(ranges)
        save_state(self.output, state)
        results = ray.get([self._task.remote(*self._args, offsets, **self._kwargs) for offsets in ranges])
        valid = sum(r["valid"] for r in results)
        bad = sum(r["quarantined"] for r in results)
        self.output.sync()  # the files are on disk before the commit counts them
        state = state.commit(valid, bad)
        save_state(self.output, state)
        seconds = time.perf_counter() - started
        self.recorder.batch(valid, bad, seconds, time.time())
        lag = ""
        if watermarks is not None:
            behind = {p: max(0, high - state.committed.get(p, at)) for p, (at, high) in watermarks.items()}
            self.recorder.lag(behind)
            lag = f"; lag {sum(behind.values()):,} messages"
        skipped = sum(r["skipped"] for r in results)
        log.info("micro-batch %d: %s messages (%s valid, %s quarantined) in %.2f s (%s msg/s), %d files%s%s",
                 state.batch, f"{valid + bad:,}", f"{valid:,}", f"{bad:,}", seconds,
                 f"{(valid + bad) / seconds:,.0f}", sum(r["files"] for r in results), lag,
                 f"; {skipped} offsets held no message (retention, compaction or transaction markers)"
                 if skipped else "")
        return state


def _watermarks(broker: Any, topic: str, required: bool) -> tuple[dict[int, int], dict[int, int]]:
    """(low, high) watermark of every partition of ``topic``. A topic that does not exist yet has none, which is
    an error only when ``required``."""
    from confluent_kafka import KafkaException, TopicPartition

    try:
        metadata = broker.list_topics(topic, timeout=10)
    except KafkaException as exc:
        raise DataValidationError(f"cannot reach Kafka ({exc}); check source.kafka.bootstrap_servers") from exc
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        if required:
            raise DataValidationError(f"topic {topic!r} does not exist; produce to it first, or fix source.path")
        return {}, {}
    lows, highs = {}, {}
    for p in sorted(described.partitions):
        try:
            lows[p], highs[p] = broker.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        except KafkaException as exc:
            raise DataValidationError(f"cannot read the offsets of {topic} partition {p} ({exc})") from exc
    return lows, highs


def _initial_position(broker: Any, topic: str, partition: int, start: Any, low: int, high: int) -> int:
    """Where a partition never ingested before starts: ``source.kafka.start`` resolved against its watermarks."""
    from confluent_kafka import TopicPartition

    if start == "earliest":
        return low
    if isinstance(start, dict):
        return min(max(start.get(partition, low), low), high)
    if isinstance(start, int):
        return min(max(start, low), high)
    at = int(start.timestamp() * 1000) if isinstance(start, dt.datetime) else 0
    found = broker.offsets_for_times([TopicPartition(topic, partition, at)], timeout=10)
    return found[0].offset if found and found[0].offset >= 0 else high


def _describe(ranges: tuple[OffsetRange, ...] | list[OffsetRange]) -> str:
    return ", ".join(f"p{r.partition} [{r.start}, {r.end})" for r in ranges)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the current micro-batch finishes, then the ingest returns); a second one
    interrupts at once."""
    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("%s: finishing the current micro-batch, then stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(args: Any) -> int:
    """The ``ingest`` verb."""
    from rayml import pipeline, runtime

    job = pipeline.load_job(args.job, args.overrides)
    problems = cross_check(job)
    if problems:
        raise ConfigError(problems, args.job)
    log.info("%s", runtime.connect(job.runtime))  # before the handlers: ray.init installs its own SIGTERM one
    stop = threading.Event()
    with stop_on_signals(stop):
        summary = run(job, until_caught_up=args.until_caught_up, stop=stop)
    print(f"ingested {summary['messages']:,} messages ({summary['valid']:,} valid, {summary['quarantined']:,} "
          f"quarantined) into {summary['output']}")
    return 0


def add_cli(verbs: Any) -> None:
    """The ``ingest`` verb."""
    ingest = verbs.add_parser("ingest", help="ingest a Kafka topic into validated Parquet, exactly once")
    ingest.add_argument("job", help="job YAML with source.format: kafka and an ingest section")
    ingest.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ingest.output=data/stream")
    ingest.add_argument("--until-caught-up", action="store_true",
                        help="stop once every message waiting at the start is ingested (default: run until stopped)")
    ingest.set_defaults(func=main)
