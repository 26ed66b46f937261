"""A feature pipeline: featurizers applied in order, one float32 matrix plus named tensors out.

Steps run in the order listed. A numeric step (standardize, min_max, log1p, clip, impute) reads its
``column`` from the latest earlier numeric step that wrote that name, else from the batch, so numeric steps
chain by naming the same column; every other step reads the raw column:

    steps:
      - {kind: impute, column: amount, strategy: median}   # writes amount, amount_missing
      - {kind: log1p, column: amount}                      # reads the imputed amount, writes amount
      - {kind: standardize, column: amount}                # the feature 'amount'
      - {kind: one_hot, column: merchant, max_categories: 50}
      - {kind: tokenize, column: review, max_length: 64}

An output is a feature unless a later step reads or overwrites it; two steps writing one name is an error
unless the second continues a numeric chain (set ``name:`` to tell them apart). Float features with one value
or one vector per row are the columns of ``Features.matrix`` (float32, in order of first appearance); the rest
(token ids, ordinal codes, images) are ``Features.tensors``. Fitting is mergeable per step and may take more
than one pass over the data: a step that needs fitting and reads another fitted step's output waits for the
pass after it (see ``rayml.features.fitting``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, ValidationError, model_validator

from rayml.config import StrictModel
from rayml.errors import RegistryError
from rayml.features import registry
from rayml.features.base import OutputSpec, State
from rayml.features.columns import column_of, num_rows
from rayml.features.registry import NUMERIC_KINDS, AnyFeaturizer

KIND = "feature_pipeline"
VERSION = 1
PROBLEM_SEPARATOR = " | "  # the same as rayml.validate's, between the problems of one row


class FeaturePipeline(StrictModel):
    """The featurizers of a model's inputs, in order; shared by training (Ray Data) and serving."""

    steps: list[AnyFeaturizer] = Field(min_length=1, description="featurizers, applied in order")

    @model_validator(mode="after")
    def _dataflow_is_sound(self) -> FeaturePipeline:
        problems = plan(self.steps).problems
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass
class Plan:
    """What the order of steps implies, worked out from configs alone."""

    fit_pass: list[int | None]  # the pass that fits each step; None: needs no data
    ancestors: list[set[int]]  # the earlier steps each step's input depends on
    features: list[tuple[int, str]]  # (step, output name) of every feature, in output order
    inputs: list[str]  # raw batch columns read
    problems: list[str] = field(default_factory=list)

    @property
    def passes(self) -> int:
        return max((p + 1 for p in self.fit_pass if p is not None), default=0)


def plan(steps: list[Any]) -> Plan:
    """Trace which step reads which output, when each can be fitted, and which outputs are features."""
    producer: dict[str, int] = {}  # name -> the step that last wrote it
    ready: dict[str, int] = {}  # name -> the first pass in which its values can be computed
    missing: dict[str, bool] = {}  # name -> whether its values can be NaN
    first_seen: dict[str, int] = {}
    consumed: set[tuple[int, str]] = set()
    fit_pass: list[int | None] = []
    ancestors: list[set[int]] = []
    inputs: list[str] = []
    problems: list[str] = []
    for i, step in enumerate(steps):
        where = f"steps[{i}] ({step.kind} of {step.column!r})"
        source = _source(steps, producer, i, problems)
        if source is None:
            if step.column not in inputs:
                inputs.append(step.column)
            ancestors.append(set())
        else:
            consumed.add((source, step.column))
            ancestors.append({source, *ancestors[source]})
        start = ready.get(step.column, 0) if source is not None else 0
        fit_pass.append(start if step.needs_fit() else None)
        done = start + 1 if step.needs_fit() else start
        may_miss = step.kind in NUMERIC_KINDS and step.kind != "impute" and missing.get(step.column, True)
        for name in step.output_names():
            if name in producer and not (source is not None and name == step.column):
                problems.append(
                    f"{where} writes {name!r}, already an output of steps[{producer[name]}] "
                    f"({steps[producer[name]].kind}); set name: on one of them"
                )
            producer[name], ready[name], missing[name] = i, done, may_miss
            first_seen.setdefault(name, len(first_seen))
    unread = [(i, name) for name, i in producer.items() if (i, name) not in consumed]
    features = sorted(unread, key=lambda f: first_seen[f[1]])
    for i, name in features:
        if missing[name]:
            problems.append(
                f"steps[{i}] ({steps[i].kind}) outputs feature {name!r}, which is NaN where "
                f"{steps[i].column!r} is missing; add {{kind: impute, column: {steps[i].column}}} before it"
            )
    return Plan(fit_pass, ancestors, features, inputs, problems)


def _source(steps: list[Any], producer: dict[str, int], i: int, problems: list[str]) -> int | None:
    """The earlier step whose output step ``i`` reads, or None for the raw column.

    Only numeric steps chain: a numeric step reads a numeric step's output of that name; every other step
    reads the raw column, even where a categorical/timestamp/text/image output shares the name.
    """
    step = steps[i]
    source = producer.get(step.column)
    if source is None:
        return None
    numeric, source_numeric = step.kind in NUMERIC_KINDS, steps[source].kind in NUMERIC_KINDS
    if numeric and source_numeric:
        return source
    if not numeric and not source_numeric:
        return None
    where = f"steps[{i}] ({step.kind} of {step.column!r})"
    if numeric:
        problems.append(
            f"{where} reads {step.column!r}, an output of steps[{source}] ({steps[source].kind}); only "
            "numeric steps' outputs chain into numeric steps"
        )
    else:
        problems.append(
            f"{where}: {step.column!r} was rewritten by steps[{source}] ({steps[source].kind}), and "
            f"{step.kind} reads raw columns only; set name: on steps[{source}] to keep the raw column visible"
        )
    return None


@dataclass
class Features:
    """A featurized batch: ``matrix`` float32 [rows, len(state['matrix'])] and the named ``tensors``."""

    matrix: np.ndarray
    tensors: dict[str, np.ndarray]


def layout(states: list[State], features: list[tuple[int, str]]) -> dict[str, Any]:
    """Which features form the matrix (with a name per matrix column) and which are tensors."""
    matrix: list[str] = []
    matrix_features: list[str] = []
    tensors: dict[str, dict[str, Any]] = {}
    for i, name in features:
        spec = _spec(states[i], name)
        if spec.dtype in ("float32", "float64") and len(spec.shape) <= 1:
            matrix_features.append(name)
            if not spec.shape:
                matrix.append(name)
            else:
                matrix += list(spec.slots) or [f"{name}[{k}]" for k in range(spec.shape[0])]
        else:
            tensors[name] = {"dtype": spec.dtype, "shape": list(spec.shape)}
    return {"matrix": matrix, "matrix_features": matrix_features, "tensors": tensors}


def assemble(config: FeaturePipeline, states: list[State]) -> State:
    """The pipeline state from every step's fitted state."""
    planned = plan(config.steps)
    return {
        "kind": KIND,
        "version": VERSION,
        "steps": states,
        "inputs": planned.inputs,
        "features": [[i, name] for i, name in planned.features],
        **layout(states, planned.features),
    }


def transform(state: State, batch: Any) -> Features:
    """Features of ``batch``; a FeatureInputError names every row that cannot be featurized."""
    features, problems = transform_rows(state, batch)
    bad = {row: text for row, text in enumerate(problems) if text is not None}
    if bad:
        registry.raise_problems(bad)
    return features


def transform_rows(state: State, batch: Any) -> tuple[Features, list[str | None]]:
    """Features of every row of ``batch`` and, per row, None or its problems joined by `` | ``.

    Rows with problems have all-zero features: drop them (quarantine) using the returned list.
    """
    n = num_rows(batch)
    columns = Columns(batch)
    outputs: dict[str, np.ndarray] = {}
    problems: dict[int, list[str]] = {}
    for step in state["steps"]:
        applied = registry.apply(step, columns)
        for row, text in applied.problems.items():
            problems.setdefault(row, []).append(text)
        outputs.update(applied.outputs)
        if step["kind"] in NUMERIC_KINDS:  # only numeric outputs are read by later steps
            columns.produced.update(applied.outputs)
    matrix = np.zeros((n, len(state["matrix"])), dtype=np.float32)
    col = 0
    for name in state["matrix_features"]:
        values = outputs[name]
        width = 1 if values.ndim == 1 else values.shape[1]
        matrix[:, col:col + width] = values.reshape(n, width)
        col += width
    tensors = {name: outputs[name] for name in state["tensors"]}
    rows = sorted(problems)
    if rows:
        matrix[rows] = 0.0
        for values in tensors.values():
            values[rows] = 0
    per_row = [PROBLEM_SEPARATOR.join(problems[r]) if r in problems else None for r in range(n)]
    return Features(matrix, tensors), per_row


class Columns(Mapping):
    """A batch seen through the outputs written so far: a written name hides the raw column of that name."""

    def __init__(self, batch: Any, produced: dict[str, np.ndarray] | None = None) -> None:
        self.batch = batch
        self.produced = produced if produced is not None else {}

    def _raw_names(self) -> list[str]:
        return list(self.batch.column_names) if isinstance(self.batch, pa.Table) else list(self.batch)

    def __getitem__(self, name: str) -> Any:
        return self.produced[name] if name in self.produced else column_of(self.batch, name)

    def __contains__(self, name: object) -> bool:
        return name in self.produced or name in self._raw_names()

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._raw_names(), *self.produced]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._raw_names(), *self.produced]))


def dumps(state: State) -> str:
    """A fitted pipeline as JSON text (strict JSON; never pickle)."""
    return json.dumps(state, indent=2, sort_keys=True, allow_nan=False)


def loads(text: str) -> State:
    """Parse a pipeline state written by ``dumps``, checking its kind, version, every step and the layout."""
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"feature pipeline state is not valid JSON ({exc}); refit or restore it") from exc
    return check(state)


def check(state: Any) -> State:
    """Validate a parsed pipeline state; the layout must be what its steps produce."""
    if not isinstance(state, dict) or state.get("kind") != KIND:
        found = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise RegistryError(f"expected a {KIND} state, got {found!r}; read one step's with registry.loads")
    if state.get("version") != VERSION:
        raise RegistryError(
            f"{KIND} state has version {state.get('version')!r}; this rayml reads version {VERSION}. Refit"
        )
    steps = state.get("steps")
    if not isinstance(steps, list) or not steps:
        raise RegistryError(f"{KIND} state has no steps; refit")
    for step in steps:
        registry.check(step)
    try:
        config = FeaturePipeline.model_validate({"steps": [s["config"] for s in steps]})
    except ValidationError as exc:
        raise RegistryError(f"{KIND} state's steps do not form a valid pipeline ({exc}); refit") from exc
    expected = assemble(config, steps)
    changed = sorted(k for k in expected if state.get(k) != json.loads(json.dumps(expected[k])))
    if changed:
        raise RegistryError(f"{KIND} state's {changed} do not match its steps; the file was edited. Refit")
    return state


def output_specs(state: State) -> list[OutputSpec]:
    """The spec of every feature of a fitted pipeline, in order."""
    return [_spec(state["steps"][i], name) for i, name in state["features"]]


def _spec(step: State, name: str) -> OutputSpec:
    for spec in registry.output_spec(step):
        if spec.name == name:
            return spec
    raise RegistryError(f"{step['kind']} state has no output {name!r}; refit")
