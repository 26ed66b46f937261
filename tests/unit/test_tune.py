"""The tune section without Ray: parsing the search space and its errors, seeded sampling, checking every
sampled config against the train config, the results table and files, and the best job file."""

from __future__ import annotations

import csv
import json

import pytest

from rayml import cli, pipeline
from rayml.errors import ConfigError
from rayml.tune import results, search, space
from tests.conftest import REPO

JOB = REPO / "jobs" / "fraud_tune.yaml"


def load(*overrides: str) -> pipeline.JobConfig:
    return pipeline.load_job(JOB, list(overrides))


def problems_of(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(*overrides)
    return info.value.problems


# --- parsing the space ---------------------------------------------------------------------------------------


def test_the_shipped_tune_job_parses_and_passes_its_checks():
    job = load()
    assert job.tune is not None and job.tune.metric == "val_pr_auc"
    assert set(job.tune.space) == {"train.lr", "train.weight_decay", "train.batch_size", "train.model.dropout",
                                   "train.model.hidden"}
    assert job.tune.space["train.lr"].kind == "loguniform"
    assert space.check(job, space.sample(job.tune.space, job.tune.num_samples, job.tune.seed)) == []


def test_rayml_run_jobs_have_no_tune_section_by_default():
    assert pipeline.load_job(REPO / "jobs" / "fraud_detection.yaml").tune is None


@pytest.mark.parametrize("distribution, expected", [
    ("{uniform: [0.1, 0.2], choice: [1]}", "tune.space.train.lr: give exactly one distribution, got 2"),
    ("{}", "give exactly one distribution, got 0"),
    ("{uniform: [0.5, 0.1]}", "uniform needs [low, high] with low < high, got [0.5, 0.1]"),
    ("{loguniform: [0, 0.1]}", "loguniform needs positive bounds"),
    ("{choice: []}", "tune.space.train.lr.choice: got []; list should have at least 1 item"),
    ("{loguniformm: [0.001, 0.1]}", "tune.space.train.lr.loguniformm: unknown key"),
    ("{randint: [1.5, 4]}", "tune.space.train.lr.randint.0: got 1.5"),
])
def test_a_malformed_distribution_is_named_with_its_path(distribution, expected):
    problems = problems_of(f"tune.space.train.lr={distribution}")
    assert any(expected in problem for problem in problems), problems


def test_unknown_and_fixed_keys_say_what_to_do():
    (problem,) = problems_of("tune.space.train.bogus={uniform: [0, 1]}")
    assert "train.bogus: unknown key" in problem and "train.lr" in problem and "train.model.<setting>" in problem
    (problem,) = problems_of("tune.space.train.model.widths={choice: [[8]]}")
    assert "train.model.widths: unknown key" in problem and "train.model.hidden" in problem
    (problem,) = problems_of("tune.space.train.epochs={randint: [1, 3]}")
    assert "train.epochs: cannot be searched" in problem and "set train.epochs" in problem
    (problem,) = problems_of("tune.space.train.num_workers={choice: [1, 2]}")
    assert "tune.num_workers" in problem
    (problem,) = problems_of("tune.space.lr={uniform: [0.1, 0.2]}")
    assert "lr: not a train setting; keys look like train.lr" in problem
    (problem,) = problems_of("tune.bogus=1")
    assert "tune.bogus: unknown key" in problem and "num_samples" in problem
    (problem,) = problems_of("tune.metric=val_f1")
    assert "tune.metric" in problem and "val_pr_auc" in problem


def test_an_override_replaces_a_dotted_key_and_yaml_exponents_are_numbers():
    job = load("tune.space.train.lr.loguniform=[0.001, 0.01]", "tune.space.train.batch_size={choice: [1e3, 64]}")
    assert job.tune.space["train.lr"].loguniform == (0.001, 0.01)
    assert job.tune.space["train.batch_size"].choice == [1000.0, 64]
    assert len(job.tune.space) == 5


# --- sampling ------------------------------------------------------------------------------------------------


def test_sampling_is_seeded_bounded_and_covers_every_kind():
    job = load("tune.space={train.lr: {loguniform: [1.0e-4, 1.0e-2]}, train.model.dropout: {uniform: [0.0, 0.3]}, "
               "train.batch_size: {choice: [64, 128]}, train.model.factors: {randint: [2, 4]}, "
               "train.model.hidden: {choice: [[8], [16, 8]]}}")
    first = space.sample(job.tune.space, 200, seed=7)
    assert first == space.sample(job.tune.space, 200, seed=7)
    assert first != space.sample(job.tune.space, 200, seed=8)
    assert all(1e-4 <= c["train.lr"] <= 1e-2 and 0.0 <= c["train.model.dropout"] <= 0.3 for c in first)
    assert {c["train.batch_size"] for c in first} == {64, 128}
    assert {c["train.model.factors"] for c in first} == {2, 3, 4}  # randint includes both bounds
    assert {tuple(c["train.model.hidden"]) for c in first} == {(8,), (16, 8)}
    assert all(c["train.lr"] == float(f"{c['train.lr']:.4g}") for c in first)  # 4 significant digits
    lows = sum(c["train.lr"] < 1e-3 for c in first)
    assert 70 <= lows <= 130  # log-uniform: half the draws below the geometric middle


def test_trial_train_sets_params_and_the_tune_sections_resources():
    job = load("tune.num_workers=2", "tune.cpus_per_worker=0.5")
    data = space.trial_train(job.train.model_dump(mode="json"), {"train.lr": 0.01, "train.model.hidden": [8]},
                             job.tune, "val_loss")
    assert data["lr"] == 0.01 and data["model"]["hidden"] == [8] and data["model"]["dropout"] == 0.1
    assert (data["num_workers"], data["cpus_per_worker"], data["checkpoint_metric"]) == (2, 0.5, "val_loss")
    assert job.train.lr == 0.003  # the job itself is untouched


# --- checking configs against the job ------------------------------------------------------------------------


def check(*overrides: str) -> list[str]:
    job = load(*overrides)
    return space.check(job, space.sample(job.tune.space, job.tune.num_samples, job.tune.seed))


def test_every_edge_of_the_space_is_checked_as_a_train_config():
    (problem,) = check("tune.space.train.model.dropout={uniform: [0.0, 1.5]}")
    assert problem.startswith("tune.space.train.model.dropout: the value 1.5 makes an invalid train config")
    assert "train.model.dropout: got 1.5" in problem and "narrow or change tune.space.train.model.dropout" in problem
    (problem,) = check("tune.space.train.warmup_epochs={uniform: [0, 8]}")
    assert "the value 8.0" in problem and "warmup_epochs (8) must be below epochs (6)" in problem
    (problem,) = check("tune.space.train.model.hidden={choice: [[64], []]}")
    assert "the value []" in problem and "an mlp needs at least one hidden layer" in problem
    (problem,) = check("tune.space.train.model.kind={choice: [mlp, cnn]}")
    assert "the value 'cnn'" in problem and "a cnn needs an image input" in problem


def test_a_fractional_distribution_over_an_integer_setting_is_refused():
    (problem,) = check("tune.space.train.batch_size={uniform: [64, 512]}")
    assert "train.batch_size takes integers" in problem and "{randint: [64, 512]}" in problem


def test_the_metric_and_asha_rungs_are_checked_against_the_job():
    (problem,) = check("tune.metric=val_rmse")
    assert "'val_rmse' is not reported for a binary job" in problem and "val_pr_auc" in problem
    (problem,) = check("tune.grace_period=6")
    assert "tune.grace_period: 6 epoch(s) is not below train.epochs (6)" in problem


def test_a_sampled_config_that_breaks_a_cross_setting_rule_is_caught():
    job = load("tune.space={train.warmup_epochs: {choice: [0.5]}, train.lr: {choice: [0.01]}}")
    problems = space.check(job, [{"train.warmup_epochs": 7.0, "train.lr": 0.01}])
    assert problems and problems[0].startswith("tune: sampled config 1 (train.warmup_epochs=7.0, train.lr=0.01)")
    assert "narrow the space" in problems[0]


def test_rayml_tune_on_a_job_without_a_tune_section_is_a_config_error(capsys):
    assert cli.main(["tune", str(REPO / "jobs" / "fraud_detection.yaml")]) == 2
    err = capsys.readouterr().err
    assert "this job has no tune section" in err and "jobs/fraud_tune.yaml" in err


def test_rayml_check_runs_the_tune_checks_and_refuses_an_s3_run_root(capsys):
    assert cli.main(["check", str(JOB)]) == 0
    assert "tune: 8 samples checked" in capsys.readouterr().out
    assert cli.main(["check", str(JOB), "tune.grace_period=6"]) == 2
    assert "tune.grace_period: 6 epoch(s) is not below train.epochs" in capsys.readouterr().err
    (problem,) = check("run.root=s3://bucket/runs", "tracking.enabled=false")
    assert problem.startswith("run.root: `rayml tune` keeps its trials in a local or shared directory")


# --- the results table ---------------------------------------------------------------------------------------


def epochs(*values: float, checkpoint: bool = True) -> list[dict]:
    return [{"epoch": i + 1, "val_loss": v, **({"checkpoint_path": f"/c/{i}"} if checkpoint else {})}
            for i, v in enumerate(values)]


RECORDS = [
    results.TrialRecord("t1", {"train.lr": 0.01}, epochs(0.5, 0.4, 0.45)),
    results.TrialRecord("t2", {"train.lr": 1e-6}, epochs(0.9)),
    results.TrialRecord("t3", {"train.lr": 0.003}, epochs(0.6, 0.35), stopped_early=True),
    results.TrialRecord("t4", {"train.lr": 0.1}, [], error="RayTaskError: boom\nValueError: bad things"),
    results.TrialRecord("t5", {"train.lr": 0.2}, epochs(float("nan"))),
]


def test_rows_rank_trials_and_say_how_each_ended():
    table = results.rows(RECORDS, "val_loss", "min", max_epochs=3)
    assert [row["trial_id"] for row in table] == ["t3", "t1", "t2", "t4", "t5"]
    by_id = {row["trial_id"]: row for row in table}
    assert (by_id["t1"]["value"], by_id["t1"]["best_epoch"], by_id["t1"]["status"]) == (0.4, 2, "completed")
    assert by_id["t2"]["status"] == "stopped by ASHA" and by_id["t2"]["stopped_by_asha"]
    assert by_id["t3"]["status"] == "early stopping" and not by_id["t3"]["stopped_by_asha"]
    assert by_id["t4"]["status"] == "error" and by_id["t4"]["error"] == "ValueError: bad things"
    assert by_id["t5"]["value"] is None and by_id["t5"]["epochs"] == 1
    assert results.best(table)["trial_id"] == "t3"
    assert results.rows(RECORDS[:2], "val_loss", "max", 3)[0]["trial_id"] == "t2"


def test_ties_go_to_the_later_epoch_and_no_result_means_no_best():
    (row,) = results.rows([results.TrialRecord("t", {}, epochs(0.3, 0.3, 0.5))], "val_loss", "min", 3)
    assert row["best_epoch"] == 2
    assert results.best(results.rows([RECORDS[3]], "val_loss", "min", 3)) is None


def test_the_table_prints_and_saves_every_trial(tmp_path):
    table = results.rows(RECORDS, "val_loss", "min", max_epochs=3)
    text = results.format_table(table, "val_loss")
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["trial", "val_loss"] and len(lines) == 6
    assert "t3" in lines[1] and "0.3500" in lines[1] and "lr=0.003" in lines[1]
    assert "stopped by ASHA" in text and "error: ValueError: bad things" in text
    paths = results.write(table, tmp_path, metric="val_loss", mode="min", max_epochs=3)
    with open(paths["csv"]) as fh:
        saved = list(csv.DictReader(fh))
    assert [row["trial_id"] for row in saved] == ["t3", "t1", "t2", "t4", "t5"]
    assert saved[0]["train.lr"] == "0.003" and saved[0]["val_loss"] == "0.35" and saved[2]["stopped_by_asha"] == "True"
    data = json.loads(paths["json"].read_text())
    assert data["best_trial"] == "t3" and data["mode"] == "min" and len(data["trials"]) == 5


# --- the best job file and resources -------------------------------------------------------------------------


def test_the_best_job_file_is_a_job_rayml_run_accepts(tmp_path):
    job = load("run.name=search", "tune.metric=val_loss")
    params = {"train.lr": 0.004, "train.model.hidden": [16], "train.batch_size": 128}
    data = search.best_job_data(job, params, "val_loss")
    best = {"trial_id": "abc_00001", "value": 0.2, "best_epoch": 3, "params": params}
    path = search.write_best_job(data, tmp_path / "best_job.yaml", best, "val_loss", 4)
    assert path.read_text().startswith("# The best of 4 trial(s) of `rayml tune`: trial abc_00001")
    rerun = pipeline.load_job(path)
    assert rerun.tune is None and rerun.run.name is None and rerun.name == job.name
    assert (rerun.train.lr, rerun.train.model.hidden, rerun.train.batch_size) == (0.004, [16], 128)
    assert (rerun.train.num_workers, rerun.train.checkpoint_metric) == (1, "val_loss")
    assert rerun.train.class_weight == "sqrt" and rerun.validation == job.validation


@pytest.mark.parametrize("cpus, gpus, workers, per_worker, gpu, expected", [
    (4, 0, 1, 1.0, False, 2),  # one CPU kept free; each trial needs 1 + a driver's sliver
    (2, 0, 1, 1.0, False, 1),
    (16, 0, 2, 1.0, False, 7),
    (16, 2, 1, 1.0, True, 2),  # GPUs limit
])
def test_default_concurrency_fits_the_cluster(cpus, gpus, workers, per_worker, gpu, expected):
    assert search.default_concurrency(cpus, gpus, workers, per_worker, gpu) == expected


def write_checkpoint(directory, history: list[dict], *, complete: bool = True) -> str:
    directory.mkdir(parents=True)
    (directory / "model.pt").write_bytes(b"weights")
    if complete:
        (directory / "state.json").write_text(json.dumps({"epoch": len(history), "global_step": 10 * len(history),
                                                          "history": history, "attempts": 1}))
    return str(directory)


def test_the_best_trial_becomes_a_train_stage_result_from_its_best_complete_checkpoint(tmp_path):
    history = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.3}, {"epoch": 3, "val_loss": 0.4}]
    paths = [write_checkpoint(tmp_path / f"c{i}", history[:i + 1]) for i in range(2)]
    paths.append(write_checkpoint(tmp_path / "c2", history, complete=False))  # half-copied when it was stopped
    record = results.TrialRecord("t1", {"train.lr": 0.01},
                                 [{**m, "checkpoint_path": p} for m, p in zip(history, paths, strict=True)])
    job = load("tune.metric=val_loss")
    data = space.trial_train(job.train.model_dump(mode="json"), record.params, job.tune, "val_loss")
    featurized = {"task": "binary", "label_counts": {"0": 900, "1": 100}, "fingerprint": "f"}
    trained = search._trained(featurized, record, "val_loss", data)
    assert trained["checkpoint"] == paths[1] and trained["last_checkpoint"] == paths[1]
    assert trained["checkpoint_choice"]["epoch"] == 2 and trained["checkpoint_choice"]["value"] == 0.3
    assert trained["history"] == history[:2] and trained["final"] == history[1]
    assert trained["pos_weight"] == pytest.approx(3.0)  # class_weight sqrt: sqrt(900 / 100)
    assert {"fingerprint", "stopped_early", "attempts"} <= set(trained)


def test_rayml_tune_prints_the_table_and_where_the_model_went(monkeypatch, capsys):
    table = results.rows(RECORDS[:3], "val_loss", "min", max_epochs=3)
    outcome = {"rows": table, "best": table[0], "metric": "val_loss", "results_csv": "runs/x/tune/results.csv",
               "results_json": "runs/x/tune/results.json", "best_job": "runs/x/tune/best_job.yaml",
               "registered": {"version_dir": "registry/fraud/3"}}
    monkeypatch.setattr(search, "run", lambda job: outcome)
    assert cli.main(["tune", str(JOB)]) == 0
    out = capsys.readouterr().out
    assert results.format_table(table, "val_loss") in out
    assert "best trial t3: val_loss=0.3500 (lr=0.003)" in out and "model registered at registry/fraud/3" in out
