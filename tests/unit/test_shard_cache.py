"""The training worker's shard cache: the first pass comes from the source, later ones from memory."""

from __future__ import annotations

import pytest
import torch

from rayml.train.shard_cache import ShardCache


def source_of(rows: int, batch: int, calls: list[int]):
    def source():
        calls.append(1)
        for start in range(0, rows, batch):
            index = torch.arange(start, min(rows, start + batch))
            yield {"features": index.float().unsqueeze(1), "label": index.float()}
    return source


def test_later_epochs_reshuffle_the_kept_rows_without_reading_the_source_again():
    calls: list[int] = []
    cache = ShardCache(batch_size=4, seed=7, shuffle=True)
    first = list(cache.batches(0, source_of(10, 4, calls)))
    assert [len(b["label"]) for b in first] == [4, 4, 2] and cache.rows == 10
    assert torch.cat([b["label"] for b in first]).tolist() != list(range(10))  # epoch 0 is shuffled too
    second = list(cache.batches(1, source_of(10, 4, calls)))
    third = list(cache.batches(2, source_of(10, 4, calls)))
    assert len(calls) == 1  # only the first epoch read the source
    for epoch in (second, third):
        labels = torch.cat([b["label"] for b in epoch])
        assert [len(b["label"]) for b in epoch] == [4, 4, 2]
        assert sorted(labels.tolist()) == list(range(10))  # every row once
        assert torch.equal(torch.cat([b["features"] for b in epoch]).squeeze(1), labels)  # rows stay whole
    assert not torch.equal(torch.cat([b["label"] for b in second]), torch.cat([b["label"] for b in third]))
    again = ShardCache(batch_size=4, seed=7, shuffle=True)
    list(again.batches(0, source_of(10, 4, [])))
    assert torch.equal(torch.cat([b["label"] for b in again.batches(1, source_of(10, 4, []))]),
                       torch.cat([b["label"] for b in second]))  # seeded per epoch


def test_validation_keeps_its_order_and_keep_false_always_streams():
    calls: list[int] = []
    ordered = ShardCache(batch_size=3, seed=0, shuffle=False)
    list(ordered.batches(0, source_of(7, 3, calls)))
    assert torch.cat([b["label"] for b in ordered.batches(1, source_of(7, 3, calls))]).tolist() == list(range(7))
    streaming = ShardCache(batch_size=3, seed=0, shuffle=True, keep=False)
    for epoch in range(3):
        assert len(list(streaming.batches(epoch, source_of(7, 3, calls)))) == 3
    assert len(calls) == 4 and streaming.rows == 0


def test_an_epoch_order_does_not_depend_on_a_warm_cache():
    """A run resumed at epoch 2 fills its cache then; its epoch-2 batches must be the uninterrupted run's."""
    warm = ShardCache(batch_size=4, seed=3, shuffle=True)
    for epoch in (0, 1):
        uninterrupted = [b["label"].tolist() for b in warm.batches(epoch, source_of(10, 4, []))]
    resumed = ShardCache(batch_size=4, seed=3, shuffle=True)
    assert [b["label"].tolist() for b in resumed.batches(1, source_of(10, 4, []))] == uninterrupted
    assert list(ShardCache(batch_size=4, seed=3, shuffle=True).batches(0, lambda: iter([]))) == []


def test_ranks_share_the_blocks_rows_equally_contiguously_and_drop_only_the_remainder():
    from rayml.train.shard_cache import share_slices

    blocks = [5, 0, 3, 4]  # 12 rows, one block empty
    assert share_slices(blocks, 0, 2) == [(0, 0, 5), (2, 0, 1)]
    assert share_slices(blocks, 1, 2) == [(2, 1, 3), (3, 0, 4)]
    covered = []
    for rank in range(5):  # 12 // 5 = 2 rows each; the last 2 rows go to no rank
        rows = [(index, row) for index, lo, hi in share_slices(blocks, rank, 5) for row in range(lo, hi)]
        assert len(rows) == 2
        covered += rows
    assert covered == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1)]
    assert share_slices([1], 0, 2) == []  # fewer rows than ranks: every share is empty, no rank steps
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        share_slices(blocks, 2, 2)
