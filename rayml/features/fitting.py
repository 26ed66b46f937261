"""Fitting a ``FeaturePipeline`` over batches: partial statistics per batch, merged, finalized, pass by pass.

Most pipelines fit in one pass. A step that needs fitting and reads the output of another step that needs
fitting (``impute`` with the median, then ``standardize``) waits one more pass, so that it is fitted on
exactly the values it will see at transform time. On Ray Data each pass is one
``map_batches(partial_fit, batch_format="pyarrow")`` over the dataset, its results merged on the driver:

    states = start(config)
    for fit_pass in range(plan(config.steps).passes):
        parts = [partial_fit(config, states, batch, fit_pass) for batch in batches]   # in parallel
        states = finish_pass(config, states, functools.reduce(partial(merge, config), parts, {}), fit_pass)
    state = assemble(config, states)

Partial statistics are JSON-able dicts keyed by step index, so they cross process boundaries as text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rayml.features import registry
from rayml.features.base import State, Stats
from rayml.features.pipeline import Columns, FeaturePipeline, assemble, plan


def start(config: FeaturePipeline) -> list[State | None]:
    """Fitted states of the steps that need no data; None for the rest."""
    return [step.finalize({}) if not step.needs_fit() else None for step in config.steps]


def partial_fit(
    config: FeaturePipeline, states: list[State | None], batch: Any, fit_pass: int
) -> dict[str, Stats]:
    """Statistics of ``batch`` for every step fitted in ``fit_pass``; earlier steps they read are applied.

    A problem in an applied step (e.g. a negative value under ``log1p`` with ``negative: error``) fails the
    fit with a FeatureInputError naming the rows: training data should have been validated already.
    """
    planned = plan(config.steps)
    fitting = [i for i, p in enumerate(planned.fit_pass) if p == fit_pass]
    needed = set().union(*(planned.ancestors[i] for i in fitting)) if fitting else set()
    columns = Columns(batch)
    stats: dict[str, Stats] = {}
    for i, step in enumerate(config.steps):
        if i in fitting:
            stats[str(i)] = step.partial_fit(columns)
        elif i in needed:
            state = states[i]
            if state is None:
                raise RuntimeError(f"steps[{i}] is read in pass {fit_pass} but unfitted; fit passes in order")
            applied = registry.apply(state, columns)
            if applied.problems:
                registry.raise_problems(applied.problems)
            columns.produced.update(applied.outputs)  # ancestors are numeric steps
        if i >= max(fitting, default=-1):
            break
    return stats


def merge(config: FeaturePipeline, a: dict[str, Stats], b: dict[str, Stats]) -> dict[str, Stats]:
    """Merge two partial results of the same pass (either may be ``{}``, the identity)."""
    out = dict(a)
    for key, stats in b.items():
        out[key] = config.steps[int(key)].merge(out[key], stats) if key in out else stats
    return out


def finish_pass(
    config: FeaturePipeline, states: list[State | None], stats: dict[str, Stats], fit_pass: int
) -> list[State | None]:
    """Finalize the steps of ``fit_pass`` from their merged statistics (``{}`` if no batch was seen)."""
    planned = plan(config.steps)
    out = list(states)
    for i, step in enumerate(config.steps):
        if planned.fit_pass[i] == fit_pass:
            out[i] = step.finalize(stats.get(str(i), {}))
    return out


def fit(config: FeaturePipeline, batches: Callable[[], Iterable[Any]] | Iterable[Any]) -> State:
    """Fit ``config`` on ``batches`` and return the pipeline state.

    ``batches`` is an iterable of batches, or a function returning a fresh one; a pipeline that needs more
    than one pass needs the function (or a list), because a one-shot iterator cannot be read twice.
    """
    passes = plan(config.steps).passes
    if passes > 1 and not callable(batches) and iter(batches) is batches:
        raise TypeError(
            f"this pipeline fits in {passes} passes over the data; pass a function returning a fresh "
            "iterable of batches (or a list), not a one-shot iterator"
        )
    states = start(config)
    for fit_pass in range(passes):
        merged: dict[str, Stats] = {}
        for batch in batches() if callable(batches) else batches:
            merged = merge(config, merged, partial_fit(config, states, batch, fit_pass))
        states = finish_pass(config, states, merged, fit_pass)
    return assemble(config, [s for s in states if s is not None])
