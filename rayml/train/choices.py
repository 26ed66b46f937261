"""The training config's choices and each validation metric's direction, without torch: loading a job, Tune and
the loop all use them."""

from __future__ import annotations

from typing import Literal

Schedule = Literal["constant", "cosine", "linear"]
Precision = Literal["fp32", "bf16", "fp16"]
CheckpointMetric = Literal["val_loss", "val_roc_auc", "val_pr_auc", "val_accuracy", "val_rmse"]
MODES: dict[str, Literal["min", "max"]] = {"val_loss": "min", "val_roc_auc": "max", "val_pr_auc": "max",
                                           "val_accuracy": "max", "val_rmse": "min"}
TASK_METRICS: dict[str, tuple[str, ...]] = {  # the validation metrics each task reports every epoch
    "binary": ("val_loss", "val_roc_auc", "val_pr_auc"),
    "multiclass": ("val_loss", "val_accuracy"),
    "regression": ("val_loss", "val_rmse"),
}


def improves(value: float, best: float, metric: str) -> bool:
    """Whether ``value`` of ``metric`` is strictly better than ``best``."""
    return value < best if MODES[metric] == "min" else value > best


def best_epoch_index(history: list[dict], metric: str) -> int:
    """Index in ``history`` of the epoch that last improved ``metric`` (the first of equal best values)."""
    best = 0
    for index in range(1, len(history)):
        if improves(history[index][metric], history[best][metric], metric):
            best = index
    return best


def should_stop(history: list[dict], metric: str, patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs have passed without ``metric`` improving on its best."""
    if patience is None or not history:
        return False
    return len(history) - 1 - best_epoch_index(history, metric) >= patience
