"""The evaluate stage for multiclass and regression models, on Ray Data.

One actor loads the checkpoint and folds each batch of a featurized split into an accumulator
(``rayml.evaluate.tasks``), shipped back as JSON: no split is collected in one place. The report covers the
test split, with the validation split's headline metric next to it, and the plots go beside report.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rayml.evaluate.task_plots import plot_confusion_matrix, plot_regression
from rayml.evaluate.tasks import MulticlassAccumulator, RegressionAccumulator
from rayml.model_config import ModelConfig
from rayml.run_dir import filesystem, staged
from rayml.storage import StorageConfig

if TYPE_CHECKING:
    import ray.data

HEADLINE = {"multiclass": "accuracy", "regression": "rmse"}  # the metric a run is summarized by


class _Accumulate:
    """Ray Data UDF: the model's outputs for each batch, folded into the task's accumulator (as JSON)."""

    def __init__(self, checkpoint_dir: str, model: dict[str, Any], input_dim: int, outputs: int,
                 layout: list[dict[str, Any]], task: str, classes: list[str] | None, baseline: float,
                 filesystem: Any = None) -> None:
        import torch

        from rayml.models import Probability, load_trained

        torch.set_num_threads(1)
        trained = load_trained(checkpoint_dir, ModelConfig(**model), input_dim, outputs, layout, filesystem)
        self.model = Probability(trained, task).eval()
        self.task, self.classes, self.baseline = task, classes, baseline

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            out = self.model(torch.tensor(np.asarray(batch["features"]), dtype=torch.float32)).numpy()
        labels = np.asarray(batch["label"])
        if self.task == "multiclass":
            acc: Any = MulticlassAccumulator(self.classes or []).update(labels.astype(np.int64), out)
        else:
            acc = RegressionAccumulator(self.baseline).update(labels, out)
        return {"acc": np.array([json.dumps(acc.to_json())])}


def accumulate(dataset: ray.data.Dataset, *, task: str, classes: list[str] | None, baseline: float,
               batch_rows: int, **model: Any) -> Any:
    """The merged accumulator of every row of a featurized split."""
    import ray.data

    parts = dataset.map_batches(
        _Accumulate,
        fn_constructor_kwargs={**model, "task": task, "classes": classes, "baseline": baseline},
        batch_size=batch_rows, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1),
    ).take_all()
    kind = MulticlassAccumulator if task == "multiclass" else RegressionAccumulator
    total = kind(classes) if task == "multiclass" else kind(baseline)
    for part in parts:
        total.merge(kind.from_json(json.loads(part["acc"])))
    return total


def run_stage(
    val: ray.data.Dataset,
    test: ray.data.Dataset,
    *,
    checkpoint_dir: str,
    model: ModelConfig,
    input_dim: int,
    outputs: int,
    layout: list[dict[str, Any]],
    task: str,
    classes: list[str] | None,
    baseline: float,
    batch_rows: int,
    out_dir: str | Path,
    storage: StorageConfig | None = None,
) -> dict[str, Any]:
    """Evaluate ``test`` (and ``val``'s headline metric); write report.json and the task's plot into ``out_dir``
    (local or s3://, as the checkpoint may be; ``storage`` reaches them)."""
    common = {"task": task, "classes": classes, "baseline": baseline, "batch_rows": batch_rows,
              "checkpoint_dir": checkpoint_dir, "model": model.model_dump(), "input_dim": input_dim,
              "outputs": outputs, "layout": layout, "filesystem": filesystem(checkpoint_dir, storage)}
    test_acc = accumulate(test, **common)
    val_report = accumulate(val, **common).report()
    report = test_acc.report()
    headline = HEADLINE[task]
    report["validation"] = {"n": val_report["rows"], headline: val_report[headline]}
    with staged(out_dir, storage) as out:
        if task == "multiclass":
            plots = [plot_confusion_matrix(report["confusion_matrix"], classes or [], out / "confusion.png")]
        else:
            targets, predictions = test_acc.sample()
            plots = [plot_regression(targets, predictions, out / "regression.png", total_rows=test_acc.n)]
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
    return {"report": report, "plots": [p.name for p in plots]}
