"""A training worker's dataset shard held as tensors after its first pass.

Ray Data streams a shard through ``iter_torch_batches`` every epoch: for a small model on a small split that
costs more than the training steps (benchmarks/train.py measured the fraud MLP at 0.23x a single process that
holds its rows in memory). A split under ``train.cache``'s size limit is kept instead: the first epoch reads the
whole shard from Ray Data in its (deterministic) stored order, and every epoch, the first included, takes the
kept rows in an order seeded by the epoch, cut into batches of the same size. An epoch's order therefore does
not depend on whether the cache was already warm, so a run resumed at epoch 3 trains on what an uninterrupted
run would have.

When the splits are materialized in Ray's object store, the driver hands every worker the splits' block
references (``split_blocks``) instead of a Ray Data streaming split, and each worker takes its equal, contiguous
share of the rows (``read_rows``): no split coordinator, no streaming execution to start before the first step
(the first epoch cost 2-3 s more than the others through the streaming split, see benchmarks/RESULTS.md), and
each rank's rows are the same in every attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

Batch = dict[str, torch.Tensor]


class ShardCache:
    """Batches of one shard: from ``source`` on the first pass, from memory after it (``keep=False``: from
    ``source`` every time)."""

    def __init__(self, batch_size: int, seed: int, shuffle: bool, keep: bool = True) -> None:
        self.batch_size, self.seed, self.shuffle, self.keep = batch_size, seed, shuffle, keep
        self.columns: dict[str, torch.Tensor] | None = None

    @property
    def rows(self) -> int:
        return 0 if self.columns is None else len(next(iter(self.columns.values())))

    def batches(self, epoch: int, source: Callable[[], Iterable[Batch]]) -> Iterator[Batch]:
        """One epoch's batches; ``source()`` gives the shard in its stored order (read once, when ``keep``)."""
        if not self.keep:
            yield from source()
            return
        if self.columns is None:
            kept = list(source())
            if not kept:
                return
            # one batch (read_rows' whole share, already a copy) is kept as is; streamed batches are joined
            self.columns = kept[0] if len(kept) == 1 else {name: torch.cat([b[name] for b in kept]) for name in kept[0]}
        rows = self.rows
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(rows, generator=generator)
        else:
            order = torch.arange(rows)
        device = next(iter(self.columns.values())).device
        order = order.to(device)
        for start in range(0, rows, self.batch_size):
            index = order[start : start + self.batch_size]
            yield {name: values[index] for name, values in self.columns.items()}


def split_blocks(dataset: Any) -> list[Any] | None:
    """The block references of a materialized Ray Dataset, in order (Arrow tables), or None for a dataset that
    is not materialized (it streams through Ray Train's split instead)."""
    from ray.data.dataset import MaterializedDataset

    return dataset.to_arrow_refs() if isinstance(dataset, MaterializedDataset) else None


def read_rows(blocks: list[Any], rank: int, world_size: int, device: torch.device) -> list[Batch]:
    """Rank ``rank``'s share of the rows in ``blocks`` (see ``split_blocks``) as one batch of float32 tensors on
    ``device`` (none when the share is empty): rows ``[rank * n, (rank + 1) * n)`` with ``n = rows //
    world_size``, so every rank takes the same number of steps (DDP needs that) and at most ``world_size - 1``
    trailing rows are left out, as with Ray Train's equal split."""
    import pyarrow as pa
    import ray
    from ray.data.block import BlockAccessor

    tables = ray.get(list(blocks))  # zero-copy on the node holding them; another node pulls the whole split
    slices = share_slices([t.num_rows for t in tables], rank, world_size)
    parts = [tables[index].slice(lo, hi - lo) for index, lo, hi in slices]
    if not parts:
        return []
    columns = BlockAccessor.for_block(pa.concat_tables(parts)).to_batch_format("numpy")
    # copies: the rows then live in the worker, not pinned (read-only) in the object store
    return [{name: torch.tensor(values, dtype=torch.float32, device=device) for name, values in columns.items()}]


def share_slices(block_rows: list[int], rank: int, world_size: int) -> list[tuple[int, int, int]]:
    """(block index, first row, end row) of rank ``rank``'s equal, contiguous share of blocks holding
    ``block_rows`` rows each: rows ``[rank * n, (rank + 1) * n)`` of their concatenation, ``n = total //
    world_size``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    share = sum(block_rows) // world_size
    start, stop = rank * share, (rank + 1) * share
    slices, offset = [], 0
    for index, rows in enumerate(block_rows):
        lo, hi = max(start - offset, 0), min(stop - offset, rows)
        if lo < hi:
            slices.append((index, lo, hi))
        offset += rows
    return slices
