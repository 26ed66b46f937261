"""Unit tests for rayml.features.timestamp: parts, time zones across DST, text, nulls (no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from rayml.features import registry
from rayml.features.base import FeatureInputError
from rayml.features.timestamp import TimestampParts

ALL = ["hour", "minute", "weekday", "day", "month"]


def state_of(**kw):
    featurizer = TimestampParts(column="t", **kw)
    assert not featurizer.needs_fit()
    return featurizer.finalize(featurizer.merge(featurizer.partial_fit({"t": []}), {}))


def utc(*texts: str) -> pa.Array:
    return pa.array(pd.to_datetime(list(texts), utc=True), pa.timestamp("us", tz="UTC"))


def test_parts_in_utc_match_pandas():
    rng = np.random.default_rng(0)
    stamps = pd.to_datetime(rng.integers(0, 2_000_000_000, 500), unit="s", utc=True)
    out = registry.transform(state_of(parts=ALL), pa.table({"t": pa.array(stamps)}))
    np.testing.assert_array_equal(out["t_hour"], stamps.hour)
    np.testing.assert_array_equal(out["t_minute"], stamps.minute)
    np.testing.assert_array_equal(out["t_weekday"], stamps.weekday)  # Monday = 0
    np.testing.assert_array_equal(out["t_day"], stamps.day)
    np.testing.assert_array_equal(out["t_month"], stamps.month)
    assert out["t_missing"].sum() == 0


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"])
def test_local_parts_across_daylight_saving_changes_match_pandas(zone):
    # every 20 minutes through both 2024 DST changes of the northern and southern hemispheres
    windows = [("2024-03-09", "2024-03-12"), ("2024-03-29", "2024-04-08"), ("2024-10-04", "2024-10-08"),
               ("2024-10-26", "2024-11-05")]
    stamps = pd.DatetimeIndex(np.concatenate([
        pd.date_range(a, b, freq="20min").to_numpy() for a, b in windows
    ])).tz_localize("UTC")
    out = registry.transform(state_of(parts=ALL, timezone=zone), pa.table({"t": pa.array(stamps)}))
    local = stamps.tz_convert(zone)
    for part, expected in (("hour", local.hour), ("minute", local.minute), ("weekday", local.weekday),
                           ("day", local.day), ("month", local.month)):
        np.testing.assert_array_equal(out[f"t_{part}"], expected, err_msg=part)


def test_new_york_spring_forward_and_fall_back_hours():
    state = state_of(parts=["hour"], timezone="America/New_York")
    spring = utc("2024-03-10T06:30:00Z", "2024-03-10T07:30:00Z")  # 01:30 EST, then 03:30 EDT
    fall = utc("2024-11-03T05:30:00Z", "2024-11-03T06:30:00Z")  # 01:30 EDT, then 01:30 EST
    assert registry.transform(state, pa.table({"t": spring}))["t_hour"].tolist() == [1.0, 3.0]
    assert registry.transform(state, pa.table({"t": fall}))["t_hour"].tolist() == [1.0, 1.0]


def test_naive_timestamps_are_in_assume_timezone():
    naive = pa.array([pd.Timestamp("2024-07-01 12:00")], pa.timestamp("us"))
    assert registry.transform(state_of(parts=["hour"]), pa.table({"t": naive}))["t_hour"].tolist() == [12.0]
    berlin = state_of(parts=["hour"], assume_timezone="Europe/Berlin")  # 12:00 CEST is 10:00 UTC
    assert registry.transform(berlin, pa.table({"t": naive}))["t_hour"].tolist() == [10.0]
    to_tokyo = state_of(parts=["hour"], assume_timezone="Europe/Berlin", timezone="Asia/Tokyo")
    assert registry.transform(to_tokyo, pa.table({"t": naive}))["t_hour"].tolist() == [19.0]


def test_iso_text_with_and_without_offsets_and_unparsable_rows():
    state = state_of(parts=["hour", "day"])
    text = ["2024-03-10T06:30:00Z", "2024-03-10T06:30:00+02:00", "2024-03-10 06:30:00", None, "yesterday"]
    applied = registry.apply(state, pa.table({"t": text}))
    assert applied.outputs["t_hour"].tolist() == [6.0, 4.0, 6.0, 0.0, 0.0]
    assert applied.outputs["t_missing"].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert applied.problems == {4: "t: got 'yesterday'; expected an ISO-8601 timestamp"}
    with pytest.raises(FeatureInputError, match="row 4: t: got 'yesterday'"):
        registry.transform(state, pa.table({"t": text}))
    uniform = registry.apply(state, pa.table({"t": ["2024-01-31T23:00:00+00:00", None]}))
    assert uniform.problems == {} and uniform.outputs["t_day"].tolist() == [31.0, 0.0]


def test_cyclical_encoding_puts_23h_next_to_0h():
    state = state_of(parts=["hour", "month"], encoding="cyclical", indicator=False)
    out = registry.transform(state, pa.table({"t": utc("2024-01-01T00:00:00Z", "2024-01-01T23:00:00Z",
                                                        "2024-07-01T06:00:00Z")}))
    assert sorted(out) == ["t_hour_cos", "t_hour_sin", "t_month_cos", "t_month_sin"]
    np.testing.assert_allclose(out["t_hour_sin"], np.sin(2 * np.pi * np.array([0, 23, 6]) / 24), atol=1e-12)
    np.testing.assert_allclose(out["t_hour_cos"], np.cos(2 * np.pi * np.array([0, 23, 6]) / 24), atol=1e-12)
    np.testing.assert_allclose(out["t_month_cos"], np.cos(2 * np.pi * np.array([0, 0, 6]) / 12), atol=1e-12)
    first, last = np.array([out["t_hour_sin"][:2], out["t_hour_cos"][:2]]).T
    assert np.linalg.norm(first - last) < 0.3  # neighbours on the circle


@pytest.mark.parametrize("encoding", ["value", "cyclical"])
def test_all_null_column_is_zero_with_indicator(encoding):
    state = state_of(parts=["hour", "weekday"], encoding=encoding)
    for column in (pa.nulls(3), pa.nulls(3, pa.timestamp("us", tz="UTC")), pa.nulls(3, pa.string())):
        out = registry.transform(state, pa.table({"t": column}))
        assert out.pop("t_missing").tolist() == [1.0] * 3
        assert all(values.tolist() == [0.0] * 3 for values in out.values())


def test_output_names_and_spec_agree_with_outputs():
    featurizer = TimestampParts(column="t", name="when", parts=["weekday", "hour"], encoding="cyclical")
    state = featurizer.finalize({})
    names = ["when_weekday_sin", "when_weekday_cos", "when_hour_sin", "when_hour_cos", "when_missing"]
    assert featurizer.output_names() == names
    assert [s.name for s in registry.output_spec(state)] == names
    assert list(registry.transform(state, pa.table({"t": utc("2024-01-01T00:00:00Z")}))) == names


def test_config_errors_name_the_problem():
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        TimestampParts(column="t", timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="repeat"):
        TimestampParts(column="t", parts=["hour", "hour"])
    with pytest.raises(FeatureInputError, match="holds double, not timestamps"):
        registry.transform(state_of(), pa.table({"t": [1.5]}))


def test_json_round_trip():
    state = state_of(parts=ALL, encoding="cyclical", timezone="Europe/Berlin")
    again = registry.loads(registry.dumps(state))
    batch = pa.table({"t": utc("2024-03-31T00:30:00Z", "2024-03-31T01:30:00Z")})
    for name, values in registry.transform(state, batch).items():
        np.testing.assert_array_equal(registry.transform(again, batch)[name], values)
