"""The shape every featurizer has, and the small types they share.

A featurizer is a frozen, strict pydantic config (which also says, from the config alone, its
``output_names()`` and whether it ``needs_fit()``) with three fitting methods and two pure functions of
its fitted state:

    partial_fit(batch) -> stats      sufficient statistics of one batch (JSON-able, so Ray can ship them)
    merge(a, b) -> stats             associative and commutative: blocks can be fitted in parallel, any order
    finalize(stats) -> state         {"kind", "version", "config", "params"}: plain JSON, no pickle
    apply(state, batch) -> Applied   outputs for every row, plus a reason for each row that could not be used
    output_spec(state)               name, dtype and per-row shape of every output, known before any data

A batch is a ``pyarrow.Table`` (what Ray Data hands ``map_batches(batch_format="pyarrow")``) or a mapping of
column name to a pyarrow array, a numpy array or a list. Arrow is the canonical type because it carries what
numpy loses: typed nulls in every column, time zones on timestamps, and binary image bytes. The mapping form
exists so a pipeline can feed one step's numpy output to the next, and so serving can pass decoded JSON
columns without building a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import Field

from rayml.config import StrictModel
from rayml.errors import DataValidationError, RegistryError

Stats = dict[str, Any]
State = dict[str, Any]
Dtype = Literal["float64", "float32", "int64"]


class FeatureInputError(DataValidationError):
    """Values a fitted featurizer cannot turn into features (an unseen category under ``unseen: error``, a
    corrupt image, ...). ``column`` names the input column and ``rows`` the offending row positions.
    """

    def __init__(self, message: str, column: str = "", rows: list[int] | None = None) -> None:
        self.message = message
        self.column = column
        self.rows = list(rows or [])
        super().__init__(message, column, self.rows)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class OutputSpec:
    """One output of a fitted featurizer: ``shape`` is per row (``()`` for a scalar); ``slots`` names each
    position of a 1-D output (e.g. ``merchant=fuel``) so a matrix column can be traced to its meaning.
    """

    name: str
    dtype: Dtype
    shape: tuple[int, ...] = ()
    slots: tuple[str, ...] = ()


@dataclass
class Applied:
    """What ``apply`` returns: an array per output (rows with problems are zero-filled) and the problems,
    ``{row: "column: reason"}``, in the same wording as ``rayml.validate``'s per-record ``_error``.
    """

    outputs: dict[str, np.ndarray]
    problems: dict[int, str] = field(default_factory=dict)


class Featurizer(Protocol):
    """What a featurizer config provides; ``apply`` and ``output_spec`` read only the state."""

    kind: str
    VERSION: ClassVar[int]
    Params: ClassVar[type[StrictModel]]  # validates ``state["params"]`` when a state is loaded

    def output_names(self) -> list[str]: ...

    def needs_fit(self) -> bool: ...

    def partial_fit(self, batch: Any) -> Stats: ...

    def merge(self, a: Stats, b: Stats) -> Stats: ...

    def finalize(self, stats: Stats) -> State: ...

    @staticmethod
    def apply(state: State, batch: Any) -> Applied: ...

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]: ...


class ColumnStep(StrictModel):
    """Fields every featurizer has: the column it reads and the name its outputs take."""

    column: str = Field(min_length=1, description="the input column (raw, or an earlier step's output)")
    name: str | None = Field(None, min_length=1, description="name of the output; defaults to the column")

    @property
    def out(self) -> str:
        return self.name or self.column

    def output_names(self) -> list[str]:
        """One output named after the step; featurizers with several outputs override this."""
        return [self.out]

    def needs_fit(self) -> bool:
        return True


class NoParams(StrictModel):
    """The fitted params of a featurizer that learns nothing from data."""


class StatelessStep(ColumnStep):
    """A featurizer that learns nothing from data: fitting is a no-op and its state holds only its config."""

    VERSION: ClassVar[int] = 1
    Params: ClassVar[type[StrictModel]] = NoParams

    def needs_fit(self) -> bool:
        return False

    def partial_fit(self, batch: Any) -> Stats:
        return {}

    def merge(self, a: Stats, b: Stats) -> Stats:
        return {}

    def finalize(self, stats: Stats) -> State:
        return make_state(self, self.VERSION, {})


def make_state(config: Any, version: int, params: dict[str, Any]) -> State:
    """A featurizer state: the config that made it (so the state alone can transform) and fitted params."""
    return {
        "kind": config.kind,
        "version": version,
        "config": config.model_dump(mode="json"),
        "params": params,
    }


def check_state(state: Any, kind: str, version: int) -> None:
    """Reject a state that another featurizer kind or version wrote, saying what to do instead."""
    if not isinstance(state, dict):
        raise RegistryError(f"featurizer state must be a JSON object, got {type(state).__name__}")
    missing = [k for k in ("kind", "version", "config", "params") if k not in state]
    if missing:
        raise RegistryError(f"featurizer state lacks {missing}; it was not written by rayml.features. Refit")
    if state["kind"] != kind:
        raise RegistryError(
            f"featurizer state is of kind {state['kind']!r}, not {kind!r}; load it as its own kind"
        )
    if state["version"] != version:
        raise RegistryError(
            f"{kind} state has version {state['version']!r}; this rayml reads version {version}. Refit the "
            "featurizers with this rayml (re-run the featurize stage)"
        )

