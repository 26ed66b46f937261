"""A Ray Data Parquet write that also hands each written block to a function and brings the results back.

The validate stage uses it to gather the featurizer's statistics of the train records while it writes them, so
the featurize stage needs no separate pass over the records to fit. The results travel as Ray Data's write
returns: a write task that is retried replaces its failed attempt's results, so no block is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

Tap = Callable[[pa.Table], Any]


def write_parquet(dataset: Any, path: str, *, partition_cols: list[str], filesystem: Any = None,
                  tap: Tap | None = None) -> list[Any] | None:
    """``dataset.write_parquet(path, partition_cols=..., filesystem=...)``; with ``tap``, the list of
    ``tap(block)`` for every non-empty block written (see ``tapped_parquet_sink``), else None."""
    if tap is None:
        dataset.write_parquet(path, filesystem=filesystem, partition_cols=partition_cols)
        return None
    sink = tapped_parquet_sink(path, tap, partition_cols=partition_cols, filesystem=filesystem)
    dataset.write_datasink(sink)
    return sink.tapped


def tapped_parquet_sink(path: str, tap: Tap, *, partition_cols: list[str], filesystem: Any = None) -> Any:
    """A datasink for ``Dataset.write_datasink`` that writes like ``write_parquet(path, partition_cols=...,
    filesystem=...)``. Once the write has finished, its ``tapped`` attribute lists ``tap(block)`` for every
    non-empty block written (``tap`` runs in the write tasks; its results must be small)."""
    # Ray Data's own Parquet sink, from its internal package (rayml pins Ray's minor version); the class is
    # defined here so importing this module does not import Ray.
    from ray.data._internal.datasource.parquet_datasink import ParquetDatasink
    from ray.data.block import BlockAccessor

    class TappedParquetDatasink(ParquetDatasink):
        def __init__(self) -> None:
            super().__init__(path, partition_cols=partition_cols, filesystem=filesystem)
            self.tapped: list[Any] = []

        def write(self, blocks: Iterable[Any], ctx: Any) -> list[Any]:
            tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
            super().write(tables, ctx)
            return [tap(table) for table in tables if table.num_rows]

        def on_write_complete(self, write_result: Any) -> None:
            super().on_write_complete(write_result)
            self.tapped = [result for returned in write_result.write_returns for result in returned or []]

    return TappedParquetDatasink()
