"""The results table of a search: one row per trial, best first; the best trial; results.csv and results.json.

No Ray here: ``search.py`` turns Ray Tune's results into ``TrialRecord``s and these functions do the rest.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPLETED = "completed"
ASHA = "stopped by ASHA"
EARLY = "early stopping"  # the job's own train.early_stopping_patience ended it
ERROR = "error"
NOT_RUN = "no result"


@dataclass
class TrialRecord:
    """What one trial did: its params, the metrics it reported each epoch (with ``checkpoint_path``), whether
    rayml's own early stopping ended it, and its error if it failed."""

    trial_id: str
    params: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    error: str | None = None


def rows(records: list[TrialRecord], metric: str, mode: str, max_epochs: int) -> list[dict[str, Any]]:
    """One row per trial, best first (trials without a result last): ``trial_id``, ``params``, ``value`` (the
    best ``metric`` over its epochs: what its best checkpoint scored), ``best_epoch``, ``epochs`` (run),
    ``status`` and ``stopped_by_asha``."""
    table = []
    for record in records:
        scored = [m for m in record.history if _finite(m.get(metric))]
        best = _best(scored, metric, mode)
        epochs = max((int(m["epoch"]) for m in record.history if "epoch" in m), default=0)
        if record.error is not None:
            status = ERROR
        elif not record.history:
            status = NOT_RUN
        elif epochs >= max_epochs:
            status = COMPLETED
        else:
            status = EARLY if record.stopped_early else ASHA
        table.append({
            "trial_id": record.trial_id, "params": dict(record.params),
            "value": float(best[metric]) if best else None, "best_epoch": int(best["epoch"]) if best else None,
            "epochs": epochs, "status": status, "stopped_by_asha": status == ASHA,
            "error": _first_line(record.error),
        })
    sign = 1.0 if mode == "min" else -1.0
    table.sort(key=lambda row: (row["value"] is None, sign * row["value"] if row["value"] is not None else 0.0))
    return table


def best(table: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best row of a table from ``rows`` (its first with a value), or None when no trial reported one."""
    for row in table:
        if row["value"] is not None:
            return row
    return None


def _best(history: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best epoch by ``metric``; ties go to the later epoch (as Ray Train ranks checkpoints)."""
    chosen = None
    for metrics in history:
        value = metrics[metric]
        if chosen is None or value == chosen[metric] or (value < chosen[metric]) == (mode == "min"):
            chosen = metrics
    return chosen


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first_line(error: str | None) -> str | None:
    if error is None:
        return None
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else error


def format_params(params: dict[str, Any]) -> str:
    """``train.lr=0.001 train.model.hidden=[64, 32]`` (the ``train.`` prefix dropped)."""
    return " ".join(f"{key.removeprefix('train.')}={_show(value)}" for key, value in sorted(params.items()))


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace(" ", "")


def format_table(table: list[dict[str, Any]], metric: str) -> str:
    """The table as aligned text, best trial first."""
    header = ["trial", metric, "best epoch", "epochs", "status", "params"]
    lines = [header]
    for row in table:
        value = "n/a" if row["value"] is None else f"{row['value']:.4f}"
        status = row["status"] if row["error"] is None else f"{row['status']}: {row['error'][:60]}"
        lines.append([row["trial_id"], value, str(row["best_epoch"] or "-"), str(row["epochs"]), status,
                      format_params(row["params"])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)), line[-1]]).rstrip()
        for line in lines
    )


def write(table: list[dict[str, Any]], out_dir: Path, *, metric: str, mode: str, max_epochs: int) -> dict[str, Path]:
    """``results.csv`` (one column per param) and ``results.json`` (the rows, the metric and the best trial)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted({key for row in table for key in row["params"]})
    csv_path = out_dir / "results.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial_id", *keys, metric, "best_epoch", "epochs", "status", "stopped_by_asha", "error"])
        for row in table:
            writer.writerow([row["trial_id"], *(_cell(row["params"].get(key)) for key in keys), _cell(row["value"]),
                             _cell(row["best_epoch"]), row["epochs"], row["status"], row["stopped_by_asha"],
                             row["error"] or ""])
    top = best(table)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps({
        "metric": metric, "mode": mode, "max_epochs": max_epochs,
        "best_trial": top["trial_id"] if top else None, "trials": table,
    }, indent=2))
    return {"csv": csv_path, "json": json_path}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
