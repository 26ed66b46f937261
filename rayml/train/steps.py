"""One epoch of training or validation, the learning-rate schedule, mixed precision and early stopping.

Plain PyTorch over any iterable of ``{"features", "label"}`` batches: the Ray loop feeds these functions its
dataset shards, the unit tests feed them tensors, so both run the same steps.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable

import numpy as np
import torch

from rayml.errors import ConfigError
from rayml.evaluate import curves
from rayml.train.choices import (  # noqa: F401 (re-exported)
    MODES, TASK_METRICS, CheckpointMetric, Precision, Schedule, best_epoch_index, improves, should_stop,
)


def loss_function(task: str, positive_weight: float, device: torch.device) -> torch.nn.Module:
    """Binary cross-entropy on logits (positives weighted), cross-entropy over classes, or squared error."""
    if task == "multiclass":
        return _ClassLoss()
    if task == "regression":
        return torch.nn.MSELoss()
    return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(positive_weight, device=device))


class _ClassLoss(torch.nn.Module):
    """Cross-entropy whose targets arrive as float class indexes (every dataset column is read as float32)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, labels.long())


def lr_factor(step: int, *, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based): a linear warmup over
    ``warmup_steps``, then constant, or a cosine or linear decay that reaches 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, schedule: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler; its ``state_dict()`` is plain JSON (the step count and base learning rates)."""
    factor = functools.partial(lr_factor, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward pass's precision: fp32 as is, bf16 or fp16 through ``torch.autocast`` on the device."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 needs (small gradients underflow in half precision); None for fp32 and bf16."""
    if precision != "fp16":
        return None
    if device.type != "cuda":
        raise ConfigError(
            f"train.precision: got 'fp16' but the workers run on {device.type}; fp16 needs CUDA (with a "
            "gradient scaler). Set train.precision: bf16 (works on CPUs) or fp32",
            "train",
        )
    return torch.amp.GradScaler("cuda")


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: torch.nn.Module,
    *,
    device: torch.device,
    grad_clip: float | None,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, int]:
    """One pass over ``batches``, one optimizer and scheduler step per batch.

    Returns ([sum of losses, rows] as float64 on ``device``, optimizer steps taken).
    """
    model.train()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    steps = 0
    for batch in batches:
        features, labels = batch["features"], batch["label"]
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = model(features)
        loss = loss_fn(logits.float(), labels)  # the loss in fp32 whatever the forward pass ran in
        penalty = getattr(getattr(model, "module", model), "penalty", None)  # e.g. the fm's L2 term
        if penalty is not None:
            loss = loss + penalty.float()
        if scaler is None:
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        steps += 1
        totals[0] += loss.detach().double() * len(labels)
        totals[1] += len(labels)
    return totals, steps


def validate_epoch(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    loss_fn: torch.nn.Module,
    *,
    device: torch.device,
    precision: str = "fp32",
    task: str = "binary",
) -> tuple[torch.Tensor, curves.ScoreHistogram]:
    """Score ``batches``: totals as float64 on ``device`` — [sum of losses, rows, task sum] where the task sum
    is 0 (binary), correct predictions (multiclass) or squared error (regression) — and, for binary, the
    histogram of the scores (empty otherwise)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    parts = []
    with torch.no_grad():
        for batch in batches:
            labels = batch["label"]
            with autocast(device, precision):
                logits = model(batch["features"])
            logits = logits.float()
            totals[0] += loss_fn(logits, labels).double() * len(labels)
            totals[1] += len(labels)
            if task == "binary":
                parts.append(curves.histogram(torch.sigmoid(logits).cpu().numpy(), labels.cpu().numpy()))
            elif task == "multiclass":
                totals[2] += (logits.argmax(dim=-1) == labels.long()).sum().double()
            else:
                totals[2] += (logits - labels).double().pow(2).sum()
    return totals, curves.merge(parts) if parts else curves.histogram(np.zeros(0), np.zeros(0))


def task_metrics(task: str, val_totals: torch.Tensor, hist: curves.ScoreHistogram) -> dict[str, float]:
    """The task's validation metrics (besides val_loss) from every rank's summed totals and histogram."""
    rows = max(float(val_totals[1]), 1.0)
    if task == "multiclass":
        return {"val_accuracy": float(val_totals[2]) / rows}
    if task == "regression":
        return {"val_rmse": math.sqrt(float(val_totals[2]) / rows)}
    return {"val_roc_auc": _finite(curves.roc_auc(hist)), "val_pr_auc": _finite(curves.average_precision(hist))}


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0
