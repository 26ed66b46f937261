"""Data-pipeline benchmark: read -> validate -> featurize -> write Parquet, rayml's Ray Data stages against
a single-process pyarrow/pandas program doing the same work on the same generated fraud transactions.

- rayml: ``pipeline.load_job(jobs/fraud_detection.yaml, overrides)`` (tracking off), ``pipeline.start`` and
  the timed ``pipeline.prepare``: the validate stage (read, check every record, write
  ``records/_status=valid`` and ``_status=quarantined``, gathering the featurizer's statistics of the train
  records as it writes them) then the featurize stage (fit from those statistics, read the valid records, split
  by key, featurize, write the featurized train/val/test Parquet).
- baseline, one process, no Ray: the same reader (``rayml.source.iter_raw_batches``) and ``validate_batch``
  in a plain loop, valid and quarantined records written to Parquet and the valid ones kept in memory (no
  re-read), the same split (``rayml.split.assign``), fit (``partial_stats``/``merge_stats`` on train) and
  transform, the three splits written to Parquet. Both sides must agree on every count and on the fitted
  state, or the run fails.

Each Ray setting runs in a child process that starts Ray once (plus a warm-up that starts its workers), both
untimed, then alternates baseline and rayml repeats; the table shows medians. To say how each side scales with
cores, the child runs once per ``--cores`` count, pinned (CPU affinity, inherited by every Ray process) to that
many cores, with its own baseline. From the repository root:

    .venv/bin/python benchmarks/data_pipeline.py     # 1M rows, Ray CPUs default then 1 (about 6 minutes)
    .venv/bin/python benchmarks/data_pipeline.py --cores 2,1 --ray-cpus default    # 2 cores, then 1 core
    .venv/bin/python benchmarks/data_pipeline.py --rows 100000 --repeats 1 --out /tmp/dp.md --profile
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "fraud_detection.yaml"


def sample_load(samples: list[float], stop: threading.Event) -> None:
    """Append the 1-minute load average to ``samples`` every 5 s until ``stop`` is set."""
    while not stop.wait(5.0):
        samples.append(os.getloadavg()[0])


def ensure_data(rows: int, bad_fraction: float, root: Path) -> Path:
    """Generated fraud transactions under ``root`` (reused when the generator summary matches)."""
    from rayml.datasets.fraud import generate_fraud

    data = root / f"fraud-{rows}"
    summary = data / "_generator.json"
    if summary.is_file():
        found = json.loads(summary.read_text())
        if (found.get("rows"), found.get("bad_rows")) == (rows, round(rows * bad_fraction)):
            return data
    shutil.rmtree(data, ignore_errors=True)
    generate_fraud(rows, data, seed=0, bad_fraction=bad_fraction)
    return data


def job_for(data: Path, work: Path, name: str, runtime: list[str]) -> Any:
    from rayml import pipeline

    overrides = [f"source.path={data}", f"run.root={work / 'runs'}", f"run.name={name}",
                 "tracking.enabled=false", *runtime]
    return pipeline.load_job(JOB, overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rayml(job: Any) -> dict[str, Any]:
    """One timed ``pipeline.prepare`` (the run directory is created first, untimed)."""
    from rayml import featurize, pipeline

    run_dir = pipeline.start(job)
    cpu_before = ray_cpu_times()
    started = time.perf_counter()
    validated, featurized = pipeline.prepare(job, run_dir)
    seconds = time.perf_counter() - started
    cpu_after = ray_cpu_times()
    state = featurize.loads(Path(featurized["state_path"]).read_text())
    counts = {"read": validated["read_rows"], "valid": validated["valid_rows"],
              "quarantined": validated["quarantined_rows"], **featurized["rows"]}
    shutil.rmtree(run_dir)
    cpu = sum(t - cpu_before.get(pid, 0.0) for pid, t in cpu_after.items())
    stages = {"validate": validated["seconds"], "featurize": featurized["seconds"]}
    return {"seconds": seconds, "stages": stages, "cpu_s": cpu, "counts": counts, "state": state}


def ray_cpu_times() -> dict[int, float]:
    """CPU seconds so far of this process and its descendants, which are the embedded Ray's (GCS, raylet,
    dashboard, workers): what a run costs, whichever process spends it. Each process's count includes its
    children that have exited (workers and actors Ray Data started and stopped during the run)."""
    import psutil

    me = psutil.Process()
    times = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            cpu = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        times[proc.pid] = cpu.user + cpu.system + cpu.children_user + cpu.children_system
    return times


def run_baseline(job: Any, out: Path) -> dict[str, Any]:
    """The same work in one process: validate + write records, then split, fit, transform, write."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rayml.source import iter_raw_batches, list_files
    from rayml.validate import ERROR, output_schema, validate_batch

    config = job.features
    needed = sorted({config.label, job.split.key, *config.numeric, *config.categorical, *config.embed,
                     *config.media_columns(), *config.keep})
    started, cpu_started = time.perf_counter(), time.process_time()
    schema = output_schema(job.validation.columns)
    writers = {}
    for status in ("valid", "quarantined"):
        (out / "records" / f"_status={status}").mkdir(parents=True)
        writers[status] = pq.ParquetWriter(out / "records" / f"_status={status}" / "part-0.parquet", schema)
    counts = {"read": 0, "valid": 0, "quarantined": 0}
    kept: list[pa.Table] = []
    for path in list_files(job.source.path, job.source.format):
        for raw in iter_raw_batches(path, job.source.format, job.source.batch_rows):
            table = validate_batch(raw.table, job.validation.columns, raw.files or path, raw.rows,
                                   raw.originals, raw.problems)
            ok = pc.is_null(table.column(ERROR))
            valid, bad = table.filter(ok), table.filter(pc.invert(ok))
            for status, part in (("valid", valid), ("quarantined", bad)):
                if part.num_rows:
                    writers[status].write_table(part)
                counts[status] += part.num_rows
            counts["read"] += table.num_rows
            kept.append(valid.select(needed))
    for writer in writers.values():
        writer.close()
    validated = time.perf_counter()
    state, rows = featurize_in_memory(kept, job, out)
    finished = time.perf_counter()
    shutil.rmtree(out)
    return {"seconds": finished - started,
            "stages": {"validate": validated - started, "featurize": finished - validated},
            "cpu_s": time.process_time() - cpu_started, "counts": {**counts, **rows}, "state": state}


def featurize_in_memory(kept: list[Any], job: Any, out: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Split ``kept`` (valid record batches) by key, fit on train, write each split's features as Parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayml import featurize
    from rayml.split import SPLITS, assign

    config, split = job.features, job.split
    parts: dict[str, list[pa.Table]] = {name: [] for name in SPLITS}
    for table in kept:
        names = assign(table.column(split.key), split.train, split.val, split.seed)
        for name in SPLITS:
            parts[name].append(table.filter(pa.array(names == name)))
    state = featurize.merge_stats(
        (featurize.partial_stats(t, config) for t in parts["train"] if t.num_rows), config
    )
    (out / "featurize").mkdir(parents=True)
    (out / "featurize" / featurize.STATE_FILE).write_text(featurize.dumps(state))
    state = json.loads(featurize.dumps(state))  # as rayml's stage hands it on (JSON types)
    rows = {}
    for name in SPLITS:
        writer, rows[name] = None, 0
        for table in parts[name]:
            if not table.num_rows:
                continue
            features = featurize.transform(table, state)
            offsets = np.arange(0, features.size + 1, features.shape[1], dtype=np.int64)
            columns = {featurize.FEATURES: pa.LargeListArray.from_arrays(offsets, features.reshape(-1)),
                       featurize.LABEL: pa.array(featurize.labels(table, state))}
            for keep in config.keep:
                columns[keep] = table.column(keep)
            batch = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(out / "featurize" / f"{name}.parquet", batch.schema)
            writer.write_table(batch)
            rows[name] += table.num_rows
        if writer is not None:
            writer.close()
    return state, rows


def same_state(a: Any, b: Any, path: str = "state") -> list[str]:
    """Where two fitted states differ (floats to a relative 1e-9: the sums merge in another order)."""
    if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
        return [d for k in a for d in same_state(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same_state(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, (int, float)):
        return [] if abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b)) else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def warm_up(data: Path, work: Path, settings: list[str], files: int = 16) -> float:
    """Start Ray's workers and import rayml's stage modules in them (Ray start-up, untimed): one rayml run of
    the same stages over ``files`` of the input files, enough read tasks to start a worker per Ray CPU. A
    trivial task does not do it: the first timed run still spent about 5 more CPU-seconds in its workers
    (imports of the validation, Parquet and featurize code) than the next one."""
    sample = work / "warm-up-data"
    sample.mkdir(parents=True, exist_ok=True)
    for path in sorted(data.rglob("*.parquet"))[:files]:  # the same layout (event_date=... folders)
        link = sample / path.relative_to(data)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path)
    started = time.perf_counter()
    run_rayml(job_for(sample, work, "warm-up", settings))
    return time.perf_counter() - started


@contextmanager
def recording_stats() -> Iterator[list[dict[str, Any]]]:
    """Ray Data's ``Dataset.stats()`` of every execution rayml's stages start (``write_parquet`` and
    ``take_all``), captured by wrapping those two methods while the block runs."""
    from ray.data import Dataset

    entries: list[dict[str, Any]] = []
    saved = {name: getattr(Dataset, name) for name in ("write_parquet", "take_all")}

    def wrap(name: str, method: Any) -> Any:
        def wrapped(dataset: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = method(dataset, *args, **kwargs)
            entries.append({"call": name, "seconds": time.perf_counter() - started, "stats": dataset.stats()})
            return result

        return wrapped

    for name, method in saved.items():
        setattr(Dataset, name, wrap(name, method))
    try:
        yield entries
    finally:
        for name, method in saved.items():
            setattr(Dataset, name, method)


def start_ray(label: str, runtime_overrides: list[str], data: Path, work: Path) -> tuple[str, float]:
    """Start the embedded Ray as ``rayml run`` does (``runtime.connect``); its description and start-up time."""
    import ray
    from ray.data import DataContext

    from rayml import runtime

    started = time.perf_counter()
    for attempt in range(3):
        try:
            description = runtime.connect(job_for(data, work, "connect", runtime_overrides).runtime)
            break
        except Exception as exc:  # Ray's start-up times out on an overloaded machine: try again
            ray.shutdown()
            if attempt == 2:
                raise
            print(f"[{label}] Ray did not start ({exc}); trying again", flush=True)
    DataContext.get_current().enable_progress_bars = False
    return description, time.perf_counter() - started


def child(args: argparse.Namespace) -> int:
    """One Ray setting: start Ray, then ``--repeats`` alternating baseline and rayml runs; JSON to --result"""
    import ray

    settings = [] if args.num_cpus == "default" else [f"runtime.num_cpus={args.num_cpus}"]
    settings += ["runtime.haproxy=false", f"runtime.dashboard_port={free_port()}",
                 f"runtime.metrics_export_port={free_port()}"]
    data, work = Path(args.data), Path(args.work)
    description, start_s = start_ray(args.num_cpus, settings, data, work)
    ray_cpus = int(ray.cluster_resources().get("CPU", 0))
    warm_s = warm_up(data, work, settings)
    print(f"[{args.num_cpus}] {description}; start {start_s:.1f} s, warm-up {warm_s:.1f} s", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "rayml": []}
    for repeat in range(args.repeats):
        order = ("baseline", "rayml") if repeat % 2 == 0 else ("rayml", "baseline")
        for side in order:
            if side == "rayml":
                result = run_rayml(job_for(data, work, f"rayml-{repeat}", settings))
            else:
                result = run_baseline(job_for(data, work, "unused", settings), work / f"baseline-{repeat}")
            runs[side].append(result)
            stages = json.dumps({k: round(v, 2) for k, v in result["stages"].items()})
            print(f"[{args.num_cpus}] repeat {repeat} {side}: {result['seconds']:.2f} s, "
                  f"CPU {result['cpu_s']:.1f} s {stages}", flush=True)
    profile: list[dict[str, Any]] = []
    if args.profile:
        with recording_stats() as profile:
            result = run_rayml(job_for(data, work, "rayml-profile", settings))
        print(f"[{args.num_cpus}] profiled run: {result['seconds']:.2f} s", flush=True)
    out = {"setting": args.num_cpus, "ray_cpus": ray_cpus, "cores": len(os.sched_getaffinity(0)), "start_s": start_s, "warm_up_s": warm_s,
           "runs": runs, "profile": profile}
    Path(args.result).write_text(json.dumps(out, indent=1))
    ray.shutdown()
    return 0


def check_agreement(results: list[dict[str, Any]]) -> list[str]:
    """Every run, baseline or rayml, of every setting must produce the counts and fitted state of the first."""
    every = [run for found in results for side in ("baseline", "rayml") for run in found["runs"][side]]
    first, problems = every[0], []
    for run in every[1:]:
        if run["counts"] != first["counts"]:
            problems.append(f"counts differ: {run['counts']} vs {first['counts']}")
        problems += same_state(run["state"], first["state"])[:5]
    return problems


def run_setting(args: argparse.Namespace, setting: str, cores: list[int], data: Path, work: Path
                ) -> dict[str, Any]:
    """Run one Ray setting in a child process (its own Ray) pinned to ``cores`` (with everything it starts:
    Ray's processes inherit the affinity); its parsed result."""
    name = f"{len(cores)}c-{setting}"
    result = work / f"result-{name}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", "--num-cpus", setting, "--data", str(data), "--work",
               str(work / f"work-{name}"), "--repeats", str(args.repeats), "--result", str(result)]
    command += ["--profile"] if args.profile else []
    shutil.rmtree(work / f"work-{name}", ignore_errors=True)
    (work / f"work-{name}").mkdir(parents=True)
    log = work / f"child-{name}.log"  # Ray's own output; the child's progress lines go to stdout
    started = time.perf_counter()
    with log.open("w") as err:
        done = subprocess.run(command, cwd=REPO, timeout=args.timeout, stderr=err,
                              preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if not result.is_file():
        raise SystemExit(f"the {name} run failed (exit {done.returncode}); its log: {log}")
    found = json.loads(result.read_text())
    found["wall_s"] = time.perf_counter() - started
    shutil.rmtree(work / f"work-{name}", ignore_errors=True)
    return found


def median_of(runs: list[dict[str, Any]], key: str = "seconds") -> float:
    return statistics.median(r[key] if key in r else r["stages"][key] for r in runs)


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| cores | Ray CPUs | pipeline | rows | seconds | rows/s | ratio vs baseline | paired ratio | "
             "validate s | featurize s | CPU s | repeats (s) |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for found in results:
        base = median_of(found["runs"]["baseline"])
        # Each repeat runs the two sides back to back: the ratio within a repeat is the one the machine's
        # drifting speed disturbs least.
        paired = statistics.median(b["seconds"] / r["seconds"]
                                   for b, r in zip(found["runs"]["baseline"], found["runs"]["rayml"]))
        label = f"{found['cores']} | {found['ray_cpus']}" + (" (default)" if found["setting"] == "default" else "")
        for side, name in (("baseline", "single process (pyarrow/pandas)"), ("rayml", "rayml (Ray Data)")):
            runs = found["runs"][side]
            if not runs:
                continue
            rows, seconds = runs[0]["counts"]["read"], median_of(runs)
            ratio = "" if side == "baseline" else f"{base / seconds:.2f}x"
            pair = "" if side == "baseline" else f"{paired:.2f}x"
            repeats = ", ".join(f"{r['seconds']:.1f}" for r in runs)
            lines.append(f"| {label} | {name} | {rows:,} | {seconds:.1f} | {rows / seconds:,.0f} | {ratio} | {pair} | "
                         f"{median_of(runs, 'validate'):.1f} | {median_of(runs, 'featurize'):.1f} | "
                         f"{median_of(runs, 'cpu_s'):.1f} | {repeats} |")
    return lines


def profile_lines(results: list[dict[str, Any]]) -> list[str]:
    """Ray Data's stats of each dataset execution of the profiled run, condensed to operators and times."""
    keep = ("Operator", "* Remote wall time", "* Remote cpu time", "* Output num rows", "* Tasks per node")
    lines = []
    for found in results:
        if not found["profile"]:
            continue
        lines += ["", f"### Profiled rayml run, {found['cores']} cores, {found['ray_cpus']} Ray CPUs: Ray Data "
                  "stats per execution",
                  ""]
        for entry in found["profile"]:
            cpu = remote_cpu(entry["stats"])
            lines.append(f"- `{entry['call']}` took {entry['seconds']:.1f} s ({cpu:.1f} CPU s in Ray tasks):")
            lines.append("  ```")
            lines += [f"  {line.strip()}" for line in entry["stats"].splitlines()
                      if line.strip().startswith(keep)]
            lines.append("  ```")
    return lines


def remote_cpu(stats: str) -> float:
    """The sum of the ``* Remote cpu time: ..., 1.5s total`` figures of a stats text, in seconds."""
    found = re.findall(r"Remote cpu time:.*?([\d.]+)(us|ms|s) total", stats)
    return sum(float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit] for value, unit in found)


def scaling_lines(results: list[dict[str, Any]]) -> list[str]:
    """rayml's speed-up from more Ray CPUs on the same cores, and each side's from more cores."""
    lines = []
    for cores in sorted({f["cores"] for f in results}):
        by_cpus = {f["ray_cpus"]: median_of(f["runs"]["rayml"]) for f in results if f["cores"] == cores}
        if len(by_cpus) > 1:
            low, high = min(by_cpus), max(by_cpus)
            lines.append(f"- Scaling on {cores} cores: rayml with {high} Ray CPUs is {by_cpus[low] / by_cpus[high]:.2f}x "
                         f"as fast as with {low} ({by_cpus[low]:.1f} s vs {by_cpus[high]:.1f} s).")
    by_cores = {f["cores"]: f for f in results if f["setting"] == "default"}
    if len(by_cores) > 1:
        low, high = by_cores[min(by_cores)], by_cores[max(by_cores)]
        for side in ("rayml", "baseline"):
            slow, fast = median_of(low["runs"][side]), median_of(high["runs"][side])
            lines.append(f"- Scaling, {side}: {high['cores']} cores are {slow / fast:.2f}x as fast as "
                         f"{low['cores']} ({slow:.1f} s vs {fast:.1f} s).")
    return lines


def report(args: argparse.Namespace, results: list[dict[str, Any]], load: dict[str, str]) -> str:
    import platform

    import pyarrow
    import ray

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    files = len(list(Path(args.data_dir).glob("**/*.parquet")))
    lines = [
        "# Data pipeline: rayml (Ray Data) vs a single-process pyarrow/pandas baseline", "",
        f"**Machine.** {os.cpu_count()} cores (`{cpu}`), {memory:.0f} GiB RAM, Python "
        f"{platform.python_version()}, Ray {ray.__version__}, pyarrow {pyarrow.__version__}. **Load "
        f"average** (1/5/15 min) before: {load['before']}; after: {load['after']}; 1-min samples during the "
        f"run: {load['during']}.", "",
        f"**Run.** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit `{commit.stdout.strip()}` "
        f"plus the working tree: `.venv/bin/python benchmarks/data_pipeline.py {' '.join(sys.argv[1:])}`. "
        f"Data: `rayml generate fraud --rows {args.rows} --bad-fraction {args.bad_fraction}` ({files} "
        "Parquet files), job `jobs/fraud_detection.yaml`.", "",
        "**Timed.** rayml: `pipeline.prepare` (validate + featurize stages, manifests included) on an "
        "embedded Ray started once per setting (start-up and a worker warm-up excluded). Baseline: one "
        "process, the same reader, `validate_batch`, split, fit and transform, the same outputs written; it "
        "keeps the valid records in memory instead of re-reading them. Counts and fitted states checked equal. "
        f"Medians of {args.repeats} alternating repeats; ratio = baseline seconds / rayml seconds of the same "
        "child run (medians), paired ratio = the median over repeats of the ratio within one repeat; CPU s = "
        "CPU time of the process and, for rayml, of every Ray process it started.", "",
        *table(results), "",
    ]
    for found in results:
        lines.append(f"- {found['cores']} cores, {found['ray_cpus']} Ray CPUs: Ray start-up {found['start_s']:.1f} "
                     f"s and warm-up {found['warm_up_s']:.1f} s (excluded); the child run took {found['wall_s']:.0f} s.")
    lines += scaling_lines(results)
    return "\n".join(lines + profile_lines(results)) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="generated transactions (default 1M)")
    parser.add_argument("--bad-fraction", type=float, default=0.01, help="malformed records (default 0.01)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray-cpus", default="default,1",
                        help="comma-separated Ray CPU settings, one child run each: 'default' (the "
                        "job's runtime default, max(4, cores)) or a number")
    parser.add_argument("--cores", default=f"{len(os.sched_getaffinity(0))}",
                        help="comma-separated core counts: each Ray setting runs once per count, pinned to that "
                        "many of this process's cores (default: all of them). Pinned to fewer cores, Ray's own "
                        "processes share them with the work and with the baseline")
    parser.add_argument("--work", default="/tmp/rayml-bench-data", help="data and scratch directory")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_pipeline.md"))
    parser.add_argument("--profile", action="store_true", help="one more rayml run with Ray Data stats")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per child run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--num-cpus", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.child:
        return child(args)

    work = Path(args.work)
    data = ensure_data(args.rows, args.bad_fraction, work)
    args.data_dir = str(data)
    def loadavg() -> str:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())

    load, samples, stop = {"before": loadavg()}, [os.getloadavg()[0]], threading.Event()
    threading.Thread(target=sample_load, args=(samples, stop), daemon=True).start()
    # Every child runs the baseline too: pinned to fewer cores, it slows down as well (pyarrow's threads).
    allowed = sorted(os.sched_getaffinity(0))
    settings = [setting.strip() for setting in args.ray_cpus.split(",")]
    results = [run_setting(args, setting, allowed[:int(count)], data, work)
               for count in args.cores.split(",") for setting in settings]
    problems = check_agreement(results)
    if problems:
        raise SystemExit(f"the runs disagree on the outputs: {problems}")
    stop.set()
    during = f"min {min(samples):.2f}, median {statistics.median(samples):.2f}, max {max(samples):.2f}"
    load.update(after=loadavg(), during=f"{during} ({len(samples)} samples)")
    text = report(args, results, load)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
