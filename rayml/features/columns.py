"""Reading a column of a batch (a ``pyarrow.Table`` or a mapping of columns) as a featurizer needs it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayml.features.base import FeatureInputError


def column_of(batch: Any, name: str) -> Any:
    """The column ``name`` of ``batch``: a ``pa.Array`` for tables, else whatever the mapping holds."""
    if isinstance(batch, pa.Table):
        if name not in batch.column_names:
            raise FeatureInputError(
                f"batch has no column {name!r} (columns: {batch.column_names}); add it or fix the "
                "featurizer's column", name,
            )
        return batch.column(name).combine_chunks()
    if isinstance(batch, Mapping):
        if name not in batch:
            raise FeatureInputError(
                f"batch has no column {name!r} (columns: {sorted(batch)}); add it or fix the featurizer's "
                "column", name,
            )
        return batch[name]
    raise TypeError(f"a batch is a pyarrow.Table or a mapping of columns, got {type(batch).__name__}")


def num_rows(batch: Any) -> int:
    """Rows in ``batch`` (the length of its first column; 0 for no columns)."""
    if isinstance(batch, pa.Table):
        return batch.num_rows
    for values in batch.values():
        return len(values)
    return 0


def as_arrow(values: Any) -> pa.Array:
    """``values`` (Arrow, numpy or a list) as one contiguous ``pa.Array``."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return pa.array(values)
    return pa.array(list(values), from_pandas=True)


def read_float(batch: Any, name: str) -> np.ndarray:
    """Column ``name`` as float64 with NaN for every missing value: null, NaN, +inf and -inf."""
    values = column_of(batch, name)
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        out = values.astype(np.float64, copy=True)
    else:
        array = as_arrow(values)
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        kind = array.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                or pa.types.is_decimal(kind) or pa.types.is_null(kind)):
            raise FeatureInputError(
                f"column {name!r} holds {kind}, not numbers; declare it as float or int in "
                "validation.columns, or use a categorical featurizer for it", name,
            )
        out = np.asarray(pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        out = out.copy() if not out.flags.writeable else out
    out[~np.isfinite(out)] = np.nan
    return out


def read_strings(batch: Any, name: str) -> pa.Array:
    """Column ``name`` as an Arrow string array; numbers and bools become their text (7 -> '7')."""
    array = as_arrow(column_of(batch, name))
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_large_string(array.type):
        return pc.cast(array, pa.string())
    if pa.types.is_string(array.type):
        return array
    try:
        return pc.cast(array, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FeatureInputError(
            f"column {name!r} holds {array.type}, which has no text form for a category; use strings, "
            "integers or bools", name,
        ) from exc


def describe(value: Any) -> str:
    """A value as it should appear in a problem message: short, and quoted like Python shows it."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
