"""Training: the explicit per-worker loop, and the ``TorchTrainer`` that launches it with DDP.

Every epoch the loop reports metrics and a checkpoint (model, optimizer, epoch, history). A rerun of the
same run directory, or Ray Train's own retry after a worker dies, finds that checkpoint through
``ray.train.get_checkpoint()`` and continues at the next epoch.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field

from rayml.evaluate import curves as evaluate
from rayml.config import StrictModel
from rayml.errors import ConfigError
from rayml.metrics import TrainRecorder
from rayml.models import WEIGHTS_FILE, ModelConfig, build_model

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
RAY_RUN_NAME = "ray_train"  # checkpoints live in <storage_dir>/ray_train/checkpoint_*


class TrainConfig(StrictModel):
    """The training loop and how it is distributed."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="network architecture")
    epochs: int = Field(10, ge=1, le=10_000, description="passes over the training split")
    batch_size: int = Field(512, ge=1, le=1_048_576, description="rows per step on each worker")
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay")
    grad_clip: float | None = Field(1.0, gt=0.0, description="max gradient norm; null to disable")
    class_weight: Literal["auto", "sqrt", "none"] | float = Field(
        "auto",
        description="positive-class loss weight: auto = negatives/positives of the train split, sqrt = its "
        "square root (tempered: keeps ranking quality on rare positives), none = 1, or a number",
    )
    num_workers: int = Field(2, ge=1, le=1024, description="DDP workers")
    cpus_per_worker: float = Field(1.0, gt=0.0, le=256.0, description="CPUs reserved by each worker")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="where workers go: PACK fills nodes in turn (fewest hops between ranks), SPREAD "
        "puts them on different nodes where possible, STRICT_SPREAD requires one node per worker"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses GPUs when the cluster has one per worker, else CPUs"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for initialization and shuffling")
    max_failures: int = Field(2, ge=0, le=100, description="worker failures survived by restoring a checkpoint")
    cache: Literal["auto", "always", "never"] = Field(
        "auto", description="hold the featurized splits in Ray's object store across epochs; auto = under 1 GiB"
    )


CACHE_AUTO_BYTES = 1 << 30


def cache_in_memory(policy: str, path: str | Path) -> bool:
    """Whether to materialize a featurized split: re-reading small files every epoch costs more than they do."""
    if policy != "auto":
        return policy == "always"
    size = sum(f.stat().st_size for f in Path(path).rglob("*.parquet"))
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


def fit(
    train: ray.data.Dataset,
    val: ray.data.Dataset,
    *,
    input_dim: int,
    positive_weight: float,
    config: TrainConfig,
    storage_dir: str | Path,
    run_name: str = "train",
) -> dict[str, Any]:
    """Train with Ray Train DDP; resumes if ``storage_dir`` holds checkpoints of an earlier attempt.

    ``run_name`` tags the ``rayml_train_*`` metrics. Returns ``{"checkpoint": path, "history": [...per-epoch
    metrics...], "use_gpu": bool, "worker_nodes": [Ray node id of each rank]}``.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    gpu = use_gpu(config.device, config.num_workers, ray.cluster_resources().get("GPU", 0.0))
    loop_config = {
        "model": config.model.model_dump(),
        "input_dim": input_dim,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "grad_clip": config.grad_clip,
        "pos_weight": positive_weight,
        "seed": config.seed,
        "threads": max(1, int(config.cpus_per_worker)),
        "run_name": run_name,
    }
    storage = Path(storage_dir).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if gpu else {})},
            placement_strategy=config.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=RAY_RUN_NAME,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
        ),
        datasets={"train": train, "val": val},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint under {storage}")
    state = json.loads(Path(result.checkpoint.path, STATE_FILE).read_text())
    return {"checkpoint": result.checkpoint.path, "history": state["history"], "use_gpu": gpu,
            "worker_nodes": state.get("worker_nodes", []), "attempts": state.get("attempts", 1)}


def train_loop(cfg: dict[str, Any]) -> None:
    """The per-worker loop that Ray Train runs on every DDP worker."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])  # same seed on every rank: identical initial weights before DDP syncs them
    device = ray.train.torch.get_device()
    recorder = TrainRecorder(cfg["run_name"]) if rank == 0 else None

    model = build_model(ModelConfig(**cfg["model"]), cfg["input_dim"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    start_epoch, history, attempt = 0, [], 1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            start_epoch, history = load_checkpoint(Path(ckpt_dir), model, optimizer)
            attempt = _attempts(Path(ckpt_dir)) + 1
        if rank == 0:
            log.info("[rayml.train] resumed from the checkpoint written after epoch %d (attempt %d)",
                     start_epoch, attempt)
    if recorder is not None:
        recorder.started(attempt, cfg["epochs"])

    model = ray.train.torch.prepare_model(model)
    worker_nodes = _gather_node_ids(ray.get_runtime_context().get_node_id())
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(cfg["pos_weight"], device=device))
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    for epoch in range(start_epoch, cfg["epochs"]):
        # Each epoch's random stream (dropout) is a function of (seed, epoch, rank), so a run resumed at epoch k
        # draws exactly what an uninterrupted run would have.
        torch.manual_seed(cfg["seed"] + 1_000_003 * (epoch + 1) + rank)
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of losses, rows]
        for batch in train_shard.iter_torch_batches(
            batch_size=cfg["batch_size"], dtypes=torch.float32, device=device,
            local_shuffle_buffer_size=4 * cfg["batch_size"], local_shuffle_seed=cfg["seed"] + epoch,
        ):
            features, labels = batch["features"], batch["label"]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(features), labels)
            loss.backward()
            if cfg["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            optimizer.step()
            loss_sum += torch.tensor([loss.item() * len(labels), len(labels)], dtype=torch.float64, device=device)
        train_seconds = time.perf_counter() - started

        val_loss, hist = _validate(model, val_shard, loss_fn, cfg["batch_size"], device)
        dist.all_reduce(loss_sum)
        dist.all_reduce(val_loss)
        pos = torch.from_numpy(hist.pos).to(device)
        neg = torch.from_numpy(hist.neg).to(device)
        dist.all_reduce(pos)
        dist.all_reduce(neg)
        hist = evaluate.ScoreHistogram(pos=pos.cpu().numpy(), neg=neg.cpu().numpy())
        rows = int(loss_sum[1].item())
        metrics = {
            "epoch": epoch + 1,
            "train_loss": float(loss_sum[0] / max(loss_sum[1], 1)),
            "val_loss": float(val_loss[0] / max(val_loss[1], 1)),
            "val_roc_auc": _finite(evaluate.roc_auc(hist)),
            "val_pr_auc": _finite(evaluate.average_precision(hist)),
            "train_rows": rows,
            "epoch_seconds": round(train_seconds, 3),
            "samples_per_second": round(rows / train_seconds, 1) if train_seconds > 0 else 0.0,
        }
        history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            if recorder is not None:
                recorder.epoch(metrics, time.time())
                checkpoint_started = time.perf_counter()
                save_checkpoint(Path(tmp), _unwrap(model), optimizer, epoch + 1, history, worker_nodes, attempt)
                log.info(
                    "[rayml.train] epoch %d/%d train_loss=%.4f val_loss=%.4f val_roc_auc=%.4f val_pr_auc=%.4f "
                    "%.1fs %.0f rows/s", epoch + 1, cfg["epochs"], metrics["train_loss"], metrics["val_loss"],
                    metrics["val_roc_auc"], metrics["val_pr_auc"], train_seconds, metrics["samples_per_second"],
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
                recorder.checkpoint_seconds(time.perf_counter() - checkpoint_started)
            else:
                ray.train.report(metrics)


def _validate(
    model: torch.nn.Module, shard: Any, loss_fn: torch.nn.Module, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, evaluate.ScoreHistogram]:
    model.eval()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    parts = []
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=torch.float32, device=device):
            logits = model(batch["features"])
            labels = batch["label"]
            loss_sum += torch.tensor(
                [loss_fn(logits, labels).item() * len(labels), len(labels)], dtype=torch.float64, device=device
            )
            parts.append(evaluate.histogram(torch.sigmoid(logits).cpu().numpy(), labels.cpu().numpy()))
    return loss_sum, evaluate.merge(parts) if parts else evaluate.histogram(np.zeros(0), np.zeros(0))


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict],
    worker_nodes: list[str] | None = None,
    attempts: int = 1,
) -> None:
    """Write a resumable checkpoint: state dicts via torch.save (loaded with weights_only), the rest as JSON.
    No RNG state is needed: the loop reseeds from (seed, epoch, rank) at the start of every epoch.
    ``worker_nodes`` (the Ray node of each rank in the attempt that wrote it) is provenance; ``attempts`` counts
    the loop's starts so far, so a restart knows its own number."""
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    state = {"epoch": epoch, "history": history, "worker_nodes": list(worker_nodes or []), "attempts": attempts}
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2))


def load_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[int, list[dict]]:
    """Restore model (and optimizer) from ``directory``; return (epochs done, history)."""
    try:
        model.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True, map_location="cpu"))
    except RuntimeError as exc:
        raise ConfigError(
            f"the checkpoint in {directory} does not fit this model ({str(exc).splitlines()[0]}); the "
            "architecture changed since it was written. Use a new run.name to train from scratch",
            "train.model",
        ) from exc
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True, map_location="cpu"))
    state = json.loads((directory / STATE_FILE).read_text())
    return int(state["epoch"]), list(state["history"])


def _attempts(directory: Path) -> int:
    return int(json.loads((directory / STATE_FILE).read_text()).get("attempts", 1))


def _gather_node_ids(node_id: str) -> list[str]:
    """The Ray node id of every rank, in rank order (a collective: every rank must call it)."""
    import torch.distributed as dist

    nodes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node_id)
    return [str(node) for node in nodes]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0
