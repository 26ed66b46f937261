"""Plots (PNG) for multiclass and regression reports: a confusion-matrix heatmap, and predicted-vs-actual with
a residual histogram. Each function takes the output file path, creates its folder, and returns the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_ANNOTATED_CLASSES = 20  # beyond this the per-cell counts are unreadable; the colours still show


def plot_confusion_matrix(confusion: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[str],
                          path: str | Path) -> Path:
    """Heatmap of ``confusion`` (rows = true class, columns = predicted). The colour is the row share (each
    class's recall on the diagonal), so rare classes are as visible as common ones; cells show the counts."""
    counts = np.asarray(confusion, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    k = len(classes)
    fig, ax = _figure(figsize=(max(4.0, 0.5 * k + 2.5), max(3.5, 0.5 * k + 2.0)))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true",
           title=f"Confusion matrix ({int(counts.sum())} rows)")
    ax.set_xticklabels(classes, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_yticklabels(classes)
    if k <= MAX_ANNOTATED_CLASSES:
        for i in range(k):
            for j in range(k):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    return _save(fig, path)


def plot_regression(targets: np.ndarray, predictions: np.ndarray, path: str | Path, *,
                    total_rows: int | None = None, bins: int = 40) -> Path:
    """Predicted vs actual (with the y = x line) next to a histogram of residuals (prediction - target).

    ``targets``/``predictions`` may be a sample (``RegressionAccumulator.sample()``); ``total_rows`` then
    says how many rows it was drawn from, shown in the title.
    """
    y = np.asarray(targets, dtype=np.float64).ravel()
    p = np.asarray(predictions, dtype=np.float64).ravel()
    fig, (scatter, hist) = _figure(figsize=(10.0, 4.5), ncols=2)
    shown = f"{y.size} rows" if total_rows in (None, y.size) else f"a sample of {y.size} of {total_rows} rows"
    scatter.scatter(y, p, s=6, alpha=0.4, edgecolors="none")
    if y.size:
        low, high = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
        scatter.plot([low, high], [low, high], ":", color="grey", label="prediction = target")
        scatter.legend(loc="upper left")
        hist.hist(p - y, bins=bins, color="tab:orange")
        hist.axvline(0.0, linestyle=":", color="grey")
    scatter.set(xlabel="target", ylabel="prediction", title=f"Predicted vs actual ({shown})")
    hist.set(xlabel="residual (prediction - target)", ylabel="rows", title="Residuals")
    return _save(fig, path)


def _figure(figsize: tuple[float, float], ncols: int = 1) -> tuple[Any, Any]:
    # An explicit Agg canvas renders off-screen without switching pyplot's process-wide backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    return out
