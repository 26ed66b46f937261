"""Training: the strict config, and the ``TorchTrainer`` that runs the per-worker loop with DDP.

    loop.py        the explicit per-worker loop Ray Train launches (resume, epochs, report, checkpoint)
    steps.py       one epoch of training/validation, LR schedule, mixed precision, early stopping (no Ray)
    checkpoint.py  what a checkpoint holds (model, optimizer, scheduler, scaler, step, history, RNG) and its I/O

Every epoch the loop reports metrics and a checkpoint. A rerun of the same run directory, or Ray Train's own
retry after a worker dies, finds the latest checkpoint through ``ray.train.get_checkpoint()`` and continues at
the next epoch. Ray Train keeps the best ``keep_checkpoints`` by ``checkpoint_metric`` (and always the latest);
the later stages use the best one.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from rayml import storage as store
from rayml.config import StrictModel
from rayml.errors import ConfigError
from rayml.model_config import ModelConfig
from rayml.storage import StorageConfig
from rayml.train.progress import read_progress
from rayml.train.choices import MODES, CheckpointMetric, Precision, Schedule, improves

if TYPE_CHECKING:
    import ray.data
    import ray.train

log = logging.getLogger(__name__)

RAY_RUN_NAME = "ray_train"  # checkpoints live in <storage_dir>/ray_train/checkpoint_*


class TrainConfig(StrictModel):
    """The training loop and how it is distributed."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="network architecture")
    epochs: int = Field(10, ge=1, le=10_000, description="passes over the training split")
    batch_size: int = Field(512, ge=1, le=1_048_576, description="rows per step on each worker")
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay")
    schedule: Schedule = Field(
        "constant", description="learning rate per step after warmup: constant, cosine or linear decay to 0 at "
        "the last step"
    )
    warmup_epochs: float = Field(
        0.0, ge=0.0, le=10_000, description="linear warmup of the learning rate over this many epochs (0.5 = half "
        "an epoch's steps); 0 for none"
    )
    grad_clip: float | None = Field(1.0, gt=0.0, description="max gradient norm; null to disable")
    precision: Precision = Field(
        "fp32", description="forward-pass precision: fp32, bf16 (torch.autocast; CPUs and GPUs) or fp16 (CUDA "
        "only, with a gradient scaler)"
    )
    class_weight: Literal["auto", "sqrt", "none"] | float = Field(
        "auto",
        description="binary jobs' positive-class loss weight: auto = negatives/positives of the train split, sqrt = "
        "its square root (tempered: keeps ranking quality on rare positives), none = 1, or a number",
    )
    checkpoint_metric: CheckpointMetric = Field(
        "val_loss", description="validation metric that ranks checkpoints (val_loss, val_rmse: lower is better; "
        "val_roc_auc, val_pr_auc (binary), val_accuracy (multiclass): higher). Evaluate, export and register use the BEST checkpoint by it, not the last: the "
        "validation split picks the model and the test split stays unseen. Early stopping watches it too"
    )
    keep_checkpoints: int = Field(
        3, ge=1, le=10_000, description="checkpoints kept on disk: the best N by checkpoint_metric, plus always "
        "the latest (where a resume starts)"
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, le=10_000, description="stop when checkpoint_metric has not improved for this many epochs "
        "(rank 0 decides, every rank stops); null to run all epochs"
    )
    num_workers: int = Field(2, ge=1, le=1024, description="DDP workers")
    cpus_per_worker: float = Field(1.0, gt=0.0, le=256.0, description="CPUs reserved by each worker")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="where workers go: PACK fills nodes in turn (fewest hops between ranks), SPREAD "
        "puts them on different nodes where possible, STRICT_SPREAD requires one node per worker"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses GPUs when the cluster has one per worker, else CPUs (NCCL on GPUs, gloo "
        "on CPUs)"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for initialization, dropout and shuffling")
    max_failures: int = Field(2, ge=0, le=100, description="worker failures survived by restoring a checkpoint")
    cache: Literal["auto", "always", "never"] = Field(
        "auto", description="hold the featurized splits in Ray's object store, and each worker's shard as tensors "
        "after the first epoch; auto = under 1 GiB"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs:g}) must be below epochs ({self.epochs}); lower "
                "train.warmup_epochs or raise train.epochs"
            )
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError(
                "precision fp16 needs CUDA workers but train.device is cpu; set train.precision: bf16 (works on "
                "CPUs) or fp32"
            )
        return self


CACHE_AUTO_BYTES = 1 << 30


def cache_in_memory(policy: str, path: str | Path, storage: StorageConfig | None = None) -> bool:
    """Whether to materialize a featurized split (local or s3://): re-reading small files every epoch costs more
    than they do."""
    if policy != "auto":
        return policy == "always"
    size = sum(entry.size or 0 for entry in store.list_files(path, (".parquet",), storage))
    return size <= CACHE_AUTO_BYTES


def pos_weight(config: TrainConfig, label_counts: dict[str, int]) -> float:
    """The positive-class weight of the loss."""
    if config.class_weight == "none":
        return 1.0
    if config.class_weight in ("auto", "sqrt"):
        negatives, positives = label_counts.get("0", 0), label_counts.get("1", 0)
        ratio = negatives / positives if positives else 1.0
        return math.sqrt(ratio) if config.class_weight == "sqrt" else ratio
    return float(config.class_weight)


def output_bias(featurized: dict[str, Any]) -> float:
    """The model's initial output: the train split's mean label for regression (ratings near 3.5 should not
    start from 0), 0 otherwise (a binary or multiclass model starts with balanced logits)."""
    stats = featurized.get("label_stats")
    return float(stats["mean"]) if featurized.get("task") == "regression" and stats else 0.0


def use_gpu(device: str, num_workers: int, cluster_gpus: float) -> bool:
    """Whether the workers run on GPUs; ``cuda`` without enough GPUs is a config error, not a hang."""
    if device == "cpu":
        return False
    if device == "cuda":
        if cluster_gpus < num_workers:
            raise ConfigError(
                f"train.device: got 'cuda' but the cluster has {cluster_gpus:g} GPU(s) for {num_workers} "
                "worker(s). Set train.device: auto (or cpu), or lower train.num_workers",
                "train",
            )
        return True
    return cluster_gpus >= num_workers > 0


def check_precision(precision: str, gpu: bool) -> None:
    """fp16 needs CUDA workers; say so before any worker starts."""
    if precision == "fp16" and not gpu:
        raise ConfigError(
            "train.precision: got 'fp16' but the workers run on CPUs (no GPU for each worker); fp16 needs CUDA. "
            "Set train.precision: bf16 (works on CPUs) or fp32",
            "train",
        )


def steps_per_epoch(train_rows: int, num_workers: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: each worker gets an equal share of the rows and steps once per batch."""
    return max(1, math.ceil((train_rows // num_workers) / batch_size))


def loop_config(config: TrainConfig, *, input_dim: int, positive_weight: float, train_rows: int,
                run_name: str, task: str = "binary", outputs: int = 1,
                layout: list[dict[str, Any]] | None = None,
                tracking: dict[str, Any] | None = None, output_bias: float = 0.0) -> dict[str, Any]:
    """The plain dict the per-worker loop reads (it crosses to the workers)."""
    per_epoch = steps_per_epoch(train_rows, config.num_workers, config.batch_size)
    return {
        "model": config.model.model_dump(),
        "input_dim": input_dim,
        "task": task,
        "outputs": outputs,
        "layout": layout or [],
        "output_bias": output_bias,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "schedule": config.schedule,
        "warmup_steps": round(config.warmup_epochs * per_epoch),
        "total_steps": config.epochs * per_epoch,
        "grad_clip": config.grad_clip,
        "precision": config.precision,
        "pos_weight": positive_weight,
        "checkpoint_metric": config.checkpoint_metric,
        "patience": config.early_stopping_patience,
        "seed": config.seed,
        "threads": max(1, int(config.cpus_per_worker)),
        # Each worker keeps its shards as tensors after epoch 1 when the splits are small (see shard_cache).
        "cache_shards": config.cache == "always" or (
            config.cache == "auto" and train_rows * input_dim * 4 <= CACHE_AUTO_BYTES),
        "run_name": run_name,
        "tracking": tracking,  # {"tracker": Tracker.to_dict(), "run_id": ...}: rank 0 logs each epoch to MLflow
    }


def fit(
    train: ray.data.Dataset,
    val: ray.data.Dataset,
    *,
    input_dim: int,
    positive_weight: float,
    train_rows: int,
    config: TrainConfig,
    storage_dir: str | Path,
    run_name: str = "train",
    task: str = "binary",
    outputs: int = 1,
    layout: list[dict[str, Any]] | None = None,
    tracking: dict[str, Any] | None = None,
    storage: StorageConfig | None = None,
    output_bias: float = 0.0,
) -> dict[str, Any]:
    """Train with Ray Train DDP; resumes if ``storage_dir`` holds checkpoints of an earlier attempt.

    ``storage_dir`` is a local directory or an s3:// URI (reached with ``storage``; Ray Train's workers get the
    resolved filesystem); checkpoint paths come back in the same form.

    ``train_rows`` sizes the LR schedule; ``run_name`` tags the ``rayml_train_*`` metrics; ``task``, ``outputs``,
    ``layout`` and ``output_bias`` shape the model and its loss (see ``loop_config``). Returns the chosen
    ``checkpoint`` (best by ``config.checkpoint_metric``) and why (``checkpoint_choice``), the ``last_checkpoint``,
    ``history``, ``attempts``, ``global_step``, ``stopped_early``, ``use_gpu`` and ``worker_nodes``.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayml.train.loop import train_loop

    gpu = use_gpu(config.device, config.num_workers, ray.cluster_resources().get("GPU", 0.0))
    check_precision(config.precision, gpu)
    filesystem, storage_path = _storage_target(storage_dir, storage)
    loop_cfg = loop_config(config, input_dim=input_dim, positive_weight=positive_weight, train_rows=train_rows,
                           run_name=run_name, task=task, outputs=outputs, layout=layout, tracking=tracking,
                           output_bias=output_bias)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_cfg,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers, use_gpu=gpu, placement_strategy=config.placement_strategy,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=RAY_RUN_NAME,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.keep_checkpoints,
                checkpoint_score_attribute=config.checkpoint_metric,
                checkpoint_score_order=MODES[config.checkpoint_metric],
            ),
        ),
        datasets=worker_data(loop_cfg, {"train": train, "val": val}),
    )
    try:
        result = trainer.fit()
    except SystemExit as exc:
        # Ray Train's Ctrl-C handler aborts the run, then exits the driver with status 0: report an interruption.
        run_dir = str(storage_dir).rstrip("/").rpartition("/")[0] if filesystem else Path(storage_path).parent
        log.warning("train: stopped; continue it with `rayml train --resume %s`", run_dir)
        raise KeyboardInterrupt("training stopped") from exc
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint under {storage_dir}")
    with result.checkpoint.as_directory() as directory:  # the checkpoint itself when local, else a download
        progress = read_progress(Path(directory))
    remote = filesystem is not None
    candidates = [(_given(c.path, remote), m) for c, m in (result.best_checkpoints or [])]
    candidates = candidates or [(_given(result.checkpoint.path, remote), {})]
    chosen, choice = choose_checkpoint(candidates, progress.history, config.checkpoint_metric)
    log.info("train: using %s (%s)", chosen, choice["reason"])
    return {
        "checkpoint": chosen, "checkpoint_choice": choice, "last_checkpoint": _given(result.checkpoint.path, remote),
        "history": progress.history, "attempts": progress.attempts, "global_step": progress.global_step,
        "stopped_early": progress.stopped_early, "use_gpu": gpu, "worker_nodes": progress.worker_nodes,
    }


def worker_data(loop_cfg: dict[str, Any], datasets: dict[str, Any]) -> dict[str, Any]:
    """The datasets Ray Train splits between the workers: none when the splits are materialized and kept as
    tensors, whose block references go in ``loop_cfg["blocks"]`` instead (see shard_cache)."""
    from rayml.train.shard_cache import split_blocks

    if not loop_cfg["cache_shards"]:
        return datasets
    blocks = {name: split_blocks(dataset) for name, dataset in datasets.items()}
    if any(refs is None for refs in blocks.values()):
        return datasets
    loop_cfg["blocks"] = blocks
    log.info("train: each worker reads its share of the materialized splits' blocks and keeps it as tensors")
    return {}


def _storage_target(storage_dir: str | Path, storage: StorageConfig | None) -> tuple[Any, str]:
    """Ray Train's (storage_filesystem, storage_path): bucket/key on S3 (Ray wants no s3://), else a local
    directory, created."""
    if store.is_remote(storage_dir):
        return store.resolve(storage_dir, storage)
    local = Path(storage_dir).resolve()
    local.mkdir(parents=True, exist_ok=True)
    return None, str(local)


def _given(path: str, remote: bool) -> str:
    """A checkpoint path as Ray reports it (within the storage filesystem: bucket/key on S3) as rayml hands
    paths on: an s3:// URI for remote storage."""
    return f"{store.S3}{path}" if remote else path


def choose_checkpoint(
    candidates: list[tuple[str, dict[str, Any]]], history: list[dict], metric: str
) -> tuple[str, dict[str, Any]]:
    """The best kept checkpoint by ``metric`` (ties: the later epoch, as Ray Train ranks them), and why.

    ``candidates`` are (path, reported metrics) of the checkpoints on disk; the last epoch of ``history``
    stands in for one without metrics.
    """
    best_path, best = candidates[0][0], candidates[0][1] or history[-1]
    for path, metrics in candidates[1:]:
        metrics = metrics or history[-1]
        tied_later = metrics[metric] == best[metric] and metrics["epoch"] > best["epoch"]
        if improves(metrics[metric], best[metric], metric) or tied_later:
            best_path, best = path, metrics
    reason = (
        f"best {metric} ({'lowest' if MODES[metric] == 'min' else 'highest'}) of the {len(history)} epoch(s): "
        f"epoch {best['epoch']} with {metric}={best[metric]:.4f}; the last epoch had {history[-1][metric]:.4f}. "
        "The validation split picks the checkpoint; the test split stays unseen for the report"
    )
    return best_path, {"rule": "best", "metric": metric, "mode": MODES[metric], "epoch": best["epoch"],
                       "value": best[metric], "reason": reason}
