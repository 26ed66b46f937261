"""The search space: which keys it may hold, seeded sampling, and checking sampled configs. No Ray here.

Keys are written like overrides (``train.lr``, ``train.model.dropout``). rayml samples the ``num_samples``
configs itself, up front and seeded, so that every one of them is checked against ``TrainConfig`` (and the
job's cross-section rules) before any trial starts; Ray Tune then runs exactly those configs.
"""

from __future__ import annotations

import copy
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from rayml.errors import ConfigError

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from rayml.pipeline import JobConfig
    from rayml.tune import Distribution, TuneConfig

# Train settings a search must not vary: each is set by the tune section itself.
FIXED = {
    "train.epochs": "it is ASHA's max_t (the most epochs a trial runs); set train.epochs instead",
    "train.num_workers": "each trial's workers come from tune.num_workers; set that instead",
    "train.cpus_per_worker": "each trial's CPUs come from tune.cpus_per_worker; set that instead",
    "train.checkpoint_metric": "trials are ranked by tune.metric (which also ranks their checkpoints); set that",
}
_FIELD = re.compile(r"^[A-Za-z_][\w.]*: ")  # a parser problem that starts with its field path
SIGNIFICANT = 4  # sampled floats are rounded to this many significant digits: readable tables and job files


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be in the space, or None."""
    from rayml.model_config import ModelConfig
    from rayml.train import TrainConfig

    if key in FIXED:
        return f"{key}: cannot be searched: {FIXED[key]}"
    parts = key.split(".")
    if parts[0] != "train" or len(parts) not in (2, 3) or (len(parts) == 3 and parts[1] != "model"):
        return (f"{key}: not a train setting; keys look like train.lr or train.model.dropout (any train.* or "
                "train.model.* key)")
    fields = TrainConfig.model_fields if len(parts) == 2 else ModelConfig.model_fields
    if parts[-1] not in fields or parts[-1] == "model":
        known = sorted(f"{'.'.join(parts[:-1])}.{name}" for name in fields
                       if name != "model" and f"{'.'.join(parts[:-1])}.{name}" not in FIXED)
        more = ", and train.model.<setting>" if len(parts) == 2 else ""
        return f"{key}: unknown key. Fix its spelling; searchable keys here: {', '.join(known)}{more}"
    return None


def field_of(key: str) -> FieldInfo:
    """The pydantic field a (valid) space key sets."""
    from rayml.model_config import ModelConfig
    from rayml.train import TrainConfig

    parts = key.split(".")
    return (TrainConfig if len(parts) == 2 else ModelConfig).model_fields[parts[-1]]


def sample(space: dict[str, Distribution], num_samples: int, seed: int) -> list[dict[str, Any]]:
    """``num_samples`` configs ``{key: value}`` drawn from ``space``; the same seed gives the same configs."""
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(num_samples):
        config = {}
        for key in sorted(space):
            config[key] = _draw(space[key], rng)
        configs.append(config)
    return configs


def _draw(dist: Distribution, rng: np.random.Generator) -> Any:
    if dist.choice is not None:
        return copy.deepcopy(dist.choice[int(rng.integers(len(dist.choice)))])
    if dist.randint is not None:
        low, high = dist.randint
        return int(rng.integers(low, high + 1))
    if dist.loguniform is not None:
        low, high = dist.loguniform
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        low, high = dist.uniform  # type: ignore[misc]
        value = rng.uniform(low, high)
    return min(high, max(low, float(f"{value:.{SIGNIFICANT}g}")))


def trial_train(train: dict[str, Any], params: dict[str, Any], tune: TuneConfig, metric: str) -> dict[str, Any]:
    """The train section a trial runs: the job's ``train`` (a plain dict) with ``params`` set, the tune section's
    workers, and ``metric`` ranking its checkpoints."""
    result = copy.deepcopy(train)
    for key, value in params.items():
        node = result
        parts = key.split(".")[1:]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value)
    result.update(num_workers=tune.num_workers, cpus_per_worker=tune.cpus_per_worker, checkpoint_metric=metric)
    return result


def tune_metric(job: JobConfig) -> str:
    """The metric that ranks trials: ``tune.metric``, else ``train.checkpoint_metric``."""
    assert job.tune is not None
    return job.tune.metric or job.train.checkpoint_metric


def check(job: JobConfig, samples: list[dict[str, Any]]) -> list[str]:
    """Every problem of ``job.tune`` against the rest of the job: the metric, ASHA's rungs, and each value a
    sample can take (the edges of every distribution, then every sampled config) as a train config."""
    from rayml.train.choices import TASK_METRICS

    tune = job.tune
    if tune is None:
        return ["tune: this job has no tune section, so there is nothing to search. Add one (see "
                "jobs/fraud_tune.yaml): tune: {space: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}, num_samples: 8}"]
    problems = []
    if str(job.run.root).startswith("s3://"):
        problems.append(f"run.root: `rayml tune` keeps its trials in a local or shared directory, got "
                        f"{job.run.root!r}; set run.root to a path every node can reach (s3:// run directories "
                        "work with `rayml run`)")
    metric, task = tune_metric(job), job.features.task
    if metric not in TASK_METRICS[task]:
        where = "tune.metric" if tune.metric else "train.checkpoint_metric (tune.metric is unset)"
        problems.append(f"{where}: {metric!r} is not reported for a {task} job; set tune.metric to one of "
                        f"{', '.join(TASK_METRICS[task])}")
    if tune.grace_period >= job.train.epochs:
        problems.append(f"tune.grace_period: {tune.grace_period} epoch(s) is not below train.epochs "
                        f"({job.train.epochs}), so ASHA could never stop a trial; lower tune.grace_period or raise "
                        "train.epochs")
    for key, dist in sorted(tune.space.items()):
        problems += _type_problems(key, dist)
    if problems:
        return problems
    for key, dist in sorted(tune.space.items()):
        for value in dist.extremes():
            problems += _config_problems(job, {key: value}, metric, f"tune.space.{key}: the value {value!r}")
    if problems:
        return problems
    for index, params in enumerate(samples):
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        problems += _config_problems(job, params, metric, f"tune: sampled config {index + 1} ({shown})")
    return problems


def _type_problems(key: str, dist: Distribution) -> list[str]:
    annotation = field_of(key).annotation
    if dist.kind in ("uniform", "loguniform") and annotation is int:
        bounds = dist.uniform or dist.loguniform
        return [f"tune.space.{key}: {key} takes integers but {dist.kind} samples fractions; write "
                f"{{randint: [{int(bounds[0])}, {int(bounds[1])}]}} or {{choice: [...]}}"]  # type: ignore[index]
    return []


def _config_problems(job: JobConfig, params: dict[str, Any], metric: str, what: str) -> list[str]:
    """Why ``params`` make an invalid train config for ``job`` (naming the setting and the fix), or []."""
    from rayml import pipeline
    from rayml.config import parse
    from rayml.train import TrainConfig

    assert job.tune is not None
    data = trial_train(job.train.model_dump(mode="json"), params, job.tune, metric)
    fix = f"narrow or change tune.space.{next(iter(params))}" if len(params) == 1 else "narrow the space"
    try:
        train = parse(TrainConfig, data, source="train")
    except ConfigError as exc:
        problems = []
        for problem in exc.problems:
            # The parser's own "Fix: set <key>: <default>" points at the train section; the fix is in the space.
            reason = problem.split(" Fix: ")[0].removeprefix("(top level): ").rstrip(".")
            reason = f"train.{reason}" if _FIELD.match(reason) else reason
            problems.append(f"{what} makes an invalid train config: {reason}; {fix}")
        return problems
    problems = pipeline.cross_check(job.model_copy(update={"train": train}))
    return [f"{what}: {problem}" for problem in problems if problem.startswith("train.")]
