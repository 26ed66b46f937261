"""Timestamp parts (hour, minute, weekday, day of month, month) as numbers or as points on a circle.

Time zones are explicit. Parts are read on the wall clock of ``timezone`` (an IANA name, UTC by default), so
``timezone: America/New_York`` gives the local hour, across daylight-saving changes. A timestamp without a
zone (a naive Arrow timestamp, or text without an offset) is taken to be in ``assume_timezone`` (UTC by
default, like ``rayml.validate``); a naive local time that a DST change skips or repeats takes the earliest
reading. Text is ISO-8601 (``2024-03-10T06:30:00Z``, ``...+02:00`` or naive); text that does not parse is a
problem naming the row.

Outputs, all float64 scalars: ``<name>_<part>`` (hour 0-23, minute 0-59, weekday 0 = Monday .. 6, day 1-31,
month 1-12), or with ``encoding: cyclical`` ``<name>_<part>_sin`` and ``_cos`` over periods 24, 60, 7, 31 and
12 (so 23:00 sits next to 00:00). A null timestamp gives 0 for every part, and ``<name>_missing`` = 1 when
``indicator`` is on (with cyclical encoding, (0, 0) is off the unit circle, so it is distinct anyway).
"""

from __future__ import annotations

import zoneinfo
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from rayml.features.base import Applied, StatelessStep, FeatureInputError, OutputSpec, State
from rayml.features.columns import as_arrow, column_of, describe

Part = Literal["hour", "minute", "weekday", "day", "month"]
_PERIOD = {"hour": 24, "minute": 60, "weekday": 7, "day": 31, "month": 12}
_OFFSET = {"hour": 0, "minute": 0, "weekday": 0, "day": 1, "month": 1}  # subtracted before the angle
_COMPUTE = {"hour": pc.hour, "minute": pc.minute, "weekday": pc.day_of_week, "day": pc.day, "month": pc.month}
_UTC = pa.timestamp("us", tz="UTC")


class TimestampParts(StatelessStep):
    """Calendar parts of a timestamp column; needs no fitting."""

    kind: Literal["timestamp"] = "timestamp"
    parts: list[Part] = Field(default_factory=lambda: ["hour", "weekday"], min_length=1,
                              description="which parts: hour, minute, weekday, day, month")
    encoding: Literal["value", "cyclical"] = Field("value", description="the number, or sin/cos of its angle")
    timezone: str = Field("UTC", description="IANA zone whose wall clock the parts are read on")
    assume_timezone: str = Field("UTC", description="IANA zone of timestamps that carry none")
    indicator: bool = Field(True, description="add <name>_missing, 1.0 for a null timestamp")
    VERSION: ClassVar[int] = 1

    @field_validator("timezone", "assume_timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{name!r} is not an IANA time zone; use e.g. UTC or Europe/Berlin") from exc
        return name

    @field_validator("parts")
    @classmethod
    def _unique(cls, parts: list[str]) -> list[str]:
        if len(set(parts)) != len(parts):
            raise ValueError(f"parts {parts} repeat a part; list each once")
        return parts

    def output_names(self) -> list[str]:
        return _names(self.model_dump())

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        config = state["config"]
        stamps, problems = _to_utc(as_arrow(column_of(batch, config["column"])), config)
        local = pc.cast(stamps, pa.timestamp("us", tz=config["timezone"]))
        missing = np.asarray(local.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        out = config["name"] or config["column"]
        outputs: dict[str, np.ndarray] = {}
        for part in config["parts"]:
            value = np.asarray(_COMPUTE[part](local).to_numpy(zero_copy_only=False), dtype=np.float64)
            value = np.where(missing, 0.0, value)
            if config["encoding"] == "value":
                outputs[f"{out}_{part}"] = value
                continue
            angle = 2.0 * np.pi * (value - _OFFSET[part]) / _PERIOD[part]
            outputs[f"{out}_{part}_sin"] = np.where(missing, 0.0, np.sin(angle))
            outputs[f"{out}_{part}_cos"] = np.where(missing, 0.0, np.cos(angle))
        if config["indicator"]:
            outputs[f"{out}_missing"] = missing.astype(np.float64)
        return Applied(outputs, problems)

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        return [OutputSpec(name, "float64") for name in _names(state["config"])]


def _names(config: dict[str, Any]) -> list[str]:
    out = config["name"] or config["column"]
    names = []
    for part in config["parts"]:
        cyclical = config["encoding"] == "cyclical"
        names += [f"{out}_{part}_sin", f"{out}_{part}_cos"] if cyclical else [f"{out}_{part}"]
    return names + ([f"{out}_missing"] if config["indicator"] else [])


def _to_utc(array: pa.Array, config: dict[str, Any]) -> tuple[pa.Array, dict[int, str]]:
    """Instants in UTC (nulls where missing or unreadable) and the problems of unreadable text."""
    kind = array.type
    if pa.types.is_timestamp(kind):
        return (pc.cast(array, _UTC) if kind.tz else _assume(pc.cast(array, pa.timestamp("us")), config)), {}
    if pa.types.is_date(kind):
        return _assume(pc.cast(array, pa.timestamp("us")), config), {}
    if pa.types.is_null(kind):
        return pa.nulls(len(array), _UTC), {}
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise FeatureInputError(
            f"column {config['column']!r} holds {kind}, not timestamps; send ISO-8601 text or timestamps",
            config["column"],
        )
    whole = _parse_text(array, config)
    if whole is not None:
        return whole, {}
    values: list[Any] = []
    problems: dict[int, str] = {}
    for row, text in enumerate(array.to_pylist()):
        parsed = None if text is None else _parse_text(pa.array([text], pa.string()), config)
        if text is not None and parsed is None:
            problems[row] = f"{config['column']}: got {describe(text)}; expected an ISO-8601 timestamp"
        values.append(None if parsed is None else parsed[0].as_py())
    return pa.array(values, _UTC), problems


def _parse_text(array: pa.Array, config: dict[str, Any]) -> pa.Array | None:
    """All of ``array`` parsed as zoned text, or all as naive text; None when neither reads every value."""
    try:
        return pc.cast(array, _UTC)
    except pa.ArrowInvalid:
        pass
    try:
        return _assume(pc.cast(array, pa.timestamp("us")), config)
    except pa.ArrowInvalid:
        return None


def _assume(naive: pa.Array, config: dict[str, Any]) -> pa.Array:
    zone = config["assume_timezone"]
    aware = pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="earliest")
    return pc.cast(aware, _UTC)
