"""The label of each task: its per-batch statistics, their merge, and its encoding as a training target.

    binary       0/1 (int, bool or float); the target is 0.0/1.0; statistics count each class
    multiclass   any int or string values; the classes are fitted on the train split (sorted, numbers
                 numerically) and the target is the class index; statistics count each class
    regression   a finite number; the target is the value; statistics are (count, mean, sum of squares)
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayml.errors import DataValidationError
from rayml.features import stats as S

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")


def partial(column: pa.ChunkedArray | pa.Array, task: str, name: str) -> dict[str, Any]:
    """Statistics of one batch's labels; a label the task cannot use is a DataValidationError."""
    if task == "regression":
        values = _floats(column)
        if not np.isfinite(values).all():
            raise DataValidationError(
                f"label column {name!r} holds nulls or non-finite values; declare it in validation.columns as a "
                "non-nullable float so such records are quarantined"
            )
        return {"moments": S.moments(values)}
    if task == "binary":
        values = _floats(column)
        if not np.isfinite(values).all() or not np.isin(values, (0.0, 1.0)).all():
            raise DataValidationError(
                f"label column {name!r} holds nulls or values other than 0/1; declare it in validation.columns "
                "as a non-nullable int with min 0 and max 1 so such records are quarantined"
            )
        positives = int(values.sum())
        return {"counts": {"0": int(values.size - positives), "1": positives}}
    text = _strings(column)
    if text.null_count:
        raise DataValidationError(
            f"label column {name!r} holds nulls; declare it in validation.columns as non-nullable so such records "
            "are quarantined"
        )
    counts = pc.value_counts(text).to_pylist()
    return {"counts": {str(v["values"]): int(v["counts"]) for v in counts}}


def merge(parts: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """Combine the statistics of every batch."""
    if task == "regression":
        moments = [0.0, 0.0, 0.0]
        for part in parts:
            moments = S.merge_moments(moments, part["moments"])
        return {"moments": moments}
    counts: dict[str, int] = {"0": 0, "1": 0} if task == "binary" else {}
    for part in parts:
        for value, n in part["counts"].items():
            counts[value] = counts.get(value, 0) + n
    return {"counts": counts}


def fitted(merged: dict[str, Any], task: str, name: str) -> dict[str, Any]:
    """The label part of a featurizer state: ``label_counts`` and ``classes`` or ``label_stats``."""
    if task == "regression":
        n, mean, _ = merged["moments"]
        return {"label_stats": {"rows": int(n), "mean": mean, "std": S.std(merged["moments"])}}
    counts = merged["counts"]
    if task == "binary":
        return {"label_counts": counts}
    classes = sorted(counts, key=_class_order)
    if len(classes) < 2:
        raise DataValidationError(
            f"label column {name!r} has {len(classes)} class(es) in the train split; multiclass needs at least 2"
        )
    return {"label_counts": {c: counts[c] for c in classes}, "classes": classes}


def encode(column: pa.ChunkedArray | pa.Array, state: dict[str, Any]) -> np.ndarray:
    """The training target of each row as float32: 0/1, the class index, or the value."""
    task = state.get("task", "binary")
    if task != "multiclass":
        return _floats(column).astype(np.float32)
    classes = state["classes"]
    found = pc.index_in(_strings(column), value_set=pa.array(classes, pa.string()))
    unknown = np.asarray(found.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    index = np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    if unknown.any():
        seen = sorted({str(v) for v in np.asarray(_strings(column).to_pylist(), dtype=object)[unknown]})
        raise DataValidationError(
            f"label column {state['label']!r} has class(es) {seen[:10]} that the train split does not; the model "
            f"knows {classes}. Give rare classes more rows, or drop them before training"
        )
    return index.astype(np.float32)


def classes_of(state: dict[str, Any]) -> list[str] | None:
    """The class names of a multiclass state, else None."""
    return list(state["classes"]) if state.get("task") == "multiclass" else None


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_floating(array.type):
        array = pc.cast(array, pa.int64())  # 3.0 is class "3", as an int column would name it
    return array if pa.types.is_string(array.type) else pc.cast(array, pa.string())


def _class_order(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)
