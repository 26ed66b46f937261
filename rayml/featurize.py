"""Feature engineering: ``fit`` produces a JSON-able state, ``transform`` is a pure batch function.

Training (on Ray Data) and serving (inside a Serve replica) call the same ``transform`` with the same state,
so the model sees identical features in both. Fitting is split into per-batch partial statistics and a merge,
so it runs over data of any size without collecting it in one place.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from rayml.config import StrictModel
from rayml import labels as labels_mod
from rayml import storage as store
from rayml.errors import DataValidationError, RegistryError
from rayml.featurize_media import ImageInput, TextInput, apply_image, apply_text, image_partial, image_shape, \
    image_state, text_state
from rayml.labels import Task
from rayml.storage import StorageConfig
from rayml.split import SPLITS

STATE_VERSION = 2  # 2: task, classes, embed, image, text, layout


class FeaturizeConfig(StrictModel):
    """Which columns become model inputs and how, and what the label is."""

    label: str = Field(min_length=1, description="the target column")
    task: Task = Field(
        "binary", description="binary (a 0/1 label), multiclass (int or string classes) or regression (a number)"
    )
    numeric: list[str] = Field(default_factory=list, description="numeric columns, standardized")
    log1p: list[str] = Field(default_factory=list, description="numeric columns to log1p before scaling")
    categorical: list[str] = Field(default_factory=list, description="string columns, one-hot encoded")
    embed: list[str] = Field(
        default_factory=list, description="string/int columns encoded as one index each (0 = unseen), for "
        "embedding tables: the fields of an fm model (e.g. user and item ids)"
    )
    image: ImageInput | None = Field(None, description="an image column: normalized pixels for a cnn")
    text: TextInput | None = Field(None, description="a text column: its frozen MiniLM sentence embedding")
    max_categories: int = Field(64, ge=1, le=1_000_000, description="most frequent values kept per column")
    min_frequency: int = Field(1, ge=1, description="values seen fewer times in training become 'unseen'")
    keep: list[str] = Field(
        default_factory=list, description="columns carried next to the features for evaluation, not inputs"
    )

    @model_validator(mode="after")
    def _consistent(self) -> FeaturizeConfig:
        if not (self.numeric or self.categorical or self.embed or self.image or self.text):
            raise ValueError("no input features; list columns under numeric, categorical or embed, or set image "
                             "or text")
        extra = sorted(set(self.log1p) - set(self.numeric))
        if extra:
            raise ValueError(f"log1p columns {extra} are not in numeric; add them to numeric or remove them")
        kinds = [set(self.numeric), set(self.categorical), set(self.embed)]
        both = sorted((kinds[0] & kinds[1]) | (kinds[0] & kinds[2]) | (kinds[1] & kinds[2]))
        if both:
            raise ValueError(f"columns {both} are listed under more than one of numeric, categorical, embed; "
                             "choose one")
        if self.label in set().union(*kinds, self.media_columns()):
            raise ValueError(f"label {self.label!r} is also an input feature; remove it from the inputs")
        return self

    def media_columns(self) -> list[str]:
        return [m.column for m in (self.image, self.text) if m is not None]


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
    for name in [*config.categorical, *config.embed]:
        counts = pc.value_counts(_categories(batch.column(name)))
        categorical[name] = {
            str(v["values"]): int(v["counts"]) for v in counts.to_pylist() if v["values"] is not None
        }
    label = batch.column(config.label) if config.label in batch.column_names else pa.array([], pa.float64())
    return {
        "rows": batch.num_rows,
        "numeric": numeric,
        "categorical": categorical,
        "label": labels_mod.partial(label, config.task, config.label),
        "image": image_partial(batch, config.image) if config.image else None,
    }


def merge_stats(partials: Iterable[dict[str, Any]], config: FeaturizeConfig) -> dict[str, Any]:
    """Combine partial statistics and turn them into the fitted state (a JSON-ready dict)."""
    sums = {name: [0.0, 0.0, 0.0] for name in config.numeric}
    counts: dict[str, dict[str, int]] = {name: {} for name in [*config.categorical, *config.embed]}
    label_parts, image_parts = [], []
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
        label_parts.append(part["label"])
        if part.get("image") is not None:
            image_parts.append(part["image"])

    numeric = []
    for name in config.numeric:
        n, mean, m2 = sums[name]
        std = math.sqrt(m2 / n) if n else 0.0
        # A constant (or empty) column scales by 1 so it maps to 0 instead of dividing by zero.
        numeric.append({"name": name, "log1p": name in config.log1p, "mean": mean, "std": std if std > 1e-12 else 1.0})

    def vocabulary(name: str) -> list[str]:
        ranked = sorted(counts[name].items(), key=lambda kv: (-kv[1], kv[0]))
        return [v for v, c in ranked if c >= config.min_frequency][: config.max_categories]

    categorical = [{"name": name, "vocab": vocabulary(name)} for name in config.categorical]
    embed = [{"name": name, "vocab": vocabulary(name)} for name in config.embed]
    names = [n["name"] for n in numeric]
    for cat in categorical:
        names += [f"{cat['name']}={v}" for v in cat["vocab"]] + [f"{cat['name']}=<unseen>"]
    names += [f"{e['name']}#index" for e in embed]
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "task": config.task,
        "label": config.label,
        "rows": rows,
        "numeric": numeric,
        "categorical": categorical,
        "embed": embed,
        "image": image_state(image_parts, config.image) if config.image else None,
        "text": text_state(config.text) if config.text else None,
        **labels_mod.fitted(labels_mod.merge(label_parts, config.task), config.task, config.label),
    }
    if state["image"] is not None:
        names += [f"{config.image.column}#pixel{i}" for i in range(math.prod(image_shape(state["image"])))]
    if state["text"] is not None:
        names += [f"{config.text.column}#embedding{i}" for i in range(state["text"]["dim"])]
    state["feature_names"] = names
    state["output_dim"] = len(names)
    state["layout"] = layout(state)
    return state


def layout(state: dict[str, Any]) -> list[dict[str, Any]]:
    """What each block of the feature matrix is: kind, first column (offset), width, and per kind the column
    (and cardinality for an embed index, shape [C, H, W] for an image)."""
    blocks: list[dict[str, Any]] = []
    offset = 0
    if state["numeric"]:
        width = len(state["numeric"])
        blocks.append({"kind": "numeric", "offset": 0, "width": width})
        offset = width
    for spec in state["categorical"]:
        width = len(spec["vocab"]) + 1
        blocks.append({"kind": "onehot", "column": spec["name"], "offset": offset, "width": width})
        offset += width
    for spec in state.get("embed", []):
        blocks.append({"kind": "embed", "column": spec["name"], "offset": offset, "width": 1,
                       "cardinality": len(spec["vocab"]) + 1})
        offset += 1
    if state.get("image") is not None:
        shape = image_shape(state["image"])
        blocks.append({"kind": "image", "column": state["image"]["config"]["column"], "offset": offset,
                       "width": math.prod(shape), "shape": shape})
        offset += math.prod(shape)
    if state.get("text") is not None:
        column = state["text"]["tokenize"]["config"]["column"]
        blocks.append({"kind": "text", "column": column, "offset": offset, "width": state["text"]["dim"]})
    return blocks


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
    for spec in state.get("embed", []):
        vocab = spec["vocab"]
        raw = _categories(batch.column(spec["name"])).to_pandas()
        codes = pd.Categorical(raw.astype(object), categories=vocab).codes.astype(np.int64)
        out[:, col] = codes + 1  # -1 (unseen or null) -> 0, vocabulary value i -> i + 1
        col += 1
    if state.get("image") is not None:
        pixels = apply_image(batch, state["image"])
        out[:, col:col + pixels.shape[1]] = pixels
        col += pixels.shape[1]
    if state.get("text") is not None:
        embedded = apply_text(batch, state["text"])
        out[:, col:col + embedded.shape[1]] = embedded
    return out


def labels(batch: pa.Table, state: dict[str, Any]) -> np.ndarray:
    """The training target as float32: 0/1 (binary), the class index (multiclass) or the value (regression)."""
    return labels_mod.encode(batch.column(state["label"]), state)


def input_columns(state: dict[str, Any]) -> list[str]:
    """The raw columns ``transform`` reads, in order."""
    columns = [s["name"] for s in state["numeric"]] + [s["name"] for s in state["categorical"]]
    columns += [s["name"] for s in state.get("embed", [])]
    if state.get("image") is not None:
        columns.append(state["image"]["config"]["column"])
    if state.get("text") is not None:
        columns.append(state["text"]["tokenize"]["config"]["column"])
    return columns


def fusable(state: dict[str, Any]) -> bool:
    """Whether ONNX can compute this featurizer (numeric, one-hot and embed indexes; not images or text)."""
    return state.get("image") is None and state.get("text") is None


def dumps(state: dict[str, Any]) -> str:
    """Serialize a fitted state (JSON; never pickle)."""
    return json.dumps(state, indent=2, sort_keys=True)


def loads(text: str) -> dict[str, Any]:
    """Parse a fitted state written by ``dumps``, checking its version."""
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"featurizer state is not valid JSON ({exc}); re-run the featurize stage") from exc
    if not isinstance(state, dict) or state.get("version") not in (1, STATE_VERSION):
        found = state.get("version") if isinstance(state, dict) else None
        raise RegistryError(
            f"featurizer state version {found!r}; this rayml reads versions 1 and {STATE_VERSION}. Re-run the "
            "pipeline"
        )
    state.setdefault("task", "binary")  # version 1: binary classification of numeric and one-hot columns
    state.setdefault("layout", layout(state))
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


FEATURES = "features"
LABEL = "label"
SPLIT = "_split"


def run_stage(
    valid_path: str,
    *,
    split: Any,
    config: FeaturizeConfig,
    out_dir: str | Path,
    storage: StorageConfig | None = None,
    fitted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Split the valid records (``split`` is a ``SplitConfig``), fit on train only, and write the featurized
    ``train``/``val``/``test`` splits as Parquet (``features``, ``label`` and the ``keep`` columns) plus the
    fitted state as ``featurizer.json``. ``valid_path`` and ``out_dir`` may be s3:// (``storage`` reaches them).

    ``fitted``, a state fitted from the train records' statistics gathered while they were written
    (``merge_stats`` of ``train_stats_tap``'s results, with the same ``split`` and ``config``), replaces the
    fitting pass over the records.
    """
    import ray.data

    from rayml.run_dir import dataset_path
    from rayml.validate import parquet_rows

    out = out_dir if store.is_remote(out_dir) else Path(out_dir)
    store.delete(out, storage)  # a rerun of an interrupted stage starts clean instead of appending
    if isinstance(out, Path):
        out.mkdir(parents=True)
    needed = sorted({config.label, split.key, *config.numeric, *config.categorical, *config.embed,
                     *config.media_columns(), *config.keep})
    source, filesystem = dataset_path(valid_path, storage)
    # Enough read tasks to keep every CPU busy, few enough that per-task overhead stays small.
    files = len(store.list_files(valid_path, (".parquet",), storage))
    blocks = max(1, min(files, 4 * int(ray.cluster_resources().get("CPU", 1))))
    records = ray.data.read_parquet(source, filesystem=filesystem, partitioning=None,
                                    override_num_blocks=blocks).select_columns(needed)
    where = _where(split)
    # Fit on the train rows (a pass over the records unless the state came fitted), then featurize every row
    # once and write the three splits in one partitioned write (<out>/_split=train|val|test/).
    state = fitted
    if state is None:
        partials = records.map_batches(
            _train_stats_json, fn_kwargs={"config": config.model_dump(), "where": where}, batch_format="pyarrow"
        ).take_all()
        state = merge_stats((json.loads(p["stats"]) for p in partials), config)
    if state["rows"] == 0:
        raise DataValidationError("the train split is empty; add data or raise split.train")
    store.write_text(store.join(out, STATE_FILE), dumps(state), storage)
    target, filesystem = dataset_path(out, storage)
    records.map_batches(
        _featurize_splits, fn_kwargs={"state": state, "keep": config.keep, "where": where}, batch_format="pyarrow"
    ).write_parquet(target, filesystem=filesystem, partition_cols=[SPLIT])
    paths = {name: store.join(out, f"{SPLIT}={name}") for name in SPLITS}
    counts = {name: parquet_rows(path, storage) if store.exists(path, storage) else 0
              for name, path in paths.items()}
    return {
        "state_path": str(store.join(out, STATE_FILE)),
        "fitted_from": "records" if fitted is None else "validate",  # a fitting pass, or the validate stage's
        "input_dim": state["output_dim"],
        "label_counts": state.get("label_counts"),
        "task": state["task"],
        "classes": state.get("classes"),
        "label_stats": state.get("label_stats"),
        "layout": state["layout"],
        "rows": counts,
        "paths": {name: str(path) for name, path in paths.items()},
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
    from rayml.split import split_codes

    mask = split_codes(batch.column(key), train, val, seed) == SPLITS.index(name)
    return batch.filter(pa.array(mask, pa.bool_()))


def _split_codes(batch: pa.Table, where: dict[str, Any]) -> np.ndarray:
    from rayml.split import split_codes

    return split_codes(batch.column(where["key"]), where["train"], where["val"], where["seed"])


def _train_stats_json(batch: pa.Table, config: dict[str, Any], where: dict[str, Any]) -> dict[str, np.ndarray]:
    """The featurizer statistics of the batch's train rows, as JSON."""
    return {"stats": np.array([json.dumps(_train_stats(batch, config, where))])}


def train_stats_tap(split: Any, config: FeaturizeConfig) -> Callable[[pa.Table], dict[str, Any] | None]:
    """For ``validate.run_stage(tap=...)``: the featurizer statistics of a written batch's valid train
    records; ``fit_from_tapped`` of them is the state ``run_stage(fitted=...)`` uses instead of fitting."""
    return functools.partial(_valid_train_stats, config=config.model_dump(), where=_where(split))


def fit_from_tapped(tapped: list[dict[str, Any] | None], config: FeaturizeConfig) -> dict[str, Any] | None:
    """The state fitted from ``train_stats_tap``'s results, or None when they do not fit one (e.g. a label
    outside its task): the featurize stage then fits on its own and reports the problem as its own."""
    if any(part is None for part in tapped):
        return None
    try:
        return merge_stats(tapped, config)
    except DataValidationError:
        return None


def _valid_train_stats(batch: pa.Table, config: dict[str, Any], where: dict[str, Any]) -> dict[str, Any] | None:
    from rayml.validate import STATUS, VALID

    try:
        return _train_stats(batch.filter(pc.equal(batch.column(STATUS), VALID)), config, where)
    except DataValidationError:  # a featurize problem: left to the featurize stage (see fit_from_tapped)
        return None


def _train_stats(batch: pa.Table, config: dict[str, Any], where: dict[str, Any]) -> dict[str, Any]:
    train = batch.filter(pa.array(_split_codes(batch, where) == SPLITS.index("train"), pa.bool_()))
    return partial_stats(train, FeaturizeConfig(**config))


def _where(split: Any) -> dict[str, Any]:
    return {"key": split.key, "train": split.train, "val": split.val, "seed": split.seed}


def _featurize_splits(batch: pa.Table, state: dict[str, Any], keep: list[str], where: dict[str, Any]
                      ) -> pa.Table:
    """Every row's features, label and ``keep`` columns, with its split in ``_split``. Built as Arrow: the
    ``keep`` columns pass through without a round trip via Python objects."""
    from ray.data.extensions import ArrowTensorArray

    columns: dict[str, Any] = {
        FEATURES: ArrowTensorArray.from_numpy(transform(batch, state)),
        LABEL: pa.array(labels(batch, state)),
        SPLIT: pc.take(pa.array(SPLITS, pa.string()), pa.array(_split_codes(batch, where))),
    }
    for name in keep:
        columns[name] = batch.column(name)
    return pa.table(columns)
