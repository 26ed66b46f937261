"""Unit tests for rayml.config: YAML loading, key=value overrides and collect-all ConfigError (no Ray)."""

from __future__ import annotations

import pickle

import pytest
from pydantic import Field, ValidationError

from rayml.config import StrictModel, apply_overrides, load_yaml, parse
from rayml.errors import ConfigError, RaymlError


class Train(StrictModel):
    lr: float = Field(0.001, gt=0.0, description="learning rate")
    epochs: int = Field(1, ge=1, description="passes over the data")


class Item(StrictModel):
    name: str


class Job(StrictModel):
    name: str = Field(min_length=1, description="job name")
    train: Train = Train()
    items: list[Item] = []
    maybe_items: list[Item] | None = None
    optional_train: Train | None = None


# ---------------------------------------------------------------- load_yaml


def test_load_yaml_reads_a_mapping(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("# a comment\nname: demo\ntrain:\n  lr: 0.01\n  epochs: 3\n")
    assert load_yaml(path) == {"name": "demo", "train": {"lr": 0.01, "epochs": 3}}


def test_load_yaml_empty_file_is_an_empty_mapping(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_yaml(path) == {}


def test_load_yaml_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_yaml(missing)
    err = info.value
    assert isinstance(err, RaymlError)
    assert len(err.problems) == 1
    assert str(missing) in str(err)
    assert "does not exist" in str(err)


def test_load_yaml_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path)


def test_load_yaml_bad_yaml_is_a_config_error_with_the_source(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [0.1, 0.2\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.source == str(path)
    assert "not valid YAML" in str(info.value)
    assert info.value.__cause__ is not None  # carries the parser's error


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")]
)
def test_load_yaml_non_mapping_top_level(tmp_path, text, kind):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert "must be a mapping" in str(info.value)
    assert kind in str(info.value)
    assert info.value.source == str(path)


# ---------------------------------------------------------------- apply_overrides


def test_overrides_set_nested_keys_and_create_sections():
    data = {"name": "demo", "train": {"lr": 0.1, "epochs": 1}}
    out = apply_overrides(data, ["train.epochs=2", "new.deep.key=x", "name=other"])
    assert out == {"name": "other", "train": {"lr": 0.1, "epochs": 2}, "new": {"deep": {"key": "x"}}}


def test_overrides_do_not_mutate_the_input():
    data = {"train": {"lr": 0.1, "tags": [1]}}
    out = apply_overrides(data, ["train.lr=0.5"])
    out["train"]["tags"].append(2)
    assert data == {"train": {"lr": 0.1, "tags": [1]}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2", 2),
        ("-7", -7),
        ("0.5", 0.5),
        ("1.5e-3", 0.0015),
        ("true", True),
        ("false", False),
        ("[1,2]", [1, 2]),
        ("{a: 1}", {"a": 1}),
        ("hello", "hello"),
        ("null", None),
        ("", ""),
        ("a=b", "a=b"),  # only the first '=' separates key from value
        ("[1,", "[1,"),  # not parseable as YAML: kept as the literal text
    ],
)
def test_override_values_are_parsed_as_yaml_scalars(raw, expected):
    out = apply_overrides({}, [f"x={raw}"])
    assert out["x"] == expected
    assert type(out["x"]) is type(expected)


def test_override_1e_minus_3_gives_a_float_once_parsed():
    """What a user relies on: `train.lr=1e-3` ends up as the float 0.001 in the typed config."""
    data = apply_overrides({"name": "demo"}, ["train.lr=1e-3"])
    job = parse(Job, data)
    assert job.train.lr == pytest.approx(0.001)
    assert isinstance(job.train.lr, float)


def test_override_1e_minus_3_is_a_float_in_the_dict():
    assert apply_overrides({}, ["train.lr=1e-3"]) == {"train": {"lr": 0.001}}


def test_bad_override_syntax_reports_every_problem_at_once():
    overrides = ["noequals", "=3", "a..b=1", ".a=1", "train.lr.x=3", "train.epochs=2"]
    with pytest.raises(ConfigError) as info:
        apply_overrides({"train": {"lr": 0.1}}, overrides, source="command line")
    problems = info.value.problems
    assert len(problems) == 5
    for bad in ["noequals", "=3", "a..b=1", ".a=1"]:
        assert any(repr(bad) in p and "key=value" in p and "train.epochs=2" in p for p in problems), bad
    assert any("'train.lr.x=3'" in p and "'lr' is a value, not a section" in p for p in problems)
    assert str(info.value).startswith("command line: 5 problem(s)")


# ---------------------------------------------------------------- parse


def test_parse_returns_a_frozen_typed_model():
    job = parse(Job, {"name": "demo", "train": {"lr": "0.5", "epochs": 3}})
    assert job.train.lr == 0.5 and job.train.epochs == 3
    with pytest.raises(ValidationError):
        job.name = "other"


def test_parse_collects_all_problems_with_dotted_paths():
    data = {"train": {"lr": "abc", "epoch": 2}, "nam": "typo"}
    with pytest.raises(ConfigError) as info:
        parse(Job, data, source="job.yaml")
    err = info.value
    assert err.source == "job.yaml"
    assert len(err.problems) == 4
    by_path = {p.split(":", 1)[0]: p for p in err.problems}
    assert set(by_path) == {"name", "train.lr", "train.epoch", "nam"}

    assert "required but missing" in by_path["name"]
    assert "Add name: <value>" in by_path["name"]
    assert "job name" in by_path["name"]  # the field's description

    assert "got 'abc'" in by_path["train.lr"]
    assert "learning rate" in by_path["train.lr"]
    assert "0.001" in by_path["train.lr"].split("got 'abc'", 1)[1]  # suggests the default as the fix

    assert "unknown key" in by_path["train.epoch"]
    assert "known keys here: epochs, lr" in by_path["train.epoch"]
    assert "known keys here: items, maybe_items, name, optional_train, train" in by_path["nam"]

    text = str(err)
    assert text.splitlines()[0] == "job.yaml: 4 problem(s)"
    assert all(line.startswith("  - ") for line in text.splitlines()[1:])


def test_parse_reports_bound_violations_with_the_value():
    with pytest.raises(ConfigError) as info:
        parse(Job, {"name": "x", "train": {"lr": -1, "epochs": 0}})
    problems = info.value.problems
    assert len(problems) == 2
    lr = next(p for p in problems if p.startswith("train.lr:"))
    epochs = next(p for p in problems if p.startswith("train.epochs:"))
    assert "got -1" in lr and "greater than 0" in lr
    assert "got 0" in epochs and "greater than or equal to 1" in epochs


def test_unknown_key_inside_a_list_of_models_lists_known_keys():
    with pytest.raises(ConfigError) as info:
        parse(Job, {"name": "x", "items": [{"name": "a"}, {"name": "b", "colour": 1}]})
    (problem,) = info.value.problems
    assert problem.startswith("items.1.colour: unknown key")
    assert "known keys here: name" in problem


def test_unknown_key_inside_an_optional_model_lists_known_keys():
    with pytest.raises(ConfigError) as info:
        parse(Job, {"name": "x", "optional_train": {"lrr": 1}})
    (problem,) = info.value.problems
    assert problem.startswith("optional_train.lrr: unknown key")
    assert "known keys here: epochs, lr" in problem


def test_unknown_key_inside_an_optional_list_of_models_lists_known_keys():
    with pytest.raises(ConfigError) as info:
        parse(Job, {"name": "x", "maybe_items": [{"name": "b", "colour": 1}]})
    (problem,) = info.value.problems
    assert problem.startswith("maybe_items.0.colour: unknown key")
    assert "known keys here: name" in problem


def test_a_scalar_where_a_section_belongs():
    with pytest.raises(ConfigError) as info:
        parse(Job, {"name": "x", "train": 3})
    (problem,) = info.value.problems
    assert problem.startswith("train: got 3")


def test_non_mapping_top_level_is_reported_at_top_level():
    with pytest.raises(ConfigError) as info:
        parse(Job, [1, 2])  # type: ignore[arg-type]
    (problem,) = info.value.problems
    assert problem.startswith("(top level): got [1, 2]")


def test_config_error_pickles_with_its_problems():
    with pytest.raises(ConfigError) as info:
        parse(Job, {"nam": 1}, source="job.yaml")
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, ConfigError)
    assert copy.problems == info.value.problems
    assert copy.source == "job.yaml"
    assert str(copy) == str(info.value)


def test_yaml_file_plus_overrides_end_to_end(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: demo\ntrain:\n  lr: 0.1\n")
    job = parse(Job, apply_overrides(load_yaml(path), ["train.epochs=4", "items=[{name: a}]"]), str(path))
    assert job.train == Train(lr=0.1, epochs=4)
    assert job.items == [Item(name="a")]


def test_loading_every_shipped_job_and_the_cli_imports_neither_torch_nor_ray_data():
    """`rayml ingest`, `rayml check` and the serve replicas load jobs on their start-up path: torch (~1 s) and
    Ray Data belong to the stages that need them, not to reading a config."""
    import subprocess
    import sys
    from pathlib import Path

    jobs = sorted(str(p) for p in (Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))
    code = ("import sys, rayml.cli, rayml.ingest, rayml.serve.deployment, rayml.tune.search\n"
            "from rayml import pipeline\n"
            f"for path in {jobs!r}:\n"
            "    pipeline.load_job(path, [])\n"
            "print(sorted(m for m in ('torch', 'ray.data', 'ray.train') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert len(jobs) >= 8
