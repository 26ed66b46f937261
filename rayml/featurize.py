"""Feature engineering: ``fit`` produces a JSON-able state, ``transform`` is a pure batch function.

Training (on Ray Data) and serving (inside a Serve replica) call the same ``transform`` with the same state,
so the model sees identical features in both. Fitting is split into per-batch partial statistics and a merge,
so it runs over data of any size without collecting it in one place.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from rayml.config import StrictModel
from rayml.errors import DataValidationError, RegistryError
from rayml.split import SPLITS

STATE_VERSION = 1


class FeaturizeConfig(StrictModel):
    """Which columns become model inputs and how."""

    label: str = Field(min_length=1, description="the 0/1 target column")
    numeric: list[str] = Field(default_factory=list, description="numeric columns, standardized")
    log1p: list[str] = Field(default_factory=list, description="numeric columns to log1p before scaling")
    categorical: list[str] = Field(default_factory=list, description="string columns, one-hot encoded")
    max_categories: int = Field(64, ge=1, le=100_000, description="most frequent values kept per column")
    min_frequency: int = Field(1, ge=1, description="values seen fewer times in training become 'unseen'")
    keep: list[str] = Field(
        default_factory=list, description="columns carried next to the features for evaluation, not inputs"
    )

    @model_validator(mode="after")
    def _consistent(self) -> FeaturizeConfig:
        if not self.numeric and not self.categorical:
            raise ValueError("no input features; list columns under numeric and/or categorical")
        extra = sorted(set(self.log1p) - set(self.numeric))
        if extra:
            raise ValueError(f"log1p columns {extra} are not in numeric; add them to numeric or remove them")
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"columns {both} are both numeric and categorical; choose one")
        if self.label in set(self.numeric) | set(self.categorical):
            raise ValueError(f"label {self.label!r} is also an input feature; remove it from the inputs")
        return self


def partial_stats(batch: pa.Table, config: FeaturizeConfig) -> dict[str, Any]:
    """Sufficient statistics of one batch: counts/sums for numerics, value counts for categoricals."""
    numeric: dict[str, list[float]] = {}
    for name in config.numeric:
        values = _numeric(batch.column(name), name in config.log1p)
        finite = values[np.isfinite(values)]
        mean = float(finite.mean()) if finite.size else 0.0
        # (count, mean, sum of squared deviations): merges exactly, without the cancellation of E[x^2]-E[x]^2
        numeric[name] = [float(finite.size), mean, float(np.square(finite - mean).sum())]
    categorical: dict[str, dict[str, int]] = {}
    for name in config.categorical:
        counts = pc.value_counts(_categories(batch.column(name)))
        categorical[name] = {
            str(v["values"]): int(v["counts"]) for v in counts.to_pylist() if v["values"] is not None
        }
    labels = _labels(batch.column(config.label)) if config.label in batch.column_names else np.zeros(0)
    if not np.isfinite(labels).all() or not np.isin(labels, (0.0, 1.0)).all():
        raise DataValidationError(
            f"label column {config.label!r} holds nulls or values other than 0/1; declare it in validation.columns "
            "as a non-nullable int with min 0 and max 1 so such records are quarantined"
        )
    positives = int(labels.sum())
    return {
        "rows": batch.num_rows,
        "numeric": numeric,
        "categorical": categorical,
        "label_counts": {"0": int(labels.size - positives), "1": positives},
    }


def merge_stats(partials: Iterable[dict[str, Any]], config: FeaturizeConfig) -> dict[str, Any]:
    """Combine partial statistics and turn them into the fitted state (a JSON-ready dict)."""
    sums = {name: [0.0, 0.0, 0.0] for name in config.numeric}
    counts: dict[str, dict[str, int]] = {name: {} for name in config.categorical}
    label_counts = {"0": 0, "1": 0}
    rows = 0
    for part in partials:
        rows += part["rows"]
        for name, (n, mean, m2) in part["numeric"].items():
            acc = sums[name]
            total = acc[0] + n
            if total:
                delta = mean - acc[1]
                acc[1] += delta * n / total
                acc[2] += m2 + delta * delta * acc[0] * n / total
            acc[0] = total
        for name, values in part["categorical"].items():
            acc_counts = counts[name]
            for value, c in values.items():
                acc_counts[value] = acc_counts.get(value, 0) + c
        for key in label_counts:
            label_counts[key] += part["label_counts"][key]

    numeric = []
    for name in config.numeric:
        n, mean, m2 = sums[name]
        std = math.sqrt(m2 / n) if n else 0.0
        # A constant (or empty) column scales by 1 so it maps to 0 instead of dividing by zero.
        numeric.append({"name": name, "log1p": name in config.log1p, "mean": mean, "std": std if std > 1e-12 else 1.0})
    categorical = []
    for name in config.categorical:
        ranked = sorted(counts[name].items(), key=lambda kv: (-kv[1], kv[0]))
        vocab = [v for v, c in ranked if c >= config.min_frequency][: config.max_categories]
        categorical.append({"name": name, "vocab": vocab})
    names = [n["name"] for n in numeric]
    for cat in categorical:
        names += [f"{cat['name']}={v}" for v in cat["vocab"]] + [f"{cat['name']}=<unseen>"]
    return {
        "version": STATE_VERSION,
        "label": config.label,
        "rows": rows,
        "label_counts": label_counts,
        "numeric": numeric,
        "categorical": categorical,
        "feature_names": names,
        "output_dim": len(names),
    }


def transform(batch: pa.Table, state: dict[str, Any]) -> np.ndarray:
    """Features of ``batch`` as a float32 matrix [rows, state['output_dim']].

    Nulls in numeric columns take the training mean (0 after scaling); a categorical value not seen in
    training, or null, sets the column's '<unseen>' slot.
    """
    n = batch.num_rows
    out = np.zeros((n, state["output_dim"]), dtype=np.float32)
    col = 0
    for spec in state["numeric"]:
        values = _numeric(batch.column(spec["name"]), spec["log1p"])
        values = np.where(np.isfinite(values), values, spec["mean"])
        out[:, col] = (values - spec["mean"]) / spec["std"]
        col += 1
    for spec in state["categorical"]:
        vocab = spec["vocab"]
        raw = _categories(batch.column(spec["name"])).to_pandas()
        codes = pd.Categorical(raw.astype(object), categories=vocab).codes.astype(np.int64)
        codes[codes < 0] = len(vocab)
        out[np.arange(n), col + codes] = 1.0
        col += len(vocab) + 1
    return out


def labels(batch: pa.Table, state: dict[str, Any]) -> np.ndarray:
    """The label column as float32 0/1."""
    return _labels(batch.column(state["label"])).astype(np.float32)


def input_columns(state: dict[str, Any]) -> list[str]:
    """The raw columns ``transform`` reads, in order."""
    return [s["name"] for s in state["numeric"]] + [s["name"] for s in state["categorical"]]


def dumps(state: dict[str, Any]) -> str:
    """Serialize a fitted state (JSON; never pickle)."""
    return json.dumps(state, indent=2, sort_keys=True)


def loads(text: str) -> dict[str, Any]:
    """Parse a fitted state written by ``dumps``, checking its version."""
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"featurizer state is not valid JSON ({exc}); re-run the featurize stage") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        found = state.get("version") if isinstance(state, dict) else None
        raise RegistryError(
            f"featurizer state version {found!r}; this rayml reads version {STATE_VERSION}. Re-run the pipeline"
        )
    return state


def _numeric(column: pa.ChunkedArray | pa.Array, log: bool) -> np.ndarray:
    values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    values = np.asarray(values, dtype=np.float64)
    if log:
        with np.errstate(invalid="ignore"):
            values = np.log1p(np.clip(values, 0.0, None))
    return values


def _categories(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A categorical column as text, matching how its vocabulary is stored (an int code 7 is '7')."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array if pa.types.is_string(array.type) else pc.cast(array, pa.string())


def _labels(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


FEATURES = "features"
LABEL = "label"
SPLIT = "_split"


def run_stage(
    valid_path: str,
    *,
    split: Any,
    config: FeaturizeConfig,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Split the valid records (``split`` is a ``SplitConfig``), fit on train only, and write the featurized
    ``train``/``val``/``test`` splits as Parquet (``features``, ``label`` and the ``keep`` columns) plus the
    fitted state as ``featurizer.json``.
    """
    import ray.data

    from rayml.validate import parquet_rows

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)  # a rerun of an interrupted stage starts clean instead of appending
    out.mkdir(parents=True)
    needed = sorted({config.label, split.key, *config.numeric, *config.categorical, *config.keep})
    records = ray.data.read_parquet(valid_path, partitioning=None).select_columns(needed)
    by_split = split_datasets(records, split)
    partials = by_split["train"].map_batches(
        _partial_stats_json, fn_kwargs={"config": config.model_dump()}, batch_format="pyarrow"
    ).take_all()
    state = merge_stats((json.loads(p["stats"]) for p in partials), config)
    if state["rows"] == 0:
        raise DataValidationError("the train split is empty; add data or raise split.train")
    (out / STATE_FILE).write_text(dumps(state))
    counts = {}
    for name, dataset in by_split.items():
        dataset.map_batches(
            _featurize_batch, fn_kwargs={"state": state, "keep": config.keep}, batch_format="pyarrow"
        ).write_parquet(str(out / name))
        counts[name] = parquet_rows(out / name)
    return {
        "state_path": str(out / STATE_FILE),
        "input_dim": state["output_dim"],
        "label_counts": state["label_counts"],
        "rows": counts,
        "paths": {name: str(out / name) for name in SPLITS},
    }


STATE_FILE = "featurizer.json"


def split_datasets(records: Any, split: Any) -> dict[str, Any]:
    """Lazy train/val/test Ray Datasets over ``records`` (a Ray Dataset), by ``split`` (a SplitConfig)."""
    return {
        name: records.map_batches(
            _take_split, fn_kwargs={"name": name, "key": split.key, "train": split.train, "val": split.val,
                                    "seed": split.seed},
            batch_format="pyarrow",
        )
        for name in SPLITS
    }


def _take_split(batch: pa.Table, name: str, key: str, train: float, val: float, seed: int) -> pa.Table:
    from rayml.split import assign

    mask = assign(batch.column(key), train, val, seed) == name
    return batch.filter(pa.array(mask, pa.bool_()))


def _partial_stats_json(batch: pa.Table, config: dict[str, Any]) -> dict[str, np.ndarray]:
    stats = partial_stats(batch, FeaturizeConfig(**config))
    return {"stats": np.array([json.dumps(stats)])}


def _featurize_batch(batch: pa.Table, state: dict[str, Any], keep: list[str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {FEATURES: transform(batch, state), LABEL: labels(batch, state)}
    for name in keep:
        out[name] = batch.column(name).to_numpy(zero_copy_only=False)
    return out
