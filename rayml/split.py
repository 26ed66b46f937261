"""Deterministic train/val/test assignment by a hash of each record's key.

The split of a record depends only on its key and the seed, never on file order, partitioning or the
number of workers, so a rerun over the same data (or a superset of it) keeps every record in its split.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from rayml.config import StrictModel
from rayml.keyed_hash import hash_text

SPLITS = ("train", "val", "test")
_BUCKETS = 1_000_000


class SplitConfig(StrictModel):
    """How records are divided into train, validation and test sets."""

    key: str = Field(min_length=1, description="a column that identifies a record, e.g. transaction_id")
    train: float = Field(0.8, gt=0.0, lt=1.0, description="fraction of records for training")
    val: float = Field(0.1, gt=0.0, lt=1.0, description="fraction for validation (threshold, early metrics)")
    test: float = Field(0.1, gt=0.0, lt=1.0, description="fraction held out for the final evaluation")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="changes which records land in which split")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test is {total:g}; make the three fractions sum to 1")
        return self


def assign(keys: pa.Array | pa.ChunkedArray, train: float, val: float, seed: int) -> np.ndarray:
    """The split name of each key: an array of 'train', 'val' or 'test' (object dtype)."""
    return np.asarray(SPLITS, dtype=object)[split_codes(keys, train, val, seed)]


def split_codes(keys: pa.Array | pa.ChunkedArray, train: float, val: float, seed: int) -> np.ndarray:
    """The split of each key as its index in ``SPLITS`` (0 train, 1 val, 2 test), int8."""
    # A key is hashed as its text, so 5 is "5" whatever else shares its batch, with pandas' keyed SipHash
    # (pd.util.hash_array of the strings, computed from the Arrow buffers by rayml.keyed_hash): stable across
    # processes and versions, unlike hash().
    hashed = hash_text(keys, f"{seed:016d}".encode())
    position = (hashed % np.uint64(_BUCKETS)).astype(np.float64) / _BUCKETS
    codes = np.full(len(hashed), 2, dtype=np.int8)
    codes[position < train + val] = 1
    codes[position < train] = 0
    return codes
