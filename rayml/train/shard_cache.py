"""A training worker's dataset shard held as tensors after its first pass.

Ray Data streams a shard through ``iter_torch_batches`` every epoch: for a small model on a small split that
costs more than the training steps (benchmarks/train.py measured the fraud MLP at 0.23x a single process that
holds its rows in memory). A split under ``train.cache``'s size limit is kept instead: the first epoch reads the
whole shard from Ray Data in its (deterministic) stored order, and every epoch, the first included, takes the
kept rows in an order seeded by the epoch, cut into batches of the same size. An epoch's order therefore does
not depend on whether the cache was already warm, so a run resumed at epoch 3 trains on what an uninterrupted
run would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

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
            self.columns = {name: torch.cat([b[name] for b in kept]) for name in kept[0]}
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
