"""Hyperparameter search with Ray Tune and ASHA over rayml's own training loop: ``rayml tune JOB.yaml``.

    space.py    the search space: its keys, seeded sampling, and checking every sampled config (no Ray)
    results.py  the results table: one row per trial, the best trial, results.csv / results.json (no Ray)
    search.py   the Ray part: each trial is a Ray Train run launched from a Tune function trainable; ASHA stops
                the weak ones; the best trial's best checkpoint is evaluated, exported and registered

A job's ``tune:`` section declares the space over ``train.*`` and ``train.model.*`` keys. ``rayml run`` ignores
the section; ``rayml tune`` needs it. Importing this module is cheap (the CLI imports it): Ray, torch and the
training code are imported where they are used.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from rayml.config import StrictModel

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class Distribution(StrictModel):
    """One hyperparameter's distribution: exactly one of the four keys."""

    loguniform: tuple[float, float] | None = Field(
        None, description="[low, high]: sampled uniformly in log space; both bounds positive (learning rates)"
    )
    uniform: tuple[float, float] | None = Field(None, description="[low, high]: sampled uniformly (dropout)")
    choice: list[Any] | None = Field(
        None, min_length=1, description="[values]: one of these, equally likely (batch sizes, layer widths)"
    )
    randint: tuple[int, int] | None = Field(
        None, description="[low, high]: an integer from low to high, both included (factors, patience)"
    )

    @field_validator("choice")
    @classmethod
    def _numbers(cls, values: list[Any] | None) -> list[Any] | None:
        # YAML 1.1 reads 1e-3 (no dot) as a string; people mean a number
        if values is None:
            return None
        return [float(v) if isinstance(v, str) and _FLOAT.fullmatch(v.strip()) else v for v in values]

    @model_validator(mode="after")
    def _one_and_ordered(self) -> Distribution:
        given = [name for name in ("loguniform", "uniform", "choice", "randint") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one distribution, got {len(given)} ({', '.join(given) or 'none'}); write e.g. "
                "{loguniform: [1.0e-4, 1.0e-2]}, {uniform: [0.0, 0.3]}, {choice: [128, 256]} or {randint: [8, 64]}"
            )
        bounds = self.loguniform or self.uniform or self.randint
        if bounds is not None:
            low, high = bounds
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                raise ValueError(f"{given[0]} needs [low, high] with low < high, got [{low}, {high}]")
            if self.loguniform is not None and low <= 0:
                raise ValueError(f"loguniform needs positive bounds, got [{low}, {high}]; use uniform for 0")
        return self

    @property
    def kind(self) -> str:
        """loguniform, uniform, choice or randint."""
        for name in ("loguniform", "uniform", "choice", "randint"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated to have one distribution")

    def extremes(self) -> list[Any]:
        """The values a sample can reach at its edges (every value of a choice), to check before any trial."""
        if self.choice is not None:
            return list(self.choice)
        low, high = self.loguniform or self.uniform or self.randint  # type: ignore[misc]
        return [low, high]


class TuneConfig(StrictModel):
    """`rayml tune`: a random search over train settings with ASHA early stopping; the best trial is registered."""

    space: dict[str, Distribution] = Field(
        min_length=1, description="setting -> distribution, keyed like an override (train.lr, train.model.dropout)"
    )
    num_samples: int = Field(8, ge=1, le=10_000, description="trials: configs sampled from the space")
    metric: str | None = Field(
        None, description="validation metric that ranks trials, ASHA's rungs and each trial's checkpoints; null = "
        "train.checkpoint_metric"
    )
    grace_period: int = Field(1, ge=1, le=10_000, description="ASHA: epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(
        2.0, gt=1.0, le=100.0, description="ASHA: 1/reduction_factor of the trials reaching a rung go on (2 = halving); "
        "rungs at grace_period x reduction_factor^k epochs, up to train.epochs"
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, le=10_000, description="trials running at once; null = as many as the cluster's CPUs (and GPUs) "
        "hold, keeping one CPU free for Ray Data and the trial drivers"
    )
    num_workers: int = Field(1, ge=1, le=1024, description="DDP workers of each trial (each trial is a Ray Train run)")
    cpus_per_worker: float = Field(1.0, gt=0.0, le=256.0, description="CPUs reserved by each worker of a trial")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the sampling (train.seed still seeds the weights)")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        from rayml.train.choices import MODES

        if value is not None and value not in MODES:
            raise ValueError(f"unknown metric {value!r}; use one of {', '.join(MODES)}")
        return value

    @field_validator("space", mode="before")
    @classmethod
    def _flatten(cls, value: Any) -> Any:
        """``{train: {lr: {...}}}`` -> ``{"train.lr": {...}}``: what an override ``tune.space.train.lr=...``
        makes of a dotted key; it replaces the same key written dotted. A mapping is a level of nesting when all
        its values are mappings (a distribution's values are lists)."""
        if not isinstance(value, dict):
            return value
        flat: dict[str, Any] = {}
        deeper: list[tuple[str, Any]] = []

        def walk(prefix: str, node: dict[str, Any]) -> None:
            for key, item in node.items():
                path = f"{prefix}.{key}" if prefix else str(key)
                if isinstance(item, dict) and item and all(isinstance(v, dict) for v in item.values()):
                    walk(path, item)
                elif prefix:
                    deeper.append((path, item))
                else:
                    flat[path] = item

        walk("", value)
        flat.update(deeper)
        return flat

    @field_validator("space")
    @classmethod
    def _known_keys(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        from rayml.tune import space as keys

        problems = [problem for key in space if (problem := keys.key_problem(key)) is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return space


def add_cli(verbs: Any) -> None:
    """The ``tune`` verb."""
    tune = verbs.add_parser("tune", help="search train settings with Ray Tune + ASHA; register the best trial")
    tune.add_argument("job", help="job YAML with a tune: section, e.g. jobs/fraud_tune.yaml")
    tune.add_argument("overrides", nargs="*", help="key=value overrides, e.g. tune.num_samples=4 train.epochs=3")
    tune.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``rayml tune``: print the results table and where the best model went."""
    from rayml import pipeline
    from rayml.tune import results, search

    job = pipeline.load_job(args.job, args.overrides)
    outcome = search.run(job)
    print(results.format_table(outcome["rows"], outcome["metric"]))
    best = outcome["best"]
    print(f"best trial {best['trial_id']}: {outcome['metric']}={best['value']:.4f} "
          f"({results.format_params(best['params'])})")
    print(f"results: {outcome['results_csv']}; best job: {outcome['best_job']}")
    print(f"model registered at {outcome['registered']['version_dir']}")
    return 0
