"""Every featurizer kind, and what needs only a state: transform, output_spec, dumps and loads.

Serving holds JSON states, not configs: ``transform(state, batch)`` finds the featurizer by the state's
``kind`` and runs its pure ``apply``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Union

import numpy as np
from pydantic import Field, ValidationError

from rayml.errors import RegistryError, summarize
from rayml.features.base import Applied, FeatureInputError, OutputSpec, State, check_state
from rayml.features.categorical import Hashing, OneHot, Ordinal
from rayml.features.image import ImageFeatures
from rayml.features.numeric import Clip, Impute, Log1p, MinMax, Standardize
from rayml.features.text import Tokenize
from rayml.features.timestamp import TimestampParts

FEATURIZERS: dict[str, Any] = {
    cls.model_fields["kind"].default: cls
    for cls in (Standardize, MinMax, Log1p, Clip, Impute, OneHot, Ordinal, Hashing, TimestampParts, Tokenize,
                ImageFeatures)
}
NUMERIC_KINDS = frozenset({"standardize", "min_max", "log1p", "clip", "impute"})

AnyFeaturizer = Annotated[
    Union[Standardize, MinMax, Log1p, Clip, Impute, OneHot, Ordinal, Hashing, TimestampParts, Tokenize,
          ImageFeatures],
    Field(discriminator="kind"),
]


def featurizer_class(kind: Any) -> Any:
    """The featurizer class of ``kind``; a RegistryError listing the known kinds otherwise."""
    if kind not in FEATURIZERS:
        raise RegistryError(f"unknown featurizer kind {kind!r}; known kinds: {sorted(FEATURIZERS)}")
    return FEATURIZERS[kind]


def apply(state: State, batch: Any) -> Applied:
    """Outputs of one fitted featurizer over ``batch``, with per-row problems instead of an exception."""
    return featurizer_class(state.get("kind")).apply(state, batch)


def transform(state: State, batch: Any) -> dict[str, np.ndarray]:
    """Outputs of one fitted featurizer over ``batch``; a FeatureInputError names every row it cannot use."""
    applied = apply(state, batch)
    if applied.problems:
        raise_problems(applied.problems)
    return applied.outputs


def raise_problems(problems: dict[int, str]) -> None:
    """Raise one FeatureInputError listing every problem (``row i: column: reason``)."""
    rows = sorted(problems)
    lines = [f"row {row}: {problems[row]}" for row in rows]
    column = problems[rows[0]].split(":", 1)[0]
    raise FeatureInputError(summarize(lines), column, rows)


def output_spec(state: State) -> list[OutputSpec]:
    """Names, dtypes and per-row shapes of a fitted featurizer's outputs."""
    return featurizer_class(state.get("kind")).output_spec(state)


def dumps(state: State) -> str:
    """A fitted state as JSON text (strict JSON: no NaN or infinity; never pickle)."""
    return json.dumps(state, indent=2, sort_keys=True, allow_nan=False)


def loads(text: str, kind: str | None = None) -> State:
    """Parse and check a state written by ``dumps``: kind (``kind`` when given), version, config, params."""
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"featurizer state is not valid JSON ({exc}); refit or restore the file") from exc
    return check(state, kind)


def check(state: Any, kind: str | None = None) -> State:
    """Validate a parsed state against its featurizer's config and params models."""
    found = state.get("kind") if isinstance(state, dict) else None
    cls = featurizer_class(kind if kind is not None else found)
    check_state(state, cls.model_fields["kind"].default, cls.VERSION)
    try:
        config = cls.model_validate(state["config"])
        cls.Params.model_validate(state["params"])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RegistryError(f"{found} state does not validate ({problems}); refit") from exc
    if config.model_dump(mode="json") != state["config"]:
        raise RegistryError(f"{found} state config lacks keys or holds values its model would change; refit")
    return state
