"""Categorical featurizers: one-hot, ordinal and hashing, with explicit policies for unseen values and nulls.

Values are compared as text (an int 7 is '7', a bool is 'true'), so a column keeps its vocabulary whether a
batch holds it as strings, ints or a dictionary array.

One-hot and ordinal fit a vocabulary: the values seen at least ``min_frequency`` times, the
``max_categories`` most frequent of them, ordered by count then value. Their slots are the vocabulary, then
``<null>`` (when nulls are a category, or ``most_frequent`` had nothing to impute: an all-null column), then
``<other>`` (when ``unseen: other``). A value outside the vocabulary (new at serving, or too rare in
training) follows ``unseen``: ``error`` -> a problem naming the column, row and value; ``ignore`` -> an
all-zero one-hot row / ordinal code -1; ``other`` -> the ``<other>`` slot. ``nulls: unseen`` sends a null
the same way (today's ``rayml.featurize`` layout: one ``<unseen>`` slot for both).

Hashing fits nothing: every value, seen or not, lands in bucket blake2b-64(utf-8 text, key=seed) mod
``buckets``. blake2b (RFC 7693, in Python's hashlib) is stable across processes, machines and versions,
unlike Python's salted ``hash()``, and any other language can reproduce it.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from rayml.config import StrictModel
from rayml.features.base import Applied, ColumnStep, StatelessStep, OutputSpec, State, Stats, make_state
from rayml.features.columns import describe, read_strings

NULL_SLOT = "<null>"
OTHER_SLOT = "<other>"
_MAX_ONEHOT = 1 << 16


class _Vocab(StrictModel):
    vocab: list[str]
    slots: list[str]
    null_code: int = Field(ge=-1)
    other_code: int = Field(ge=-1)


class _VocabFields(ColumnStep):
    """Fields and fitting shared by one-hot and ordinal."""

    max_categories: int | None = Field(None, ge=1, le=1_000_000, description="keep the most frequent values")
    min_frequency: int = Field(1, ge=1, description="values seen fewer times in training are not kept")
    unseen: Literal["error", "ignore", "other"] = Field("other", description="what a value not kept becomes")
    nulls: Literal["category", "most_frequent", "unseen"] = Field(
        "category", description="own slot, the most frequent value, or the unseen policy"
    )
    VERSION: ClassVar[int] = 1

    @model_validator(mode="after")
    def _rare_values_have_a_place(self) -> _VocabFields:
        if self.unseen == "error" and (self.max_categories is not None or self.min_frequency > 1):
            raise ValueError(
                "unseen: error would reject training values dropped by max_categories/min_frequency; use "
                "unseen: other (or ignore), or remove the limits"
            )
        return self

    def partial_fit(self, batch: Any) -> Stats:
        values = read_strings(batch, self.column)
        counts = pc.value_counts(values.drop_null()).to_pylist() if len(values) else []
        return {"counts": {v["values"]: v["counts"] for v in counts}, "nulls": values.null_count}

    def merge(self, a: Stats, b: Stats) -> Stats:
        counts = dict(a["counts"])
        for value, count in b["counts"].items():
            counts[value] = counts.get(value, 0) + count
        return {"counts": counts, "nulls": a["nulls"] + b["nulls"]}

    def finalize(self, stats: Stats) -> State:
        ranked = sorted(stats.get("counts", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        vocab = [v for v, c in ranked if c >= self.min_frequency][: self.max_categories]
        slots = list(vocab)
        null_code = 0 if self.nulls == "most_frequent" else -1
        if self.nulls == "category" or (self.nulls == "most_frequent" and not vocab):
            null_code = len(slots)
            slots.append(NULL_SLOT)
        other_code = -1
        if self.unseen == "other":
            other_code = len(slots)
            slots.append(OTHER_SLOT)
        params = {"vocab": vocab, "slots": slots, "null_code": null_code, "other_code": other_code}
        return make_state(self, self.VERSION, params)


def _codes(state: State, batch: Any) -> tuple[np.ndarray, dict[int, str]]:
    """The slot of every row (-1 for an ignored value) and the problems of rejected values."""
    config, params = state["config"], state["params"]
    values = read_strings(batch, config["column"])
    found = pc.index_in(values, value_set=pa.array(params["vocab"], pa.string()))
    codes = np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.float64)
    is_null = np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    unseen = np.isnan(codes)
    if config["nulls"] != "unseen":
        unseen &= ~is_null
        codes[is_null] = params["null_code"]
    problems: dict[int, str] = {}
    if config["unseen"] == "error" and unseen.any():
        rows = np.flatnonzero(unseen).tolist()
        texts = values.take(pa.array(rows, pa.int64())).to_pylist()
        for row, text in zip(rows, texts):
            problems[row] = f"{config['column']}: " + (
                "got null; nulls: unseen with unseen: error rejects it (set nulls: category to accept nulls)"
                if text is None else
                f"got {describe(text)}; not a category seen in training (set unseen: other or ignore to "
                "accept new values)"
            )
        codes[unseen] = -1  # a rejected row carries no features
    else:
        codes[unseen] = params["other_code"]  # -1 under ignore
    return codes.astype(np.int64), problems


class OneHot(_VocabFields):
    """A float32 0/1 vector per row with one slot per kept value (plus ``<null>``/``<other>``)."""

    kind: Literal["one_hot"] = "one_hot"
    VERSION: ClassVar[int] = 1
    Params: ClassVar[type[StrictModel]] = _Vocab

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        codes, problems = _codes(state, batch)
        out = np.zeros((len(codes), len(state["params"]["slots"])), dtype=np.float32)
        hit = codes >= 0
        out[np.flatnonzero(hit), codes[hit]] = 1.0
        return Applied({_out(state): out}, problems)

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        slots = state["params"]["slots"]
        return [OutputSpec(_out(state), "float32", (len(slots),), tuple(f"{_out(state)}={s}" for s in slots))]


class Ordinal(_VocabFields):
    """An int64 code per row: the value's slot (for an embedding table of ``len(slots)`` rows), -1 for an
    ignored unseen value. Codes follow frequency, not any order of the values themselves.
    """

    kind: Literal["ordinal"] = "ordinal"
    VERSION: ClassVar[int] = 1
    Params: ClassVar[type[StrictModel]] = _Vocab

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        codes, problems = _codes(state, batch)
        return Applied({_out(state): codes}, problems)

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        slots = state["params"]["slots"]
        return [OutputSpec(_out(state), "int64", (), tuple(f"{_out(state)}={s}" for s in slots))]


class Hashing(StatelessStep):
    """Each value to one of ``buckets`` by a keyed blake2b hash; nulls to their own extra slot
    (``nulls: category``) or nowhere (``ignore``: a zero row / index -1). ``output: onehot`` gives a float32
    vector per row, ``index`` an int64 bucket for an embedding table.
    """

    kind: Literal["hashing"] = "hashing"
    buckets: int = Field(1024, ge=2, le=1 << 24, description="number of hash buckets")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="hash key; changing it reshuffles every bucket")
    nulls: Literal["category", "ignore"] = Field("category", description="a slot after the buckets, or none")
    output: Literal["onehot", "index"] = Field("onehot", description="a 0/1 vector, or the bucket index")
    VERSION: ClassVar[int] = 1

    @model_validator(mode="after")
    def _onehot_fits_in_memory(self) -> Hashing:
        if self.output == "onehot" and self.buckets > _MAX_ONEHOT:
            raise ValueError(
                f"{self.buckets} buckets is too wide for a one-hot vector (at most {_MAX_ONEHOT}); use "
                "output: index with an embedding, or fewer buckets"
            )
        return self

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        config = state["config"]
        values = read_strings(batch, config["column"])
        encoded = pc.dictionary_encode(values)
        key = int(config["seed"]).to_bytes(8, "little")
        # each distinct value is hashed once; rows look their bucket up by dictionary index
        buckets = [stable_hash(v, key) % config["buckets"] for v in encoded.dictionary.to_pylist()]
        table = np.array(buckets or [0], dtype=np.int64)
        codes = table[encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)]
        is_null = np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        codes[is_null] = config["buckets"] if config["nulls"] == "category" else -1
        if config["output"] == "index":
            return Applied({_out(state): codes})
        out = np.zeros((len(codes), _width(config)), dtype=np.float32)
        hit = codes >= 0
        out[np.flatnonzero(hit), codes[hit]] = 1.0
        return Applied({_out(state): out})

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        config = state["config"]
        if config["output"] == "index":
            return [OutputSpec(_out(state), "int64")]
        slots = [f"{_out(state)}#{i}" for i in range(config["buckets"])]
        if config["nulls"] == "category":
            slots.append(f"{_out(state)}={NULL_SLOT}")
        return [OutputSpec(_out(state), "float32", (len(slots),), tuple(slots))]


def stable_hash(value: str, key: bytes) -> int:
    """The unsigned 64-bit little-endian blake2b digest of ``value``'s UTF-8 bytes under ``key``."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8, key=key).digest(), "little")


def _width(config: dict[str, Any]) -> int:
    return config["buckets"] + (1 if config["nulls"] == "category" else 0)


def _out(state: State) -> str:
    return state["config"]["name"] or state["config"]["column"]
