"""ROC and precision-recall plots (PNG) of the merged score histograms from ``rayml.evaluate.curves``.

Plotting reads only the histograms, so it draws the same bin-level curves and AUCs as the report.
"""

from __future__ import annotations

import math
from pathlib import Path

from rayml.evaluate.curves import ScoreHistogram, average_precision, pr_curve, roc_auc, roc_curve


def plot_curves(
    h: ScoreHistogram, out_dir: str | Path, reference: ScoreHistogram | None = None
) -> list[Path]:
    """Write ``roc.png`` and ``pr.png`` into ``out_dir`` (created if needed) and return their paths.

    The AUC / AP is in each legend; a ``reference`` histogram is drawn dashed.
    """
    # Imported here so importing rayml.evaluate stays cheap; an explicit Agg canvas renders off-screen
    # without switching the process-wide pyplot backend (which would surprise a notebook user).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = [("model", h, "-")]
    if reference is not None:
        curves.append(("reference", reference, "--"))

    roc_fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(roc_fig)
    ax = roc_fig.add_subplot()
    for name, hist, style in curves:
        fpr, tpr, _ = roc_curve(hist)
        ax.plot(fpr, tpr, style, label=f"{name} (AUC = {_fmt(roc_auc(hist))})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    roc_path = out / "roc.png"
    roc_fig.savefig(roc_path, dpi=100, bbox_inches="tight")

    pr_fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(pr_fig)
    ax = pr_fig.add_subplot()
    for name, hist, style in curves:
        precision, recall, _ = pr_curve(hist)
        # where="pre" holds each precision over the recall step ending at it, as average_precision sums.
        ax.step(recall, precision, style, where="pre", label=f"{name} (AP = {_fmt(average_precision(hist))})")
    if h.n > 0:
        ax.axhline(h.positives / h.n, linestyle=":", color="grey", label="chance (positive rate)")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper right")
    pr_path = out / "pr.png"
    pr_fig.savefig(pr_path, dpi=100, bbox_inches="tight")
    return [roc_path, pr_path]


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"
