"""Numeric featurizers: standardize, min-max, log1p, clip and impute (with a missing indicator).

Each reads one numeric column and writes float64 values under its output name. Missing means null, NaN or
+/-inf; every step but ``Impute`` passes a missing value through as NaN, and ``Impute`` replaces it (a
``FeaturePipeline`` refuses a numeric feature that no ``impute`` step precedes, so NaN never reaches a model).

Degenerate columns have defined results: an all-null column fits mean 0 / std 1 (standardize), min 0 /
range 1 (min-max), no bounds (quantile clip) and imputes ``value`` (0 unless set); a constant column scales
by 1, so it maps to 0 instead of dividing by zero.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from rayml.config import StrictModel
from rayml.features import stats as S
from rayml.features.base import Applied, ColumnStep, StatelessStep, OutputSpec, State, Stats, make_state
from rayml.features.columns import describe, read_float

_TINY = 1e-12  # a spread below this is a constant column


class _Scale(StrictModel):
    center: float
    scale: float = Field(gt=0)


class Standardize(ColumnStep):
    """(x - mean) / std, with the population std over the non-missing training values."""

    kind: Literal["standardize"] = "standardize"
    VERSION: ClassVar[int] = 1
    Params: ClassVar[type[StrictModel]] = _Scale

    def partial_fit(self, batch: Any) -> Stats:
        return {"moments": S.moments(read_float(batch, self.column))}

    def merge(self, a: Stats, b: Stats) -> Stats:
        return {"moments": S.merge_moments(a["moments"], b["moments"])}

    def finalize(self, stats: Stats) -> State:
        m = stats.get("moments", [0.0, 0.0, 0.0])  # {} when no batch was seen
        spread = S.std(m)
        return make_state(self, self.VERSION, {"center": m[1], "scale": spread if spread > _TINY else 1.0})

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        return _affine(state, batch)

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        return [OutputSpec(_out(state), "float64")]


class MinMax(ColumnStep):
    """(x - min) / (max - min) with the training min and max; ``clip`` keeps serving values in [0, 1]."""

    kind: Literal["min_max"] = "min_max"
    clip: bool = Field(False, description="clip outputs to [0, 1] for values outside the training range")
    VERSION: ClassVar[int] = 1
    Params: ClassVar[type[StrictModel]] = _Scale

    def partial_fit(self, batch: Any) -> Stats:
        values = read_float(batch, self.column)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return {"min": None, "max": None}
        return {"min": float(finite.min()), "max": float(finite.max())}

    def merge(self, a: Stats, b: Stats) -> Stats:
        lows = [s["min"] for s in (a, b) if s["min"] is not None]
        highs = [s["max"] for s in (a, b) if s["max"] is not None]
        return {"min": min(lows) if lows else None, "max": max(highs) if highs else None}

    def finalize(self, stats: Stats) -> State:
        low = stats.get("min")
        spread = stats["max"] - low if low is not None else 0.0
        low = low if low is not None else 0.0
        return make_state(self, self.VERSION, {"center": low, "scale": spread if spread > _TINY else 1.0})

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        applied = _affine(state, batch)
        if state["config"]["clip"]:
            np.clip(applied.outputs[_out(state)], 0.0, 1.0, out=applied.outputs[_out(state)])
        return applied

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        return [OutputSpec(_out(state), "float64")]


class Log1p(StatelessStep):
    """log(1 + x). ``negative`` says what a value below 0 becomes: ``clip`` -> log1p(0) = 0, ``signed`` ->
    sign(x) * log1p(|x|) (symmetric, keeps order), ``error`` -> a problem naming the row and value.
    """

    kind: Literal["log1p"] = "log1p"
    negative: Literal["clip", "signed", "error"] = Field("clip", description="policy for values below 0")
    VERSION: ClassVar[int] = 1

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        config = state["config"]
        x = read_float(batch, config["column"])
        problems: dict[int, str] = {}
        with np.errstate(invalid="ignore"):
            negative = x < 0
        if config["negative"] == "signed":
            out = np.sign(x) * np.log1p(np.abs(x))
        else:
            out = np.log1p(np.where(negative, 0.0, x))
            if config["negative"] == "error":
                for row in np.flatnonzero(negative).tolist():
                    problems[row] = (
                        f"{config['column']}: got {describe(float(x[row]))}; log1p needs values >= 0 "
                        "(set negative: clip or signed to accept negatives)"
                    )
                out[negative] = 0.0
        return Applied({_out(state): out}, problems)

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        return [OutputSpec(_out(state), "float64")]


class _Bounds(StrictModel):
    lower: float | None
    upper: float | None


class Clip(ColumnStep):
    """Clip to fixed ``lower``/``upper`` bounds, or to the training ``quantiles`` (e.g. [0.01, 0.99]).

    Fitted bounds come from a mergeable sketch, within relative error ``alpha`` of the exact lower
    quantiles (see ``rayml.features.stats``). A bound that is None (one-sided, or an all-null column) clips
    nothing on that side.
    """

    kind: Literal["clip"] = "clip"
    lower: float | None = Field(None, description="fixed lower bound")
    upper: float | None = Field(None, description="fixed upper bound")
    quantiles: tuple[float, float] | None = Field(None, description="fitted bounds: [low q, high q] in 0..1")
    alpha: float = Field(0.005, gt=0.0, le=0.1, description="relative error of fitted quantile bounds")
    VERSION: ClassVar[int] = 1
    Params: ClassVar[type[StrictModel]] = _Bounds

    @model_validator(mode="after")
    def _one_kind_of_bounds(self) -> Clip:
        fixed = self.lower is not None or self.upper is not None
        if fixed == (self.quantiles is not None):
            raise ValueError("set either lower and/or upper (fixed bounds) or quantiles (fitted bounds)")
        if self.quantiles is not None and not 0.0 <= self.quantiles[0] < self.quantiles[1] <= 1.0:
            raise ValueError(f"quantiles {list(self.quantiles)} need 0 <= low < high <= 1, e.g. [0.01, 0.99]")
        if self.lower is not None and self.upper is not None and self.lower >= self.upper:
            raise ValueError(f"lower {self.lower} must be below upper {self.upper}")
        return self

    def needs_fit(self) -> bool:
        return self.quantiles is not None

    def partial_fit(self, batch: Any) -> Stats:
        if self.quantiles is None:
            return {}
        return {"sketch": S.sketch(read_float(batch, self.column), self.alpha)}

    def merge(self, a: Stats, b: Stats) -> Stats:
        return {"sketch": S.merge_sketches(a["sketch"], b["sketch"])} if self.quantiles is not None else {}

    def finalize(self, stats: Stats) -> State:
        if self.quantiles is None:
            return make_state(self, self.VERSION, {"lower": self.lower, "upper": self.upper})
        sketch = stats.get("sketch") or S.sketch(np.zeros(0), self.alpha)
        low, high = (S.quantile(sketch, q) for q in self.quantiles)
        return make_state(self, self.VERSION, {"lower": low, "upper": high})

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        x = read_float(batch, state["config"]["column"])
        params = state["params"]
        if params["lower"] is not None:
            x = np.where(x < params["lower"], params["lower"], x)
        if params["upper"] is not None:
            x = np.where(x > params["upper"], params["upper"], x)
        return Applied({_out(state): x})

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        return [OutputSpec(_out(state), "float64")]


class _Fill(StrictModel):
    fill: float
    observed: int = Field(ge=0)


class Impute(ColumnStep):
    """Replace missing values by the training mean or median, or a constant; ``indicator`` adds
    ``<name>_missing`` (1.0 where the value was missing). ``value`` is the constant, and also the fill of an
    all-null column, whose mean and median do not exist. The median comes from the quantile sketch.
    """

    kind: Literal["impute"] = "impute"
    strategy: Literal["mean", "median", "constant"] = Field("mean", description="what fills a missing value")
    value: float = Field(0.0, description="the constant; also the fill when the column had no values")
    indicator: bool = Field(True, description="add a <name>_missing column, 1.0 where the value was missing")
    alpha: float = Field(0.005, gt=0.0, le=0.1, description="relative error of the fitted median")
    VERSION: ClassVar[int] = 1
    Params: ClassVar[type[StrictModel]] = _Fill

    def output_names(self) -> list[str]:
        return [self.out, f"{self.out}_missing"] if self.indicator else [self.out]

    def needs_fit(self) -> bool:
        return self.strategy != "constant"

    def partial_fit(self, batch: Any) -> Stats:
        values = read_float(batch, self.column)
        if self.strategy == "median":
            return {"sketch": S.sketch(values, self.alpha)}
        return {"moments": S.moments(values)}

    def merge(self, a: Stats, b: Stats) -> Stats:
        if self.strategy == "median":
            return {"sketch": S.merge_sketches(a["sketch"], b["sketch"])}
        return {"moments": S.merge_moments(a["moments"], b["moments"])}

    def finalize(self, stats: Stats) -> State:
        fill, observed = self.value, 0
        if self.strategy == "median" and stats.get("sketch"):
            observed = stats["sketch"]["count"]
            fill = S.quantile(stats["sketch"], 0.5) if observed else self.value
        elif self.strategy == "mean" and stats.get("moments"):
            observed = int(stats["moments"][0])
            fill = stats["moments"][1] if observed else self.value
        return make_state(self, self.VERSION, {"fill": fill, "observed": observed})

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        config = state["config"]
        x = read_float(batch, config["column"])
        missing = np.isnan(x)
        x[missing] = state["params"]["fill"]
        outputs = {_out(state): x}
        if config["indicator"]:
            outputs[f"{_out(state)}_missing"] = missing.astype(np.float64)
        return Applied(outputs)

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        specs = [OutputSpec(_out(state), "float64")]
        if state["config"]["indicator"]:
            specs.append(OutputSpec(f"{_out(state)}_missing", "float64"))
        return specs


def _out(state: State) -> str:
    return state["config"]["name"] or state["config"]["column"]


def _affine(state: State, batch: Any) -> Applied:
    x = read_float(batch, state["config"]["column"])
    params = state["params"]
    return Applied({_out(state): (x - params["center"]) / params["scale"]})
