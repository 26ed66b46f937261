"""Unit tests for rayml.keyed_hash: the numpy SipHash must equal pandas' hash_array bit for bit (no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rayml.keyed_hash import hash_text

KEY = "0000000000000042"


def pandas_hash(values: list[str | None]) -> np.ndarray:
    """The definition: pandas' keyed hash of the Python strings (a null hashes as a missing category)."""
    return pd.util.hash_array(np.array(values, dtype=object), hash_key=KEY)


def random_text(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    alphabet = list("azAZ09-_ .é€ß😀\t")
    return ["".join(rng.choice(alphabet, size=int(rng.integers(0, 70)))) for _ in range(count)]


def test_equals_pandas_on_strings_of_every_length_and_script():
    values = random_text(3000, 0) + ["", "a" * 7, "a" * 8, "b" * 15, "b" * 16, "c" * 255, "c" * 256, "d" * 1000]
    np.testing.assert_array_equal(hash_text(pa.array(values), KEY.encode()), pandas_hash(values))


def test_equals_pandas_on_keys_of_one_length():
    values = [f"tx-{i:012d}" for i in range(20_000)]
    np.testing.assert_array_equal(hash_text(pa.array(values), KEY.encode()), pandas_hash(values))


def test_keys_of_one_length_between_keys_of_another():
    values = ["a" * 8, "b", "c" * 8, "d", "f" * 8]
    np.testing.assert_array_equal(hash_text(pa.array(values), KEY.encode()), pandas_hash(values))


def test_nulls_sliced_chunked_and_large_string_arrays():
    values = random_text(500, 1)
    values[3] = values[100] = None
    expected = pandas_hash(values)
    np.testing.assert_array_equal(hash_text(pa.array(values), KEY.encode()), expected)
    np.testing.assert_array_equal(hash_text(pa.array(values).slice(50, 300), KEY.encode()), expected[50:350])
    chunked = pa.chunked_array([pa.array(values[:123]), pa.array(values[123:])])
    np.testing.assert_array_equal(hash_text(chunked, KEY.encode()), expected)
    np.testing.assert_array_equal(hash_text(pa.array(values, pa.large_string()), KEY.encode()), expected)
    assert hash_text(pa.array([None, None], pa.string()), KEY.encode()).tolist() == [2**64 - 1] * 2
    assert hash_text(pa.array([], pa.string()), KEY.encode()).shape == (0,)


def test_integers_hash_as_their_text():
    numbers = [0, 7, -12, 2**62, None]
    as_text = [None if v is None else str(v) for v in numbers]
    np.testing.assert_array_equal(hash_text(pa.array(numbers, pa.int64()), KEY.encode()), pandas_hash(as_text))


def test_the_key_must_be_16_bytes():
    with pytest.raises(ValueError, match="16 bytes"):
        hash_text(pa.array(["a"]), b"short")
