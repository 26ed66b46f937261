"""The per-worker loop that Ray Train runs on every DDP worker.

Every epoch ends with a checkpoint (model, optimizer, LR scheduler, grad scaler, epoch, global step, history,
and each rank's RNG state). A worker that dies, or a rerun of the same run directory, restarts the loop;
``ray.train.get_checkpoint()`` then hands it the latest checkpoint and it continues at the next epoch with
exactly the state an uninterrupted run would have had there.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from rayml.evaluate import curves
from rayml.recorders import TrainRecorder
from rayml.tracking import Tracker
from rayml.models import ModelConfig, build_model, set_output_bias
from rayml.train import checkpoint as ckpt
from rayml.train import steps
from rayml.train.shard_cache import ShardCache, read_rows

log = logging.getLogger(__name__)


def train_loop(cfg: dict[str, Any]) -> None:
    """Train ``cfg["epochs"]`` epochs (or until early stopping), reporting metrics and a checkpoint each epoch."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(cfg["threads"])
    device = ray.train.torch.get_device()
    recorder = TrainRecorder(cfg["run_name"]) if rank == 0 else None
    tracking = cfg.get("tracking") if rank == 0 else None
    tracker = Tracker.from_dict(tracking["tracker"]) if tracking else None

    ckpt.seed_all(cfg["seed"])  # the same seed on every rank: identical initial weights before DDP syncs them
    model = build_model(ModelConfig(**cfg["model"]), cfg["input_dim"], cfg["outputs"], cfg["layout"])
    if cfg.get("output_bias"):
        set_output_bias(model, cfg["output_bias"])  # a checkpoint, if resuming, replaces it below
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = steps.build_scheduler(optimizer, schedule=cfg["schedule"], warmup_steps=cfg["warmup_steps"],
                                      total_steps=cfg["total_steps"])
    scaler = steps.grad_scaler(cfg["precision"], device)
    ckpt.seed_all(ckpt.derived_seed(cfg["seed"], rank))  # then one random stream (dropout) per rank
    progress = _resume(model, optimizer, scheduler, scaler, rank, ctx.get_world_size())
    if recorder is not None:
        recorder.started(progress.attempts, cfg["epochs"])

    model = ray.train.torch.prepare_model(model)
    progress.worker_nodes = _gather(ray.get_runtime_context().get_node_id())
    loss_fn = steps.loss_function(cfg["task"], cfg["pos_weight"], device)
    # Small splits stay in memory as tensors after the first epoch (see shard_cache); others stream each epoch.
    keep = bool(cfg.get("cache_shards"))
    train_cache = ShardCache(cfg["batch_size"], ckpt.derived_seed(cfg["seed"], rank), shuffle=True, keep=keep)
    val_cache = ShardCache(cfg["batch_size"], 0, shuffle=False, keep=keep)
    read_train = _split_reader(cfg, "train", device)
    read_val = _split_reader(cfg, "val", device)

    for epoch in range(progress.epoch, cfg["epochs"]):
        if progress.stopped_early:
            break
        started = time.perf_counter()
        # Streamed, the shard is shuffled locally (seeded); kept, the cache shuffles it (see shard_cache).
        shuffle = {} if keep else {"local_shuffle_buffer_size": 4 * cfg["batch_size"],
                                   "local_shuffle_seed": cfg["seed"] + epoch}
        batches = train_cache.batches(epoch, lambda shuffle=shuffle: read_train(shuffle))
        train_totals, taken = steps.train_epoch(
            model, batches, optimizer, scheduler, loss_fn, device=device, grad_clip=cfg["grad_clip"],
            precision=cfg["precision"], scaler=scaler,
        )
        train_seconds = time.perf_counter() - started
        val_batches = val_cache.batches(epoch, lambda: read_val({}))
        val_totals, hist = steps.validate_epoch(model, val_batches, loss_fn, device=device,
                                                precision=cfg["precision"], task=cfg["task"])
        progress.global_step += taken
        metrics = _epoch_metrics(epoch, train_totals, val_totals, hist, train_seconds, device, cfg["task"])
        metrics.update(lr=optimizer.param_groups[0]["lr"], global_step=progress.global_step,
                       attempt=progress.attempts)
        progress.history.append(metrics)
        progress.epoch = epoch + 1
        progress.stopped_early = _decide_on_rank0(
            rank == 0 and steps.should_stop(progress.history, cfg["checkpoint_metric"], cfg["patience"]), device
        )
        progress.rng = _gather(ckpt.rng_state())
        _report(metrics, progress, model, optimizer, scheduler, scaler, recorder, cfg["epochs"], cfg["task"])
        if tracker is not None:
            tracker.log_epoch(tracking["run_id"], metrics["epoch"], metrics)
    if rank == 0 and progress.stopped_early:
        log.info("[rayml.train] stopped early after epoch %d: %s did not improve for %d epoch(s)",
                 progress.epoch, cfg["checkpoint_metric"], cfg["patience"])


def _split_reader(cfg: dict[str, Any], name: str, device: torch.device) -> Callable[[dict[str, Any]], Iterable[Any]]:
    """How this worker reads its share of split ``name``: the materialized split's blocks directly when the
    driver sent them (``cfg["blocks"]``, see shard_cache), else Ray Train's streaming split, in batches (with
    the given local-shuffle options)."""
    import ray.train

    blocks = cfg.get("blocks")
    if blocks:  # sent only with cache_shards: the cache cuts the one batch read_rows gives into real batches
        if not cfg.get("cache_shards"):
            raise ValueError("cfg['blocks'] needs cfg['cache_shards']: the shard cache batches the rows")
        ctx = ray.train.get_context()
        return lambda shuffle: read_rows(blocks[name], ctx.get_world_rank(), ctx.get_world_size(), device)
    shard = ray.train.get_dataset_shard(name)
    return lambda shuffle: shard.iter_torch_batches(batch_size=cfg["batch_size"], dtypes=torch.float32,
                                                    device=device, **shuffle)


def _resume(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    rank: int,
    world_size: int,
) -> ckpt.Progress:
    """Load the latest checkpoint of this run, if any, into the given objects and this rank's RNG."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return ckpt.Progress()
    with checkpoint.as_directory() as ckpt_dir:
        progress = ckpt.load_checkpoint(Path(ckpt_dir), model, optimizer, scheduler, scaler)
    progress.attempts += 1
    if len(progress.rng) == world_size:
        ckpt.set_rng_state(progress.rng[rank])
    elif rank == 0:
        log.warning("[rayml.train] the checkpoint holds RNG state for %d rank(s), this run has %d; the random "
                    "streams restart from the seed", len(progress.rng), world_size)
    if rank == 0:
        log.info("[rayml.train] resumed from the checkpoint written after epoch %d, step %d (attempt %d)",
                 progress.epoch, progress.global_step, progress.attempts)
    return progress


def _epoch_metrics(
    epoch: int,
    train_totals: torch.Tensor,
    val_totals: torch.Tensor,
    hist: curves.ScoreHistogram,
    train_seconds: float,
    device: torch.device,
    task: str,
) -> dict[str, Any]:
    """Sum every rank's losses and score histograms; the metrics of the epoch (equal on every rank)."""
    import torch.distributed as dist

    pos = torch.from_numpy(hist.pos).to(device)
    neg = torch.from_numpy(hist.neg).to(device)
    for tensor in (train_totals, val_totals, pos, neg):
        dist.all_reduce(tensor)
    hist = curves.ScoreHistogram(pos=pos.cpu().numpy(), neg=neg.cpu().numpy())
    rows = int(train_totals[1].item())
    return {
        "epoch": epoch + 1,
        "train_loss": float(train_totals[0] / max(train_totals[1], 1)),
        "val_loss": float(val_totals[0] / max(val_totals[1], 1)),
        **steps.task_metrics(task, val_totals, hist),
        "train_rows": rows,
        "epoch_seconds": round(train_seconds, 3),
        "samples_per_second": round(rows / train_seconds, 1) if train_seconds > 0 else 0.0,
    }


def _report(
    metrics: dict[str, Any],
    progress: ckpt.Progress,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    recorder: TrainRecorder | None,
    epochs: int,
    task: str,
) -> None:
    """Report the epoch on every rank; rank 0 also writes the checkpoint.

    The checkpoint goes to a local temporary directory and Ray Train copies it to the run's storage in a
    background thread (``CheckpointUploadMode.ASYNC``, which deletes the local copy afterwards), so the loop
    waits only for ``torch.save``; Ray Train waits for pending copies before the run ends.
    """
    import ray.train

    if recorder is None:
        ray.train.report(metrics, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
        return
    recorder.epoch(metrics, time.time())
    started = time.perf_counter()
    directory = Path(tempfile.mkdtemp(prefix="rayml-checkpoint-"))
    ckpt.save_checkpoint(directory, _unwrap(model), optimizer, progress, scheduler, scaler)
    shown = " ".join(f"{k}={metrics[k]:.4f}" for k in ("train_loss", *steps.TASK_METRICS[task]))
    log.info("[rayml.train] epoch %d/%d %s lr=%.2e %.1fs %.0f rows/s", metrics["epoch"], epochs, shown,
             metrics["lr"], metrics["epoch_seconds"], metrics["samples_per_second"])
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
    recorder.checkpoint_seconds(time.perf_counter() - started)


def _decide_on_rank0(decision: bool, device: torch.device) -> bool:
    """Rank 0's decision, on every rank (a collective: every rank must call it)."""
    import torch.distributed as dist

    flag = torch.tensor([1 if decision else 0], dtype=torch.int32, device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _gather(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (a collective: every rank must call it)."""
    import torch.distributed as dist

    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model

