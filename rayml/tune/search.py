"""The search on Ray: validate and featurize once, run every sampled config as a Ray Train run under Ray Tune
with ASHA, then evaluate, export and register the best trial's best checkpoint like a normal run.

How Train runs under Tune (Ray 2.60, Train V2): each Tune trial is a *function trainable* that builds a
``TorchTrainer`` over rayml's per-worker loop and calls ``fit()``; the trainer's ``TuneReportCallback`` forwards
every epoch's ``ray.train.report`` (metrics plus the checkpoint's path) to Tune, where ASHA decides. This is the
pattern Ray's Train V2 guide recommends; ``Tuner(trainer)`` is deprecated and takes only the old (V1) trainers,
which a Train V2 ``TorchTrainer`` is not. A trial that ASHA stops ends its actor, and its Train controller and
workers die with it; rayml then removes their placement group (``_release_stopped_trials``).

Layout under ``<run dir>/tune/``: ``trials/<trial id>/`` (Tune's files, ``ray_train/checkpoint_*`` and
``placement_groups.txt``),
``results.csv``, ``results.json``, ``best_job.yaml`` and ``manifest.json`` (written last: the search is done).
Rerunning the same run with the same inputs reuses a completed search and its registration.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from rayml import artifacts, featurize, pipeline, train
from rayml.config import parse
from rayml.errors import ConfigError, RaymlError
from rayml.model_config import WEIGHTS_FILE, output_count
from rayml.tracking import Tracker
from rayml.train.progress import STATE_FILE, read_progress
from rayml.train.choices import MODES
from rayml.tune import results, space

log = logging.getLogger("rayml")

TUNE_DIR = "tune"  # <run dir>/tune
TRIALS = "trials"  # Tune's experiment name: <run dir>/tune/trials/<trial id>/
BEST_JOB = "best_job.yaml"
# A trial's Tune actor only drives its Train run (the workers do the training), so it reserves a sliver of a CPU
# instead of Tune's default 1 CPU, which would otherwise halve how many trials fit on a small cluster.
DRIVER_CPUS = 0.1
PLACEMENT_GROUPS = "placement_groups.txt"  # <trial dir>/: the placement group of each worker group it started
_SWEEP_INTERVAL_S = 2.0
# Seconds after a trial ends before its placement group goes: by then its actor, and with it the Train controller
# (which could otherwise answer the lost workers with a new worker group), are gone.
_RELEASE_GRACE_S = 5.0


def run(job: pipeline.JobConfig) -> dict[str, Any]:
    """Search ``job.tune``'s space and register the best trial's model. Returns the results ``rows`` (best
    first), the ``best`` row, the ``metric``, the ``registered`` manifest, and the paths of ``results_csv``,
    ``results_json`` and ``best_job``."""
    if job.tune is None:
        raise ConfigError(space.check(job, []), "tune")
    metric = space.tune_metric(job)
    samples = space.sample(job.tune.space, job.tune.num_samples, job.tune.seed)
    problems = space.check(job, samples)
    if problems:
        raise ConfigError(problems, "tune")
    run_dir = pipeline.start(job)
    tracker = Tracker.from_config(job.tracking, job.run.root, job.name)
    with tracker.run(run_dir, run_dir.name, job.model_dump(mode="json", exclude={"tracking"})) as run_id:
        validated, featurized = pipeline.prepare(job, run_dir)
        tune_dir = run_dir / TUNE_DIR
        fingerprint = artifacts.fingerprint([featurized["fingerprint"], job.train.model_dump(mode="json"),
                                             job.tune.model_dump(mode="json")])
        done = artifacts.read_manifest(tune_dir)
        if done is not None and done.get("fingerprint") == fingerprint:
            log.info("tune: reusing the completed search in %s", tune_dir)
        else:
            if tune_dir.exists():
                shutil.rmtree(tune_dir)  # an interrupted or different search: its trials mean nothing now
            records = _search(job, featurized, samples, metric, tune_dir)
            for record in records:  # one nested MLflow run per trial, with its params and every epoch
                tracker.log_child(run_id, f"trial {record.trial_id}", record.params, record.history,
                                  "FAILED" if record.error else "FINISHED")
            done = _search_stage(job, featurized, records, metric, tune_dir, fingerprint)
        # The best job is rebuilt from this job (not the saved search): its other sections may have changed since.
        best_data = best_job_data(job, done["best"]["params"], metric)
        best_path = write_best_job(best_data, tune_dir / BEST_JOB, done["best"], metric, len(done["rows"]))
        best_job = parse(pipeline.JobConfig, best_data, source=str(best_path))
        registered = pipeline.finish(best_job, run_dir, validated, featurized, done["trained"])
        pipeline.log_outcome(best_job, run_dir, registered, tracker, run_id)
    log.info("tune: registered the best trial (%s) at %s", done["best"]["trial_id"], registered["version_dir"])
    return {"rows": done["rows"], "best": done["best"], "metric": metric, "registered": registered,
            "results_csv": done["results_csv"], "results_json": done["results_json"], "best_job": str(best_path)}


def _search_stage(job: pipeline.JobConfig, featurized: dict[str, Any], records: list[results.TrialRecord],
                  metric: str, tune_dir: Path, fingerprint: str) -> dict[str, Any]:
    """From the trials' ``records``: write the results, the best job and the manifest; return the manifest."""
    assert job.tune is not None
    mode = MODES[metric]
    table = results.rows(records, metric, mode, job.train.epochs)
    top = results.best(table)
    if top is None:
        failed = [r for r in records if r.error]
        raise RaymlError(
            f"no trial of the search reported {metric}; "
            + (f"the first error: {failed[0].error.strip().splitlines()[-1]}" if failed else "none ran an epoch")
            + f". Trial logs are under {tune_dir / TRIALS}"
        )
    paths = results.write(table, tune_dir, metric=metric, mode=mode, max_epochs=job.train.epochs)
    record = next(r for r in records if r.trial_id == top["trial_id"])
    trained = _trained(featurized, record, metric, space.trial_train(job.train.model_dump(mode="json"),
                                                                     top["params"], job.tune, metric))
    trained["checkpoint_choice"]["tune"] = {
        "trial_id": top["trial_id"], "params": top["params"], "metric": metric, "mode": mode, "value": top["value"],
        "trials": len(table), "stopped_by_asha": sum(row["stopped_by_asha"] for row in table),
        "results": str(paths["csv"]),
    }
    manifest = {"fingerprint": fingerprint, "metric": metric, "mode": mode, "rows": table, "best": top,
                "trained": trained, "results_csv": str(paths["csv"]), "results_json": str(paths["json"])}
    artifacts.write_manifest(tune_dir, "tune", manifest)
    return artifacts.read_manifest(tune_dir) or manifest


def _search(job: pipeline.JobConfig, featurized: dict[str, Any], samples: list[dict[str, Any]], metric: str,
            tune_dir: Path) -> list[results.TrialRecord]:
    """Run one Ray Train run per sample under Ray Tune with ASHA; what each trial did."""
    import ray
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    tune = job.tune
    assert tune is not None
    cluster = ray.cluster_resources()
    gpu = train.use_gpu(job.train.device, tune.num_workers, cluster.get("GPU", 0.0))
    trains = [space.trial_train(job.train.model_dump(mode="json"), params, tune, metric) for params in samples]
    for settings in trains:
        train.check_precision(settings["precision"], gpu)
    task = featurized.get("task", "binary")
    setup = {
        "trains": trains, "gpu": gpu, "trials_dir": str((tune_dir / TRIALS).resolve()),
        "run_name": tune_dir.parent.name, "input_dim": featurized["input_dim"], "task": task,
        "outputs": output_count(task, featurized.get("classes")), "layout": featurized["layout"],
        "train_rows": featurized["rows"]["train"], "label_counts": featurized.get("label_counts", {}),
        "output_bias": train.output_bias(featurized),
    }
    concurrency = tune.max_concurrent_trials or default_concurrency(
        cluster.get("CPU", 1.0), cluster.get("GPU", 0.0), tune.num_workers, tune.cpus_per_worker, gpu)
    log.info("tune: %d trial(s), up to %d at a time, %d worker(s) each; ASHA on %s (%s) over up to %d epochs, "
             "grace %d, reduction factor %g", len(samples), concurrency, tune.num_workers, metric, MODES[metric],
             job.train.epochs, tune.grace_period, tune.reduction_factor)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(_trial, data=_datasets(job, featurized), setup=setup), {"CPU": DRIVER_CPUS})
    tuner = ray.tune.Tuner(
        trainable,
        # rayml sampled (and checked) the configs; Tune runs them in order, one trial each.
        param_space={"sample": ray.tune.grid_search(list(range(len(samples))))},
        tune_config=ray.tune.TuneConfig(
            metric=metric, mode=MODES[metric], max_concurrent_trials=concurrency, trial_dirname_creator=_dirname,
            # stop_last_trials=False: a trial that reaches max_t ends on its own, letting its Train run shut
            # down cleanly (last checkpoint written, placement group removed) instead of being stopped.
            scheduler=ASHAScheduler(time_attr="epoch", max_t=job.train.epochs, grace_period=tune.grace_period,
                                    reduction_factor=tune.reduction_factor, stop_last_trials=False),
        ),
        run_config=ray.tune.RunConfig(name=TRIALS, storage_path=str(tune_dir.resolve()), verbose=1,
                                      callbacks=[_release_stopped_trials(Path(setup["trials_dir"]))]),
    )
    grid = tuner.fit()
    if grid.num_terminated + grid.num_errors < len(samples):
        # Tune returns (rather than raises) when Ctrl-C stops it: unfinished trials must not be ranked.
        raise KeyboardInterrupt(f"tune: stopped with {len(samples) - grid.num_terminated - grid.num_errors} "
                                f"trial(s) unfinished; run it again to start the search over")
    return [_record(result, samples) for result in grid]


def default_concurrency(cpus: float, gpus: float, num_workers: int, cpus_per_worker: float, gpu: bool) -> int:
    """Trials at once when tune.max_concurrent_trials is unset: what the cluster holds with one CPU to spare
    for Ray Data and the trial drivers (and, on GPUs, one GPU per worker)."""
    per_trial = num_workers * cpus_per_worker + DRIVER_CPUS
    fits = max(1, int((cpus - 1.0) // per_trial))
    if gpu:
        fits = min(fits, max(1, int(gpus // num_workers)))
    return fits


def _dirname(trial: Any) -> str:
    return str(trial.trial_id)


def _datasets(job: pipeline.JobConfig, featurized: dict[str, Any]) -> dict[str, Any]:
    """The featurized train and val splits, read once and shared by every trial (held in the object store when
    small, as a normal run does)."""
    import ray.data

    data = {}
    for name in ("train", "val"):
        path = featurized["paths"][name]
        dataset = ray.data.read_parquet(path).select_columns([featurize.FEATURES, featurize.LABEL])
        data[name] = dataset.materialize() if train.cache_in_memory(job.train.cache, path) else dataset
    return data


def _trial(config: dict[str, Any], *, data: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Tune trial: a Ray Train run of rayml's loop with the sampled settings; every epoch reaches Tune."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    settings = train.TrainConfig.model_validate(setup["trains"][config["sample"]])
    trial_id = ray.tune.get_context().get_trial_id()
    weight = train.pos_weight(settings, setup["label_counts"]) if setup["task"] == "binary" else 1.0
    gpu = setup["gpu"]
    loop_config = train.loop_config(
        settings, input_dim=setup["input_dim"], positive_weight=weight, train_rows=setup["train_rows"],
        run_name=f"{setup['run_name']}-{trial_id}", task=setup["task"], outputs=setup["outputs"],
        layout=setup["layout"], output_bias=setup["output_bias"])
    loop_config[PLACEMENT_GROUPS] = str(Path(setup["trials_dir"]) / trial_id / PLACEMENT_GROUPS)
    datasets = train.worker_data(loop_config, data)  # small materialized splits: block references, as in a run
    trainer = TorchTrainer(
        _worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.num_workers, use_gpu=gpu, placement_strategy=settings.placement_strategy,
            resources_per_worker={"CPU": settings.cpus_per_worker, **({"GPU": 1} if gpu else {})}),
        run_config=ray.train.RunConfig(
            name=train.RAY_RUN_NAME, storage_path=str(Path(setup["trials_dir"]) / trial_id),
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=settings.keep_checkpoints, checkpoint_score_attribute=settings.checkpoint_metric,
                checkpoint_score_order=MODES[settings.checkpoint_metric]),
            callbacks=[TuneReportCallback()]),
        datasets=datasets,
    )
    trainer.fit()


def _worker(cfg: dict[str, Any]) -> None:
    """rayml's per-worker loop, after rank 0 notes the worker group's placement group for the driver."""
    import ray
    import ray.train

    from rayml.train.loop import train_loop

    group = ray.get_runtime_context().get_placement_group_id()
    if ray.train.get_context().get_world_rank() == 0 and group is not None:
        with open(cfg[PLACEMENT_GROUPS], "a") as fh:
            fh.write(group + "\n")
    train_loop(cfg)


def _release_stopped_trials(trials_dir: Path) -> Any:
    """A Tune callback (in the driver) that removes what a stopped trial's Ray Train run still holds.

    A trial ASHA stops ends its actor, and its Train controller and workers die with it, but their placement
    group lives as long as the job unless Train's detached cleaner removes it, which needs the State API (and
    finds the wrong cluster where several run on one host). Held CPUs would starve the next trials, whose
    worker groups then wait forever; so every few seconds this removes the placement groups that the workers
    of ended trials recorded, and once more when the search ends.
    """
    import time

    import ray
    import ray.tune
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    class ReleaseStoppedTrials(ray.tune.Callback):
        def __init__(self) -> None:
            self.removed: set[str] = set()
            self.ended: dict[str, float] = {}
            self.last = 0.0

        def sweep(self, trials: list[Any], force: bool = False) -> None:
            now = time.monotonic()
            if not force and now - self.last < _SWEEP_INTERVAL_S:
                return
            self.last = now
            for trial in trials:
                if trial.status not in ("TERMINATED", "ERROR"):
                    continue
                ended = self.ended.setdefault(trial.trial_id, now)
                path = trials_dir / str(trial.trial_id) / PLACEMENT_GROUPS
                if (not force and now - ended < _RELEASE_GRACE_S) or not path.is_file():
                    continue
                for group_id in path.read_text().split():
                    if group_id in self.removed:
                        continue
                    group = PlacementGroup(ray.PlacementGroupID.from_hex(group_id))
                    if placement_group_table(group).get("state", "REMOVED") != "REMOVED":
                        remove_placement_group(group)
                        log.info("tune: released the workers of ended trial %s", trial.trial_id)
                    self.removed.add(group_id)

        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            self.sweep(trials)

        def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
            now = time.monotonic()
            latest = max((self.ended.setdefault(t.trial_id, now) for t in trials), default=now)
            time.sleep(max(0.0, latest + _RELEASE_GRACE_S - now))
            self.sweep(trials, force=True)

    return ReleaseStoppedTrials()


def _record(result: Any, samples: list[dict[str, Any]]) -> results.TrialRecord:
    """A Tune ``Result`` as a ``TrialRecord``."""
    index = int((result.config or {}).get("sample", -1))
    frame = result.metrics_dataframe
    history = frame.to_dict("records") if frame is not None and len(frame) else []
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
    last = next((m["checkpoint_path"] for m in reversed(history) if _complete(m.get("checkpoint_path"))), None)
    return results.TrialRecord(
        trial_id=str(trial_id), params=samples[index] if 0 <= index < len(samples) else {}, history=history,
        stopped_early=bool(last and read_progress(Path(last)).stopped_early),
        error=None if result.error is None else f"{type(result.error).__name__}: {result.error}",
    )


def _complete(path: Any) -> bool:
    """Whether ``path`` is a checkpoint directory with its weights and state (a stopped trial may leave one
    half-copied)."""
    return isinstance(path, str) and (Path(path) / WEIGHTS_FILE).is_file() and (Path(path) / STATE_FILE).is_file()


def _trained(featurized: dict[str, Any], record: results.TrialRecord, metric: str,
             train_data: dict[str, Any]) -> dict[str, Any]:
    """What ``pipeline.finish`` needs of a training stage, for the best trial: its best checkpoint (by
    ``metric``), its history (from its latest checkpoint) and a fingerprint."""
    candidates = [(m["checkpoint_path"], m) for m in record.history if _complete(m.get("checkpoint_path"))]
    if not candidates:
        raise RaymlError(f"the best trial {record.trial_id} left no complete checkpoint under "
                         f"{Path(record.history[-1].get('checkpoint_path', '?')).parent}")
    latest = max(candidates, key=lambda item: item[1]["epoch"])[0]
    progress = read_progress(Path(latest))
    chosen, choice = train.choose_checkpoint(candidates, progress.history, metric)
    settings = train.TrainConfig.model_validate(train_data)
    task = featurized.get("task", "binary")
    weight = train.pos_weight(settings, featurized.get("label_counts", {})) if task == "binary" else 1.0
    return {
        "checkpoint": chosen, "checkpoint_choice": choice, "last_checkpoint": latest, "history": progress.history,
        "final": progress.history[-1], "attempts": progress.attempts, "global_step": progress.global_step,
        "stopped_early": progress.stopped_early, "pos_weight": weight, "trial_id": record.trial_id,
        "params": record.params,
        "fingerprint": artifacts.fingerprint([featurized["fingerprint"], train_data, record.trial_id, chosen]),
    }


def best_job_data(job: pipeline.JobConfig, params: dict[str, Any], metric: str) -> dict[str, Any]:
    """The job the best trial ran, as plain data for a job file: what the job set, with the trial's train
    settings, no tune section, and no run name (so ``rayml run`` starts a new run)."""
    assert job.tune is not None
    data = job.model_dump(mode="json", exclude_unset=True)
    data.pop("tune", None)
    if "name" in data.get("run", {}):
        del data["run"]["name"]
    data["train"] = space.trial_train(data.get("train", {}), params, job.tune, metric)
    return data


def write_best_job(data: dict[str, Any], path: Path, best: dict[str, Any], metric: str, trials: int) -> Path:
    """Write the best job as a YAML job file that ``rayml run`` accepts."""
    header = (
        f"# The best of {trials} trial(s) of `rayml tune`: trial {best['trial_id']}, {metric}={best['value']:.4f} "
        f"at epoch {best['best_epoch']}.\n"
        f"# Its params: {results.format_params(best['params'])}\n"
        f"# Train it again from scratch: rayml run {path}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path
