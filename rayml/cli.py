"""The ``rayml`` command: parse arguments, load config, dispatch to a stage. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rayml import dashboards, ingest, kafka_broker, monitor, tune
from rayml.datasets import packaged
from rayml.errors import ConfigError, RaymlError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s", stream=sys.stdout, force=True)
    logging.getLogger("rayml").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RaymlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayml", description="Ray-native end-to-end machine learning.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run the pipeline of a job config")
    run.add_argument("job", help="job YAML, e.g. jobs/fraud_detection.yaml")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2")
    run.set_defaults(func=_run)

    train = verbs.add_parser("train", help="continue a stopped run: rerun its saved job on the same run directory")
    train.add_argument("--resume", required=True, metavar="RUN_DIR",
                       help="run directory that `rayml run` created (it holds job.json), e.g. runs/fraud-1")
    train.add_argument("overrides", nargs="*", help="key=value overrides of the saved job, e.g. train.epochs=12")
    train.set_defaults(func=_train)

    check = verbs.add_parser("check", help="validate a job config and list every problem")
    check.add_argument("job")
    check.add_argument("overrides", nargs="*")
    check.set_defaults(func=_check)

    gen = verbs.add_parser("generate", help="generate a synthetic data set")
    gen.add_argument("dataset", choices=["fraud"])
    gen.add_argument("--rows", type=int, required=True)
    gen.add_argument("--out", help="output directory (must not exist or be empty)")
    gen.add_argument("--kafka", metavar="BOOTSTRAP", help="produce JSON messages to this Kafka instead of files")
    gen.add_argument("--topic", help="the Kafka topic, with --kafka")
    gen.add_argument("--span-hours", type=float, help="with --kafka: event times over this many hours, not 30 days")
    gen.add_argument("--bad-fraction", type=float, default=0.0, help="fraction of malformed records")
    gen.add_argument("--format", default="parquet", choices=["parquet", "csv", "jsonl"])
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=_generate)

    serve = verbs.add_parser("serve", help="serve a registered model over HTTP with Ray Serve")
    serve.add_argument("model", help="<registry>/<model>[/<version>] directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("overrides", nargs="*", help="serve config key=value, e.g. max_batch_size=128")
    serve.set_defaults(func=_serve)

    monitor.add_cli(verbs)
    packaged.add_cli(verbs)
    dashboards.add_cli(verbs)
    ingest.add_cli(verbs)
    kafka_broker.add_cli(verbs)
    tune.add_cli(verbs)

    demo = verbs.add_parser("demo", help="generate data, run the fraud job, serve the model, query it, stop")
    demo.add_argument("--rows", type=int, default=20_000)
    demo.add_argument("--workdir", default="demo", help="where data, runs and the registry go")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("overrides", nargs="*", help="job key=value overrides")
    demo.set_defaults(func=_demo)
    return parser


def _run(args: argparse.Namespace) -> int:
    from rayml import pipeline

    job = pipeline.load_job(args.job, args.overrides)
    result = pipeline.run(job)
    print(f"model registered at {result['version_dir']}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from rayml import pipeline

    job = pipeline.load_run(args.resume, args.overrides)
    result = pipeline.run(job)
    print(f"model registered at {result['version_dir']}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from rayml import pipeline

    job = pipeline.load_job(args.job, args.overrides)
    problems, checked = [], []
    if job.tune is not None:  # what `rayml tune` would refuse, without starting anything
        from rayml.tune import space

        problems += space.check(job, space.sample(job.tune.space, job.tune.num_samples, job.tune.seed))
        checked.append(f"tune: {job.tune.num_samples} samples")
    if job.ingest is not None:  # what `rayml ingest` would refuse
        problems += ingest.cross_check(job)
        checked.append("ingest")
    if problems:
        raise ConfigError(problems, args.job)
    extra = f"; {', '.join(checked)} checked" if checked else ""
    print(f"{args.job}: OK (job {job.name!r}, {len(job.validation.columns)} columns, {job.train.epochs} epochs"
          f"{extra})")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from rayml.datasets.fraud import generate_fraud

    if args.kafka or args.topic or args.span_hours is not None:
        return kafka_broker.generate_cli(args)
    if not args.out:
        raise ConfigError("--out is required: pass a new directory, or --kafka BOOTSTRAP --topic T", "generate")
    summary = generate_fraud(args.rows, args.out, seed=args.seed, bad_fraction=args.bad_fraction, fmt=args.format)
    print(
        f"wrote {summary['rows']} records ({summary['bad_rows']} malformed) in {len(summary['files'])} file(s) "
        f"to {args.out}; positive rate {summary['positive_rate']:.2%}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from rayml import serve

    serve.serve_forever(args.model, host=args.host, port=args.port, overrides=args.overrides)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rayml import demo

    demo.main(rows=args.rows, workdir=Path(args.workdir), port=args.port, overrides=args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
