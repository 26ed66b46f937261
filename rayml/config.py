"""Strict config models, YAML loading with ``key=value`` overrides, and collect-all error reporting."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rayml.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class StrictModel(BaseModel):
    """Base of every rayml config: unknown keys rejected, values typed and frozen after parsing."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; a missing file or non-mapping document is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass the path of a YAML file", str(p))
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", str(p)) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"top level must be a mapping of sections, got {type(data).__name__}", str(p))
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "overrides") -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied; values are parsed as YAML scalars."""
    result = _deep_copy(data)
    problems: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override {item!r} is not key=value; write e.g. train.epochs=2")
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; people mean a number
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: {part!r} is a value, not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, source)
    return result


def parse(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    """Validate ``data`` against ``model``; every problem is reported at once in one ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(model, err) for err in exc.errors()], source) from exc


def _describe(model: type[BaseModel], err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    path = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _field_at(model, loc[:-1])
        known = sorted(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        hint = f"; known keys here: {', '.join(known)}" if known else ""
        return f"{path}: unknown key. Remove it or fix its spelling{hint}"
    if kind == "missing":
        info = _field_info(model, loc)
        about = f" ({info.description.rstrip('.')})" if info is not None and info.description else ""
        return f"{path}: required but missing. Add {path}: <value>{about}"
    got = err.get("input")
    message = err["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else message
    shown = "" if isinstance(got, dict) else f"got {got!r}; "
    return f"{path}: {shown}{message}.{_field_hint(model, loc)}"


def _field_hint(model: type[BaseModel], loc: list[str]) -> str:
    info = _field_info(model, loc)
    if info is None:
        return ""
    path = ".".join(loc)
    about = f" ({info.description.rstrip('.')})" if info.description else ""
    if info.default is not PydanticUndefined and not isinstance(info.default, BaseModel) and info.default is not None:
        return f" Fix: set {path}: {info.default!r}{about}"
    return f" Fix: set {path} to a valid value{about}" if about else ""


def _field_info(model: type[BaseModel], loc: list[str]) -> FieldInfo | None:
    parent = _field_at(model, loc[:-1])
    if isinstance(parent, type) and issubclass(parent, BaseModel) and loc and loc[-1] in parent.model_fields:
        return parent.model_fields[loc[-1]]
    return None


def _field_at(model: type[BaseModel], loc: list[str]) -> Any:
    """Walk ``loc`` through nested models; list indexes and dict keys are skipped over."""
    node: Any = model
    skip_next = False
    for part in loc:
        if skip_next:
            skip_next = False
            continue
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return None
        field = node.model_fields.get(part)
        if field is None:
            return None
        skip_next = _is_container(field.annotation)
        node = _unwrap(field.annotation)
    return node


def _is_container(annotation: Any) -> bool:
    """Whether ``annotation`` is a list/dict/tuple, possibly inside ``| None``: its next loc part is an index."""
    if getattr(annotation, "__origin__", None) in (list, dict, tuple):
        return True
    return any(_is_container(arg) for arg in getattr(annotation, "__args__", ()) if arg is not type(None))


def _unwrap(annotation: Any) -> Any:
    """The model class inside ``X``, ``X | None``, ``list[X]`` or ``dict[str, X]``, else the annotation."""
    args = getattr(annotation, "__args__", None)
    if not args:
        return annotation
    for arg in reversed(args):
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
