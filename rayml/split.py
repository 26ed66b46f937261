"""Deterministic train/val/test assignment by a hash of each record's key.

The split of a record depends only on its key and the seed, never on file order, partitioning or the
number of workers, so a rerun over the same data (or a superset of it) keeps every record in its split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field, model_validator

from rayml.config import StrictModel

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
    values = np.asarray(keys.to_pandas(), dtype=object)
    # pandas' hash_array is a keyed SipHash: stable across processes and runs, unlike Python's hash().
    hashed = pd.util.hash_array(values, hash_key=f"rayml-split{seed:05d}"[:16].ljust(16, "0"))
    position = (hashed % _BUCKETS).astype(np.float64) / _BUCKETS
    names = np.full(len(values), "test", dtype=object)
    names[position < train + val] = "val"
    names[position < train] = "train"
    return names
