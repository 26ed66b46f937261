"""The evaluate stage: score the held-out splits with the trained model, choose the threshold on validation,
report metrics on test, and draw ROC/PR curves. The math lives in ``rayml.evaluate.curves``; this module is
the Ray Data wrapper around it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from rayml.config import StrictModel
from rayml.evaluate import curves
from rayml.evaluate.plots import plot_curves
from rayml.model_config import ModelConfig
from rayml.run_dir import filesystem, staged
from rayml.storage import StorageConfig

if TYPE_CHECKING:
    import ray.data


class EvaluateConfig(StrictModel):
    """How the trained model is judged on held-out data."""

    threshold: Literal["auto"] | float = Field(
        "auto", description="decision threshold; auto = the best-F1 threshold on the validation split"
    )
    reference_score_column: str | None = Field(
        None, description="a kept column holding a reference score (e.g. the true probability) to compare with"
    )
    batch_rows: int = Field(65_536, ge=1, le=10_000_000, description="rows per scoring batch")

    @field_validator("threshold")
    @classmethod
    def _probability(cls, value: str | float) -> str | float:
        if value != "auto" and not 0.0 < float(value) < 1.0:
            raise ValueError("a fixed threshold must be a probability strictly between 0 and 1")
        return value

    def fixed_threshold(self) -> float | None:
        return None if self.threshold == "auto" else float(self.threshold)


class _Scorer:
    """Ray Data UDF: loads the checkpointed model once per actor, turns each batch into histograms (JSON)."""

    def __init__(
        self, checkpoint_dir: str, model: dict[str, Any], input_dim: int, reference: str | None,
        threshold: float | None, layout: list[dict[str, Any]] | None = None, filesystem: Any = None,
    ) -> None:
        import torch

        from rayml.models import Probability, load_trained

        torch.set_num_threads(1)
        trained = load_trained(checkpoint_dir, ModelConfig(**model), input_dim, 1, layout, filesystem)
        self.model = Probability(trained).eval()
        self.reference = reference
        self.threshold = threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            probs = self.model(torch.tensor(np.asarray(batch["features"]), dtype=torch.float32)).numpy()
        labels = np.asarray(batch["label"])
        out = {"hist": np.array([json.dumps(curves.histogram(probs, labels).to_json())])}
        if self.reference:
            ref = curves.histogram(np.asarray(batch[self.reference], dtype=np.float64), labels)
            out["reference"] = np.array([json.dumps(ref.to_json())])
        if self.threshold is not None:
            out["confusion"] = np.array([json.dumps(curves.confusion(probs, labels, self.threshold))])
        return out


def score(
    dataset: ray.data.Dataset,
    checkpoint_dir: str,
    model: ModelConfig,
    input_dim: int,
    config: EvaluateConfig,
    threshold: float | None = None,
    layout: list[dict[str, Any]] | None = None,
    filesystem: Any = None,
) -> tuple[curves.ScoreHistogram, curves.ScoreHistogram | None, dict[str, int] | None]:
    """Score every row of a featurized split: merged model and reference histograms, and the exact confusion
    counts at ``threshold`` when one is given. ``filesystem`` holds an s3:// ``checkpoint_dir``."""
    import ray.data

    parts = dataset.map_batches(
        _Scorer,
        fn_constructor_kwargs={
            "checkpoint_dir": checkpoint_dir,
            "model": model.model_dump(),
            "input_dim": input_dim,
            "reference": config.reference_score_column,
            "threshold": threshold,
            "layout": layout,
            "filesystem": filesystem,
        },
        batch_size=config.batch_rows,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
    ).take_all()
    hist = curves.merge(curves.ScoreHistogram.from_json(json.loads(p["hist"])) for p in parts)
    ref = None
    if config.reference_score_column:
        ref = curves.merge(curves.ScoreHistogram.from_json(json.loads(p["reference"])) for p in parts)
    confusion = None
    if threshold is not None:
        confusion = {key: 0 for key in curves.CONFUSION_KEYS}
        for part in parts:
            for key, count in json.loads(part["confusion"]).items():
                confusion[key] += count
    return hist, ref, confusion


def run_stage(
    val: ray.data.Dataset,
    test: ray.data.Dataset,
    *,
    checkpoint_dir: str,
    model: ModelConfig,
    input_dim: int,
    config: EvaluateConfig,
    out_dir: str | Path,
    layout: list[dict[str, Any]] | None = None,
    storage: StorageConfig | None = None,
) -> dict[str, Any]:
    """Choose the threshold on ``val``, evaluate ``test``; write report.json, roc.png and pr.png into
    ``out_dir`` (local or s3://, as the checkpoint may be; ``storage`` reaches them)."""
    fs = filesystem(checkpoint_dir, storage)
    no_reference = config.model_copy(update={"reference_score_column": None})
    val_hist, _, _ = score(val, checkpoint_dir, model, input_dim, no_reference, layout=layout, filesystem=fs)
    threshold = config.fixed_threshold()
    if threshold is None:
        threshold = curves.best_f1_threshold(val_hist)
    test_hist, ref_hist, confusion = score(test, checkpoint_dir, model, input_dim, config, threshold, layout, fs)
    assert confusion is not None  # a threshold was passed
    report = curves.report(test_hist, confusion, threshold, reference=ref_hist)
    report["validation"] = {
        "n": int(val_hist.n),
        "roc_auc": _json_float(curves.roc_auc(val_hist)),
        "pr_auc": _json_float(curves.average_precision(val_hist)),
    }
    with staged(out_dir, storage) as out:
        plots = plot_curves(test_hist, out, reference=ref_hist)
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
    return {"report": report, "plots": [p.name for p in plots]}


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)
