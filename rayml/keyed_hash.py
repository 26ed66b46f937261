"""pandas' keyed string hash (``pd.util.hash_array`` of text), computed from Arrow buffers with numpy.

Split assignment must stay bit-for-bit what it has always been (a record keeps its split across versions), and
it was defined as pandas' hash: SipHash-2-4 of each string's UTF-8 bytes under a 16-byte key, then a 64-bit
mixing step; a null hashes to the largest uint64. pandas computes it one Python string at a time; here every
string of a batch goes through each SipHash round together, grouped by its number of 8-byte blocks.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NULL_HASH = np.uint64(2**64 - 1)
_INIT = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)


def hash_text(values: pa.Array | pa.ChunkedArray, key: bytes) -> np.ndarray:
    """uint64 hashes equal to ``pd.util.hash_array(values as Python strings, hash_key=key)``; ``key`` is the
    16 bytes of the hash key. Non-string values are hashed as their text (Arrow's cast to string)."""
    if len(key) != 16:
        raise ValueError(f"the hash key must be 16 bytes, got {len(key)}")
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not pa.types.is_string(array.type):
        array = pc.cast(array, pa.string())
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset: array.offset + n + 1]
    data = array.buffers()[2]
    payload = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    lengths = (offsets[1:] - offsets[:-1]).astype(np.int64)
    blocks = lengths // 8 + 1  # SipHash's last block carries the length in its top byte
    out = np.empty(n, dtype=np.uint64)
    for count in np.unique(blocks):
        rows = np.flatnonzero(blocks == count)
        words = _words(payload, offsets[:-1][rows].astype(np.int64), lengths[rows], int(count))
        out[rows] = _siphash24(words, key)
    _mix(out)
    if array.null_count:
        out[np.asarray(array.is_null())] = _NULL_HASH
    return out


def _words(payload: np.ndarray, starts: np.ndarray, lengths: np.ndarray, count: int) -> np.ndarray:
    """The 64-bit message words of each string, shaped [count, rows]: its bytes read little-endian and
    zero-padded, with the string's length in the top byte of its last word."""
    words = np.zeros((len(starts), count), dtype=np.uint64)
    matrix = words.view(np.uint8).reshape(len(starts), count * 8)  # the same memory, byte by byte
    shortest, longest = int(lengths.min()), int(lengths.max())
    back_to_back = shortest == longest > 0 and starts[-1] - starts[0] == (len(starts) - 1) * longest
    if back_to_back:  # one length, no other string between them: a plain copy
        matrix[:, :longest] = payload[starts[0]: starts[0] + len(starts) * longest].reshape(-1, longest)
    for length in () if back_to_back else np.unique(lengths):  # else one gather per distinct length
        if length:
            rows = np.flatnonzero(lengths == length)
            matrix[rows, :length] = payload[starts[rows, None] + np.arange(length)]
    matrix[:, count * 8 - 1] = (lengths & 0xFF).astype(np.uint8)
    if sys.byteorder == "big":  # SipHash reads its words little-endian
        words.byteswap(inplace=True)
    return np.ascontiguousarray(words.T)  # [word, row]: each round reads one contiguous row of words


def _siphash24(words: np.ndarray, key: bytes) -> np.ndarray:
    k0, k1 = (np.uint64(int.from_bytes(key[i:i + 8], "little")) for i in (0, 8))
    rows = words.shape[1]
    v0 = np.full(rows, k0 ^ np.uint64(_INIT[0]), dtype=np.uint64)
    v1 = np.full(rows, k1 ^ np.uint64(_INIT[1]), dtype=np.uint64)
    v2 = np.full(rows, k0 ^ np.uint64(_INIT[2]), dtype=np.uint64)
    v3 = np.full(rows, k1 ^ np.uint64(_INIT[3]), dtype=np.uint64)
    state, spare = [v0, v1, v2, v3], np.empty(rows, dtype=np.uint64)
    for word in words:
        state[3] ^= word
        _round(state, spare)
        _round(state, spare)
        state[0] ^= word
    state[2] ^= np.uint64(0xFF)
    for _ in range(4):
        _round(state, spare)
    return state[0] ^ state[1] ^ state[2] ^ state[3]


def _rotl(x: np.ndarray, bits: int, spare: np.ndarray) -> None:
    """Rotate ``x`` left by ``bits``, in place (``spare`` is scratch space of the same shape)."""
    np.left_shift(x, np.uint64(bits), out=spare)
    x >>= np.uint64(64 - bits)
    x |= spare


def _round(v: list[np.ndarray], spare: np.ndarray) -> None:
    """One SipRound over every row, in place."""
    v[0] += v[1]
    _rotl(v[1], 13, spare)
    v[1] ^= v[0]
    _rotl(v[0], 32, spare)
    v[2] += v[3]
    _rotl(v[3], 16, spare)
    v[3] ^= v[2]
    v[0] += v[3]
    _rotl(v[3], 21, spare)
    v[3] ^= v[0]
    v[2] += v[1]
    _rotl(v[1], 17, spare)
    v[1] ^= v[2]
    _rotl(v[2], 32, spare)


def _mix(h: np.ndarray) -> None:
    """pandas' redistribution of the 64-bit hashes (a splitmix64 finalizer), in place."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
