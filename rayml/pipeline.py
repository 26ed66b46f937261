"""The job: validate -> featurize -> train -> evaluate -> export -> register, read top to bottom.

Each stage writes its outputs and a ``manifest.json`` under ``<run.root>/<run name>/<stage>/``; the job itself
is saved as ``<run dir>/job.json`` when the run starts. Rerunning a run (``rayml run`` with the same
``run.name``, or ``rayml train --resume RUN_DIR``, which reads job.json) reuses every completed stage whose
inputs (its config and upstream manifests) are unchanged, and an interrupted training stage resumes from its
latest checkpoint.
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rayml import __version__, artifacts, featurize, recorders, runtime, train, validate
from rayml import run_dir as run_dirs
from rayml import storage as store
from rayml import evaluate as evaluate_stage
from rayml import export as export_stage
from rayml.config import StrictModel, apply_overrides, load_yaml, parse
from rayml.errors import ConfigError
from rayml.evaluate import EvaluateConfig
from rayml.export import ExportConfig
from rayml.featurize import FeaturizeConfig
from rayml.ingest import IngestConfig
from rayml.evaluate import task_stage
from rayml.export import output_name
from rayml.model_config import WEIGHTS_FILE, output_count
from rayml.predictor import FEATURIZER_FILE, MODEL_FILE
from rayml.runtime import RuntimeConfig
from rayml.source import SourceConfig
from rayml.storage import StorageConfig
from rayml.split import SplitConfig
from rayml.tracking import Tracker, TrackingConfig
from rayml.train import TrainConfig
from rayml.train.choices import TASK_METRICS
from rayml.tune import TuneConfig
from rayml.validate import ValidateConfig

log = logging.getLogger("rayml")
NAME_PATTERN = artifacts.NAME_PATTERN
JOB_FILE = run_dirs.JOB_FILE


class RunSection(StrictModel):
    """Where a run's outputs go."""

    root: str = Field("runs", min_length=1, description="directory or s3://bucket/prefix holding run directories")
    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="run directory name; default <job name>-<UTC time>. Reuse to resume"
    )


class RegistryConfig(StrictModel):
    """Where the finished model is registered."""

    root: str = Field("registry", min_length=1, description="registry root directory (or s3://bucket/prefix)")
    model_name: str = Field(pattern=NAME_PATTERN, description="model name in the registry: letters, digits, _-.")


class JobConfig(StrictModel):
    """A pipeline job: one YAML file in jobs/."""

    name: str = Field(pattern=NAME_PATTERN, description="job name, used in run directory names")
    run: RunSection = Field(default_factory=RunSection)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    source: SourceConfig
    validation: ValidateConfig
    split: SplitConfig
    features: FeaturizeConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    registry: RegistryConfig
    ingest: IngestConfig | None = Field(None, description="`rayml ingest`: Kafka -> validated Parquet output")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow experiment tracking")
    tune: TuneConfig | None = Field(None, description="`rayml tune`: the search space and ASHA settings")
    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="how the s3:// paths of source, run.root and registry.root are reached (endpoint, region, "
        "credential variables)",
    )


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Parse a job file plus ``key=value`` overrides; every problem is reported at once."""
    data = apply_overrides(load_yaml(path), overrides or [], source=str(path))
    job = parse(JobConfig, data, source=str(path))
    problems = cross_check(job)
    if problems:
        raise ConfigError(problems, str(path))
    return job


def load_run(run_dir: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """The job a run directory (local or s3://) was started with (its job.json) plus ``key=value`` overrides,
    pointed at ``run_dir`` itself (wherever it lives now) so that rerunning it resumes that run. An s3:// run
    directory is reached with the AWS variables and any ``storage.*`` overrides."""
    data = run_dirs.read_job(run_dir, run_dirs.storage_from_overrides(overrides or []))
    saved = str(store.join(run_dir, JOB_FILE))
    data = apply_overrides(data, overrides or [], source=saved)
    root, name = run_dirs.location(run_dir)
    data["run"] = {**data.get("run", {}), "root": root, "name": name}
    job = parse(JobConfig, data, source=saved)
    problems = cross_check(job)
    if problems:
        raise ConfigError(problems, saved)
    return job


def save_job(job: JobConfig, run_dir: str | Path) -> Path | str:
    """Write ``job`` as ``<run_dir>/job.json`` with its run name filled in, so the run can be resumed from it."""
    saved = job.model_copy(update={"run": RunSection(root=job.run.root, name=store.basename(run_dir))})
    return artifacts.write_json(store.join(run_dir, JOB_FILE), saved.model_dump(mode="json"), job.storage)


def cross_check(job: JobConfig) -> list[str]:
    """Problems that span sections: every column a stage uses must be declared with a fitting type."""
    types = {c.name: c.type for c in job.validation.columns}
    problems = []

    def need(path: str, column: str, allowed: tuple[str, ...]) -> None:
        if column not in types:
            problems.append(f"{path}: column {column!r} is not declared under validation.columns; declare it")
        elif types[column] not in allowed:
            problems.append(
                f"{path}: column {column!r} has type {types[column]}; it needs one of {', '.join(allowed)}"
            )

    features = job.features
    need("split.key", job.split.key, ("string", "int"))
    label_types = {"binary": ("int", "bool", "float"), "multiclass": ("int", "string", "bool"),
                   "regression": ("float", "int")}
    need("features.label", features.label, label_types[features.task])
    for name in features.numeric:
        need("features.numeric", name, ("float", "int", "bool"))
    for name in features.categorical:
        need("features.categorical", name, ("string", "int"))
    for name in features.embed:
        need("features.embed", name, ("string", "int"))
    if features.image is not None:
        need("features.image.column", features.image.column, ("binary",))
    if features.text is not None:
        need("features.text.column", features.text.column, ("string",))
    for name in features.keep:
        need("features.keep", name, ("string", "float", "int", "bool", "timestamp"))
    ref = job.evaluate.reference_score_column
    if ref is not None and ref not in features.keep:
        problems.append(f"evaluate.reference_score_column: {ref!r} must also be listed in features.keep")
    if ref is not None and features.task != "binary":
        problems.append(f"evaluate.reference_score_column: only binary jobs compare with a reference score, this "
                        f"one is {features.task}; remove it")
    metric = job.train.checkpoint_metric
    if metric not in TASK_METRICS[features.task]:
        problems.append(f"train.checkpoint_metric: {metric!r} is not reported for a {features.task} job; use one "
                        f"of {', '.join(TASK_METRICS[features.task])}")
    kind = job.train.model.kind
    if kind == "cnn" and features.image is None:
        problems.append("train.model.kind: a cnn needs an image input; set features.image or use kind: mlp")
    if kind == "fm" and (not features.embed or features.task == "multiclass"):
        problems.append("train.model.kind: an fm model needs features.embed columns and a binary or regression "
                        "task; use kind: mlp otherwise")
    if store.is_remote(job.run.root) and job.tracking.enabled and job.tracking.tracking_uri is None:
        problems.append("tracking.tracking_uri: run.root is on s3://, where MLflow's default store (a SQLite "
                        "file under run.root) cannot live; set tracking.tracking_uri (e.g. http://mlflow:5000) "
                        "or tracking.enabled: false")
    return problems


def run(job: JobConfig, *, through: Literal["train", "register"] = "register") -> dict[str, Any]:
    """Run every stage of ``job``; return the register stage's manifest (with the model's version dir).

    ``through="train"`` stops after training and returns the train stage's manifest.
    """
    run_dir = start(job)
    started = time.perf_counter()
    tracker = Tracker.from_config(job.tracking, job.run.root, job.name)
    with tracker.run(run_dir, store.basename(run_dir), job.model_dump(mode="json", exclude={"tracking"})) as run_id:
        validated, featurized = prepare(job, run_dir)
        trained = _stage(run_dir, "train", [featurized["fingerprint"], job.train],
                         lambda out: _train(job, featurized, out, {"tracker": tracker.to_dict(), "run_id": run_id}),
                         job.storage)
        if through == "train":
            return trained
        registered = finish(job, run_dir, validated, featurized, trained)
        log_outcome(job, run_dir, registered, tracker, run_id)
    log.info("registered %s (%.0f s in all)", registered["version_dir"], time.perf_counter() - started)
    return registered


def log_outcome(job: JobConfig, run_dir: Path | str, registered: dict[str, Any], tracker: Tracker,
                run_id: str | None) -> None:
    """Log the evaluation report, its plots and the registered model's path to the run's MLflow run."""
    if not tracker.enabled:
        return
    evaluate_dir = store.join(run_dir, "evaluate")
    report = artifacts.read_json(store.join(evaluate_dir, "report.json"), job.storage)
    with run_dirs.local_files(evaluate_dir, ".png", job.storage) as plots:
        tracker.log_report(run_id, report, plots)
    tracker.log_registered(run_id, registered["version_dir"], registered["model_name"], registered["version"])


def start(job: JobConfig) -> Path | str:
    """The run directory of ``job`` (its job.json written), with Ray connected: a Path, or an s3:// URI."""
    name = job.run.name or f"{job.name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}"
    artifacts.check_name(name, "run.name")
    run_dir = store.join(job.run.root, name)
    log.info("run directory %s", run_dir)
    save_job(job, run_dir)
    log.info("%s", runtime.connect(job.runtime))
    return run_dir


def prepare(job: JobConfig, run_dir: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validate and featurize stages (reused when complete): their manifests.

    The validate stage also fits the featurizer from the train records' statistics gathered as it writes them,
    so featurize skips its fitting pass; a reused validate stage's state serves only the same split and
    features (``fitted.for``), else featurize fits again."""
    fit_for = artifacts.fingerprint([job.split.model_dump(), job.features.model_dump()])
    validated = _stage(run_dir, "validate", [job.source, job.validation],
                       lambda out: _validate(job, out, fit_for), job.storage)
    log.info("validate: read %d, valid %d, quarantined %d (%s)", validated["read_rows"], validated["valid_rows"],
             validated["quarantined_rows"], validated["quarantine_path"])
    fitted = validated.get("fitted") or {}
    state = fitted.get("state") if fitted.get("for") == fit_for else None
    featurized = _stage(run_dir, "featurize", [validated["fingerprint"], job.split, job.features],
                        lambda out: featurize.run_stage(validated["valid_path"], split=job.split,
                                                        config=job.features, out_dir=out, storage=job.storage,
                                                        fitted=state),
                        job.storage)
    log.info("featurize: %d features; rows %s", featurized["input_dim"], featurized["rows"])
    return validated, featurized


def finish(job: JobConfig, run_dir: Path | str, validated: dict[str, Any], featurized: dict[str, Any],
           trained: dict[str, Any]) -> dict[str, Any]:
    """Evaluate, export and register a trained model: ``trained`` needs ``checkpoint`` (a directory holding
    model.pt), ``history``, ``final``, ``checkpoint_choice``, ``stopped_early``, ``attempts`` and ``fingerprint``
    (what the train stage's manifest holds; ``rayml tune`` builds one for its best trial)."""
    evaluated = _stage(run_dir, "evaluate", [trained["fingerprint"], job.evaluate],
                       lambda out: _evaluate(job, featurized, trained, out), job.storage)
    log.info("evaluate (test): %s", _summary(job.features.task, evaluated["report"]))
    exported = _stage(run_dir, "export", [trained["fingerprint"], job.export],
                      lambda out: _export(job, validated, featurized, trained, out), job.storage)
    return _stage(run_dir, "register", [exported["fingerprint"], evaluated["fingerprint"], job.registry],
                  lambda out: _register(job, run_dir, validated, featurized, trained, evaluated, exported),
                  job.storage)


def _stage(run_dir: Path | str, name: str, inputs: list[Any], body: Callable[[Any], dict[str, Any]],
           storage: StorageConfig | None = None) -> dict[str, Any]:
    """Run ``body`` unless the stage already completed with the same inputs; return its manifest."""
    out = store.join(run_dir, name)
    fingerprint = artifacts.fingerprint([i.model_dump() if isinstance(i, StrictModel) else i for i in inputs])
    done = artifacts.read_manifest(out, storage)
    if done is not None and done.get("fingerprint") == fingerprint:
        log.info("%s: reusing the completed stage in %s", name, out)
        return done
    log.info("%s: running", name)
    started = time.perf_counter()
    result = body(out)
    result = {**result, "fingerprint": fingerprint, "seconds": round(time.perf_counter() - started, 2)}
    artifacts.write_manifest(out, name, result, storage)
    return artifacts.read_manifest(out, storage) or result


def _validate(job: JobConfig, out: Path | str, fit_for: str) -> dict[str, Any]:
    tap = featurize.train_stats_tap(job.split, job.features)
    summary = validate.run_stage(job.source, job.validation, out, job.storage, tap=tap)
    summary["fitted"] = {"for": fit_for, "state": featurize.fit_from_tapped(summary.pop("tapped"), job.features)}
    recorders.record_validated(job.name, summary["valid_rows"], summary["quarantined_rows"])
    return summary


def _train(job: JobConfig, featurized: dict[str, Any], out: Path | str,
           tracking: dict[str, Any] | None = None) -> dict[str, Any]:
    import ray.data

    # Checkpoints are only resumed for the same data, architecture and optimization path; anything else starts
    # over. What may change between attempts: epochs (the schedule then spans the new total), early stopping,
    # checkpoint retention, workers, failures, caching.
    settings = ("lr", "weight_decay", "schedule", "warmup_epochs", "batch_size", "grad_clip", "precision",
                "class_weight", "seed")
    lineage = {"featurize": featurized["fingerprint"], "model": job.train.model.model_dump(),
               **{name: getattr(job.train, name) for name in settings}}
    lineage_file = store.join(out, "lineage.json")
    attempted = store.file_type(lineage_file, job.storage) == "file"
    if attempted and artifacts.read_json(lineage_file, job.storage) != lineage:
        log.info("train: inputs changed since the last attempt; discarding its checkpoints")
        store.delete(out, job.storage)
    artifacts.write_json(lineage_file, lineage, job.storage)

    columns = [featurize.FEATURES, featurize.LABEL]
    data = {}
    for name in ("train", "val"):
        path, filesystem = run_dirs.dataset_path(featurized["paths"][name], job.storage)
        dataset = ray.data.read_parquet(path, filesystem=filesystem).select_columns(columns)
        if train.cache_in_memory(job.train.cache, featurized["paths"][name], job.storage):
            dataset = dataset.materialize()  # every epoch then iterates the object store, not the files
        data[name] = dataset
    task = featurized.get("task", "binary")
    weight = train.pos_weight(job.train, featurized["label_counts"]) if task == "binary" else 1.0
    result = train.fit(data["train"], data["val"], input_dim=featurized["input_dim"], positive_weight=weight,
                       train_rows=featurized["rows"]["train"], config=job.train, storage_dir=out,
                       run_name=store.basename(run_dirs.parent(out)), task=task, storage=job.storage,
                       outputs=output_count(task, featurized.get("classes")), layout=featurized["layout"],
                       tracking=tracking, output_bias=train.output_bias(featurized))
    return {**result, "pos_weight": weight, "final": result["history"][-1]}


def _evaluate(job: JobConfig, featurized: dict[str, Any], trained: dict[str, Any], out: Path | str
              ) -> dict[str, Any]:
    import ray.data

    keep = [job.evaluate.reference_score_column] if job.evaluate.reference_score_column else []
    columns = [featurize.FEATURES, featurize.LABEL, *keep]
    paths = {name: run_dirs.dataset_path(featurized["paths"][name], job.storage) for name in ("val", "test")}
    val = ray.data.read_parquet(paths["val"][0], filesystem=paths["val"][1]).select_columns(columns[:2])
    test = ray.data.read_parquet(paths["test"][0], filesystem=paths["test"][1]).select_columns(columns)
    task = featurized.get("task", "binary")
    if task != "binary":
        stats = featurized.get("label_stats") or {}
        return task_stage.run_stage(
            val, test, checkpoint_dir=trained["checkpoint"], model=job.train.model,
            input_dim=featurized["input_dim"], outputs=output_count(task, featurized.get("classes")),
            layout=featurized["layout"], task=task, classes=featurized.get("classes"),
            baseline=float(stats.get("mean", 0.0)), batch_rows=job.evaluate.batch_rows, out_dir=out,
            storage=job.storage,
        )
    return evaluate_stage.run_stage(val, test, checkpoint_dir=trained["checkpoint"], model=job.train.model,
                                    input_dim=featurized["input_dim"], config=job.evaluate, out_dir=out,
                                    layout=featurized["layout"], storage=job.storage)


REFERENCE_ROWS = 50_000  # training rows profiled for drift: enough for stable deciles, small for the driver


def _export(job: JobConfig, validated: dict[str, Any], featurized: dict[str, Any], trained: dict[str, Any],
            out: Path | str) -> dict[str, Any]:
    import ray.data

    state = featurize.loads(store.read_text(featurized["state_path"], job.storage))
    columns = featurize.input_columns(state)
    valid_path, filesystem = run_dirs.dataset_path(validated["valid_path"], job.storage)
    records = ray.data.read_parquet(valid_path, filesystem=filesystem, partitioning=None).select_columns(
        sorted({job.split.key, *columns})
    )
    splits = featurize.split_datasets(records, job.split)
    held_out = splits["test"].take_batch(job.export.parity_rows, batch_format="pyarrow")
    train_sample = splits["train"].take_batch(REFERENCE_ROWS, batch_format="pyarrow")
    return export_stage.run_stage(trained["checkpoint"], model_config=job.train.model, state=state,
                                  held_out=held_out, train_sample=train_sample,
                                  test_path=featurized["paths"]["test"], config=job.export, out_dir=out,
                                  storage=job.storage)


def _register(
    job: JobConfig,
    run_dir: Path | str,
    validated: dict[str, Any],
    featurized: dict[str, Any],
    trained: dict[str, Any],
    evaluated: dict[str, Any],
    exported: dict[str, Any],
) -> dict[str, Any]:
    state = featurize.loads(store.read_text(featurized["state_path"], job.storage))
    inputs = set(featurize.input_columns(state))
    files = {  # local paths or s3:// URIs
        MODEL_FILE: _path(exported["onnx_path"]),
        FEATURIZER_FILE: _path(featurized["state_path"]),
        WEIGHTS_FILE: store.join(_path(trained["checkpoint"]), WEIGHTS_FILE),
        "report.json": store.join(run_dir, "evaluate", "report.json"),
    }
    if exported.get("reference_path"):
        files["reference.json"] = _path(exported["reference_path"])
    task, report = state["task"], evaluated["report"]
    classes = state.get("classes")
    manifest = {
        "task": TASK_NAMES[task],
        "input_schema": [c.model_dump() for c in job.validation.columns if c.name in inputs],
        "outputs": [{"name": output_name(task), "datatype": "FP32",
                     "shape": [-1, len(classes)] if classes else [-1]}],
        "threshold": report.get("threshold"),
        "classes": classes,
        "metrics": {k: report[k] for k in TASK_REPORT_KEYS[task]},
        "parity": exported["parity"],
        "fused_parity": exported["fused_parity"],
        # "columns": model.onnx takes raw columns (the featurizer fused into the graph); "features": the replica
        # runs the Python featurizer first (image and text inputs)
        "onnx_input": exported.get("onnx_input", "columns"),
        "model": {"config": job.train.model.model_dump(), "input_dim": featurized["input_dim"],
                  "outputs": output_count(task, classes), "layout": state["layout"]},
        "training": {"epochs": len(trained["history"]), "final": trained["final"],
                     "checkpoint": trained["checkpoint_choice"], "stopped_early": trained["stopped_early"],
                     "attempts": trained["attempts"]},
        "data": {"source": job.source.model_dump(), "rows": featurized["rows"],
                 "validate_fingerprint": validated["fingerprint"], "quarantined_rows": validated["quarantined_rows"]},
        "code": {"rayml_version": __version__, "git_commit": _git_commit()},
        "run_dir": str(run_dir),
    }
    version_dir = artifacts.register(job.registry.root, job.registry.model_name, files, manifest, job.storage)
    return {"version_dir": str(version_dir), "model_name": job.registry.model_name,
            "version": store.basename(version_dir)}


def _path(text: str) -> Path | str:
    return text if store.is_remote(text) else Path(text)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


TASK_NAMES = {"binary": "binary_classification", "multiclass": "multiclass_classification",
              "regression": "regression"}
TASK_REPORT_KEYS = {  # the test metrics a registered model's manifest carries
    "binary": ("roc_auc", "pr_auc", "precision", "recall", "f1"),
    "multiclass": ("accuracy", "balanced_accuracy", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}


def _summary(task: str, report: dict[str, Any]) -> str:
    if task == "binary":
        return (f"roc_auc={_fmt(report['roc_auc'])} pr_auc={_fmt(report['pr_auc'])} threshold="
                f"{report['threshold']:.4f} precision={report['precision']:.3f} recall={report['recall']:.3f} "
                f"f1={report['f1']:.3f}")
    if task == "multiclass":
        return (f"accuracy={_fmt(report['accuracy'])} macro_f1={_fmt(report['macro']['f1'])} "
                f"log_loss={_fmt(report['log_loss'])} ({report['rows']} rows)")
    return (f"rmse={_fmt(report['rmse'])} mae={_fmt(report['mae'])} r2={_fmt(report['r2'])} "
            f"(predicting the train mean: rmse={_fmt(report['baseline']['rmse'])})")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
