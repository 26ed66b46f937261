"""Unit tests for rayml.validate: record-level typing, checks and quarantine metadata (no Ray)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from rayml.config import parse
from rayml.errors import ConfigError
from rayml.validate import (
    ERROR,
    RAW,
    SOURCE_FILE,
    SOURCE_ROW,
    ColumnSpec,
    ValidateConfig,
    arrow_type,
    output_schema,
    validate_batch,
)

UTC = dt.timezone.utc


def col(name: str, type_: str, **kw) -> ColumnSpec:
    return ColumnSpec(name=name, type=type_, **kw)


def run(
    raw: pa.Table, columns: list[ColumnSpec], source_file: str = "data.parquet", first_row: int = 0, **kw
):
    out = validate_batch(raw, columns, source_file, first_row, **kw)
    assert out.schema == output_schema(columns)
    assert out.num_rows == raw.num_rows
    return out


def one(values: pa.Array, type_: str, **kw) -> tuple[list, list]:
    """Validate a single column ``x``; return (typed values, errors)."""
    out = run(pa.table({"x": values}), [col("x", type_, **kw)])
    return out.column("x").to_pylist(), out.column(ERROR).to_pylist()


# ---------------------------------------------------------------- typing from native Arrow types


def test_string_from_native_string():
    values, errors = one(pa.array(["a", "", "b"]), "string")
    assert values == ["a", "", "b"]  # the empty string is a value, not a null
    assert errors == [None, None, None]


def test_float_from_native_float_and_int():
    assert one(pa.array([1.5, -2.0], pa.float64()), "float") == ([1.5, -2.0], [None, None])
    assert one(pa.array([1.5], pa.float32()), "float") == ([1.5], [None])
    assert one(pa.array([3, -4], pa.int64()), "float") == ([3.0, -4.0], [None, None])


def test_int_from_native_int_and_integral_float():
    assert one(pa.array([1, -2, 3], pa.int32()), "int") == ([1, -2, 3], [None, None, None])
    values, errors = one(pa.array([2.0, 2.5], pa.float64()), "int")
    assert values == [2, None]
    assert errors[0] is None
    assert errors[1] == "x: got 2.5; expected an integer"


def test_bool_from_native_bool():
    assert one(pa.array([True, False]), "bool") == ([True, False], [None, None])


def test_timestamp_from_native_naive_timestamp_is_utc():
    stamp = dt.datetime(2024, 1, 2, 3, 4, 5)
    values, errors = one(pa.array([stamp], pa.timestamp("s")), "timestamp")
    assert values == [stamp.replace(tzinfo=UTC)]
    assert errors == [None]


def test_timestamp_from_native_zoned_timestamp_keeps_the_instant():
    stamp = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    values, errors = one(pa.array([stamp], pa.timestamp("us", tz="+02:00")), "timestamp")
    assert errors == [None]
    assert values[0] == stamp  # same instant
    assert values[0].utcoffset() == dt.timedelta(0)


def test_wrong_native_types_are_quarantined():
    _, errors = one(pa.array([True]), "float")
    assert errors == ["x: got True; expected a number"]
    _, errors = one(pa.array([dt.datetime(2024, 1, 1)], pa.timestamp("us")), "int")
    assert errors[0].startswith("x: got ") and errors[0].endswith("expected an integer")
    _, errors = one(pa.array([1.5]), "timestamp")
    assert errors == ["x: got 1.5; expected an ISO-8601 timestamp"]


def test_infinite_float_is_not_a_number():
    values, errors = one(pa.array([float("inf")]), "float")
    assert values == [None]
    assert errors == ["x: got inf; expected a number"]


# ---------------------------------------------------------------- typing from text


def test_numbers_from_text():
    assert one(pa.array(["1.5", " -2 ", "1e3"]), "float") == ([1.5, -2.0, 1000.0], [None, None, None])
    assert one(pa.array(["7", "-3"]), "int") == ([7, -3], [None, None])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("YES", True), ("y", True), ("1", True), ("t", True),
     ("false", False), ("No", False), ("n", False), ("0", False), (" F ", False)],
)
def test_bool_from_text(text, expected):
    assert one(pa.array([text]), "bool") == ([expected], [None])


def test_timestamp_from_text_iso8601_with_and_without_offset():
    values, errors = one(
        pa.array(["2024-01-02T03:04:05Z", "2024-01-02T05:04:05+02:00", "2024-01-02 03:04:05", "2024-01-02"]),
        "timestamp",
    )
    assert errors == [None] * 4
    assert values[:3] == [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)] * 3
    assert values[3] == dt.datetime(2024, 1, 2, tzinfo=UTC)


def test_string_from_non_string_source_is_its_text():
    assert one(pa.array([5, 12], pa.int64()), "string") == (["5", "12"], [None, None])


@pytest.mark.parametrize(
    ("type_", "text", "expected"),
    [
        ("float", "abc", "x: got 'abc'; expected a number"),
        ("float", "1,000", "x: got '1,000'; expected a number"),
        ("float", "nan", "x: got 'nan'; expected a number"),
        ("int", "1.5", "x: got '1.5'; expected an integer"),
        ("int", "seven", "x: got 'seven'; expected an integer"),
        ("bool", "maybe", "x: got 'maybe'; expected true or false"),
        ("timestamp", "yesterday", "x: got 'yesterday'; expected an ISO-8601 timestamp"),
        ("timestamp", "2024-13-01", "x: got '2024-13-01'; expected an ISO-8601 timestamp"),
    ],
)
def test_unparseable_text_names_column_value_and_expectation(type_, text, expected):
    values, errors = one(pa.array([text]), type_)
    assert values == [None]
    assert errors == [expected]


# ---------------------------------------------------------------- nulls, bounds, allowed values


@pytest.mark.parametrize("type_", ["string", "float", "int", "bool", "timestamp"])
def test_null_is_bad_unless_nullable(type_):
    target = arrow_type(type_)
    nulls = pa.array([None, None], target)
    values, errors = one(nulls, type_)
    assert values == [None, None]
    assert errors == ["x: null but required; supply a value or declare the column nullable"] * 2
    values, errors = one(nulls, type_, nullable=True)
    assert values == [None, None]
    assert errors == [None, None]


def test_null_text_is_null_not_unparseable():
    _, errors = one(pa.array([None], pa.string()), "float")
    assert errors == ["x: null but required; supply a value or declare the column nullable"]
    assert one(pa.array([None], pa.string()), "float", nullable=True) == ([None], [None])


def test_min_max_are_inclusive():
    values, errors = one(pa.array([0.01, 0.0, 100.0, 100.5]), "float", min=0.01, max=100.0)
    assert values == [0.01, None, 100.0, None]
    assert errors == [
        None,
        "x: got 0.0; below the minimum 0.01",
        None,
        "x: got 100.5; above the maximum 100.0",
    ]


def test_min_max_on_int_from_text():
    values, errors = one(pa.array(["-1", "0", "10", "11"]), "int", min=0, max=10)
    assert values == [None, 0, 10, None]
    assert errors[0] == "x: got '-1'; below the minimum 0.0"
    assert errors[3] == "x: got '11'; above the maximum 10.0"


def test_allowed_values():
    values, errors = one(pa.array(["card", "wire", None]), "string", allowed=["card", "cash"], nullable=True)
    assert values == ["card", None, None]
    assert errors == [None, "x: got 'wire'; not one of the allowed values ['card', 'cash']", None]


# ---------------------------------------------------------------- whole records


COLUMNS = [
    col("id", "int"),
    col("amount", "float", min=0.01),
    col("kind", "string", allowed=["card", "cash"]),
    col("fraud", "bool"),
    col("at", "timestamp", nullable=True),
]


def good_record(i: int) -> dict:
    return {"id": str(i), "amount": "12.5", "kind": "card", "fraud": "false", "at": "2024-01-01T00:00:00Z"}


def test_missing_column_quarantines_every_row():
    raw = pa.table({"id": ["1", "2", "3"], "amount": ["1", "2", "3"], "fraud": ["0", "1", "0"]})
    out = run(raw, [col("id", "int"), col("amount", "float"), col("kind", "string"), col("fraud", "bool")])
    errors = out.column(ERROR).to_pylist()
    assert errors == ["kind: missing column; every record needs it"] * 3
    assert out.column("kind").to_pylist() == [None] * 3
    assert [json.loads(r) for r in out.column(RAW).to_pylist()] == raw.to_pylist()


def test_missing_nullable_column_still_quarantines():
    out = run(pa.table({"a": ["1"]}), [col("a", "int"), col("b", "string", nullable=True)])
    assert out.column(ERROR).to_pylist() == ["b: missing column; every record needs it"]


def test_every_problem_of_a_record_is_listed():
    raw = pa.table({
        "id": ["1", "x"],
        "amount": ["12.5", "-3"],
        "kind": ["card", "wire"],
        "fraud": ["false", "maybe"],
        "at": ["2024-01-01", "soon"],
    })
    out = run(raw, COLUMNS)
    errors = out.column(ERROR).to_pylist()
    assert errors[0] is None
    expected = [
        "id: got 'x'; expected an integer",
        "amount: got '-3'; below the minimum 0.01",
        "kind: got 'wire'; not one of the allowed values ['card', 'cash']",
        "fraud: got 'maybe'; expected true or false",
        "at: got 'soon'; expected an ISO-8601 timestamp",
    ]
    for problem in expected:
        assert problem in errors[1]
    # listed in column order
    positions = [errors[1].index(p) for p in expected]
    assert positions == sorted(positions)


def test_source_positions_use_first_row_offset():
    raw = pa.table({k: [good_record(i)[k] for i in range(4)] for k in good_record(0)})
    out = run(raw, COLUMNS, source_file="s3://bucket/part-7.csv", first_row=1000)
    assert out.column(SOURCE_FILE).to_pylist() == ["s3://bucket/part-7.csv"] * 4
    assert out.column(SOURCE_ROW).to_pylist() == [1000, 1001, 1002, 1003]


def test_raw_is_the_original_record_as_json_and_null_for_valid_rows():
    records = [good_record(0), {**good_record(1), "amount": "oops"}, good_record(2)]
    raw = pa.Table.from_pylist(records)
    out = run(raw, COLUMNS)
    assert out.column(ERROR).to_pylist()[0] is None and out.column(ERROR).to_pylist()[2] is None
    raws = out.column(RAW).to_pylist()
    assert raws[0] is None and raws[2] is None
    assert json.loads(raws[1]) == records[1]


def test_raw_json_of_native_types_round_trips_values():
    raw = pa.table({"id": pa.array([1], pa.int64()), "amount": pa.array([-5.0]), "when": pa.array(
        [dt.datetime(2024, 1, 1)], pa.timestamp("us"))})
    out = run(raw, [col("id", "int"), col("amount", "float", min=0.0)])
    record = json.loads(out.column(RAW)[0].as_py())
    assert record["id"] == 1 and record["amount"] == -5.0
    assert record["when"].startswith("2024-01-01")  # extra source columns are kept in _raw


def test_originals_are_used_for_raw_when_given():
    raw = pa.table({"id": ["1", "bad", "3"]})
    originals = ['{"id": 1}', '{"id": "bad"}', '{"id": 3}']
    out = run(raw, [col("id", "int")], originals=originals)
    assert out.column(RAW).to_pylist() == [None, '{"id": "bad"}', None]


def test_output_is_typed_in_declared_order_without_extra_columns():
    raw = pa.table({"extra": [1, 2], "b": ["x", "y"], "a": ["1", "2"]})
    columns = [col("a", "int"), col("b", "string")]
    out = run(raw, columns)
    assert out.column_names == ["a", "b", ERROR, SOURCE_FILE, SOURCE_ROW, RAW]
    assert out.column("a").to_pylist() == [1, 2]


def test_chunked_input_columns():
    raw = pa.concat_tables([pa.table({"a": ["1", "x"]}), pa.table({"a": ["3"]})])
    out = run(raw, [col("a", "int")], first_row=5)
    assert out.column("a").to_pylist() == [1, None, 3]
    assert out.column(SOURCE_ROW).to_pylist() == [5, 6, 7]
    assert out.column(ERROR).to_pylist()[1] == "a: got 'x'; expected an integer"


@pytest.mark.parametrize(
    "raw",
    [
        pa.table({c.name: pa.array([], pa.string()) for c in COLUMNS}),
        pa.table({"id": pa.array([], pa.int64())}),  # missing columns, no rows
        pa.table({}),
    ],
)
def test_empty_batch_has_the_output_schema(raw):
    out = run(raw, COLUMNS)
    assert out.num_rows == 0


def test_counts_reconcile_on_a_mixed_batch():
    rng = np.random.default_rng(7)
    n = 2000
    amount = rng.choice(["12.5", "-1", "abc", None, "0.01"], size=n, p=[0.6, 0.1, 0.1, 0.1, 0.1])
    kind = rng.choice(["card", "cash", "wire"], size=n, p=[0.5, 0.4, 0.1])
    raw = pa.table({
        "id": [str(i) for i in range(n)],
        "amount": pa.array(list(amount), pa.string()),
        "kind": list(kind),
        "fraud": ["true"] * n,
        "at": [None] * n,
    })
    out = run(raw, COLUMNS, first_row=10)
    expected_bad = int(np.sum(np.isin(amount, ["-1", "abc", None]) | (kind == "wire")))
    errors = np.array(out.column(ERROR).to_pylist(), dtype=object)
    bad = np.array([e is not None for e in errors])
    assert bad.sum() == expected_bad
    assert (~bad).sum() + bad.sum() == n
    raws = out.column(RAW).to_pylist()
    assert all((r is not None) == b for r, b in zip(raws, bad))
    # valid rows carry fully typed values
    valid = out.filter(pa.array(~bad))
    for name in ["id", "amount", "kind", "fraud"]:
        assert valid.column(name).null_count == 0
    assert sorted(out.column(SOURCE_ROW).to_pylist()) == list(range(10, 10 + n))


# ---------------------------------------------------------------- config rejections


def _validate_config_problems(columns: list[dict], **extra) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(ValidateConfig, {"columns": columns, **extra}, "job.yaml")
    return info.value.problems


def test_min_greater_than_max_is_rejected():
    (problem,) = _validate_config_problems([{"name": "a", "type": "float", "min": 5, "max": 1}])
    assert problem.startswith("columns.0")
    assert "min 5.0 is greater than max 1.0; swap them" in problem


def test_allowed_on_float_column_is_rejected():
    (problem,) = _validate_config_problems(
        [{"name": "a", "type": "string"}, {"name": "b", "type": "float", "allowed": ["1"]}]
    )
    assert problem.startswith("columns.1")
    assert "allowed applies to string columns, not float; remove it" in problem


def test_min_on_string_column_is_rejected():
    (problem,) = _validate_config_problems([{"name": "a", "type": "string", "min": 0}])
    assert "min/max apply to float or int columns, not string" in problem


def test_duplicate_column_names_are_rejected():
    (problem,) = _validate_config_problems(
        [{"name": "a", "type": "string"}, {"name": "a", "type": "int"}]
    )
    assert problem.startswith("columns")
    assert "column 'a' is declared twice; keep one" in problem


def test_all_column_problems_reported_at_once():
    problems = _validate_config_problems(
        [
            {"name": "a", "type": "decimal"},
            {"name": "", "type": "int"},
            {"name": "c", "type": "int", "nullabel": True},
        ],
        max_bad_fraction=1.5,
    )
    paths = sorted(p.split(":", 1)[0] for p in problems)
    assert paths == ["columns.0.type", "columns.1.name", "columns.2.nullabel", "max_bad_fraction"]
    unknown = next(p for p in problems if p.startswith("columns.2.nullabel"))
    assert "known keys here: allowed, check_image, max, min, name, nullable, type" in unknown


def test_empty_columns_rejected():
    (problem,) = _validate_config_problems([])
    assert problem.startswith("columns:")


def test_a_valid_config_parses():
    cfg = parse(ValidateConfig, {"columns": [{"name": "a", "type": "float", "min": 0, "max": 1}]})
    assert cfg.columns[0].min == 0.0 and cfg.max_bad_fraction == 0.05


# ---------------------------------------------------------------- regressions (bugs found and fixed)


def test_int_column_keeps_int64_values_above_2_pow_53():
    big = 2**53 + 1
    assert one(pa.array([big], pa.int64()), "int") == ([big], [None])
    assert one(pa.array([str(big)]), "int") == ([big], [None])


@pytest.mark.parametrize("values", [pa.array(["1e30"]), pa.array([2**64 - 1], pa.uint64())])
def test_int_out_of_int64_range_is_quarantined_not_raised(values):
    typed, errors = one(values, "int")
    assert typed == [None]
    assert errors[0] is not None and "expected an integer" in errors[0]


def test_string_column_from_nullable_int_source_keeps_integer_text():
    assert one(pa.array([5, None], pa.int64()), "string", nullable=True) == (["5", None], [None, None])


def test_bool_column_from_nullable_int_source():
    assert one(pa.array([1, 0], pa.int64()), "bool") == ([True, False], [None, None])  # passes today
    assert one(pa.array([1, 0, None], pa.int64()), "bool", nullable=True) == (
        [True, False, None], [None, None, None])


def test_raw_is_strict_json_for_nan_and_inf():
    out = run(pa.table({"x": [float("nan"), float("inf")]}), [col("x", "float")])
    raws = out.column(RAW).to_pylist()
    assert all(r is not None for r in raws)

    def reject(token: str):
        raise ValueError(f"not JSON: {token}")

    for r in raws:
        json.loads(r, parse_constant=reject)
