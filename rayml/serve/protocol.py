"""The Open Inference Protocol v2 (KServe v2 / Triton HTTP/REST, JSON only) as a pure codec.

No Serve, FastAPI or Ray import. Every problem with a request is a ``RequestError`` naming the input and
the field, with Triton's statuses: 400 malformed, 413 too many rows (404 and 503 are the caller's to raise).

Decisions, where the protocol leaves room:
- Datatypes. An input must be sent with the model's datatype, except that a numeric input also accepts any
  numeric datatype that numpy casts to it safely (``np.can_cast(sent, model, "safe")``: FP16 or FP32 for an
  FP64 input, INT8..INT32 for INT64, ...). The data are checked against the datatype *sent*, then widened.
  A narrowing (FP64 for FP32) is refused, as Triton refuses it. BOOL and BYTES match only themselves.
- Data must be JSON values of the datatype's kind, checked by type, not coerced: BOOL takes true/false only,
  integer types take integers only (not 1.0, not true) within the type's range, float types take integers
  and numbers that are finite once cast (FP16: |x| <= 65504), BYTES takes strings. null is always refused, as
  is NaN/Infinity (Python's JSON parser accepts them; JSON does not).
- ``data`` is a row-major flat list or lists nested exactly as ``shape``; both give the same array. Only
  binary-free JSON is supported: an input with ``binary_data_size`` gets a message saying to send JSON data.
- Zero-size shapes are allowed (a 0-row request yields 0-row tensors). ``parameters`` (request, input and output level) and unknown keys are ignored. ``outputs: []`` or no
  ``outputs`` means every model output. A non-string ``id`` is refused.
- All problems found in the request headers (names, datatypes, shapes) or in the data are reported at once,
  joined by "; " (the first few, then a count).

Hostile input: shapes are checked (rank against the model, fixed dimensions, rows against ``max_rows``, the
element product against the data length) before any array is built; nesting is walked one level per
declared dimension, so data nested deeper than the shape is found as a list among the leaves rather than
recursed into; type checks run in C (``set(map(type, ...))``), so a string in numeric data cannot make numpy
build a huge unicode array.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from rayml.errors import RequestError, summarize

V2_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),  # elements are str
}
SERVER_NAME = "rayml"
_NUMERIC = [t for t, d in V2_DATATYPES.items() if d.kind in "iuf"]
# The JSON value kinds each datatype accepts, checked by exact Python type (bool is not an int here).
_LEAF_TYPES = {
    **{t: frozenset({int}) for t, d in V2_DATATYPES.items() if d.kind in "iu"},
    **{t: frozenset({int, float}) for t, d in V2_DATATYPES.items() if d.kind == "f"},
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str}),
}
_EXPECTED = {"BOOL": "JSON true/false", "BYTES": "JSON strings"} | {
    t: ("JSON integers" if V2_DATATYPES[t].kind in "iu" else "JSON numbers") for t in _NUMERIC
}
_JSON_KIND = {
    bool: "true/false", int: "an integer", float: "a number with a fraction or exponent", str: "a string",
    type(None): "null", list: "a list", dict: "an object",
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: a v2 datatype and a shape in which -1 is a variable dimension."""

    name: str
    datatype: str
    shape: list[int]

    def __post_init__(self) -> None:
        if self.datatype not in V2_DATATYPES:
            raise ValueError(
                f"tensor {self.name!r}: unknown datatype {self.datatype!r}; "
                f"use one of {', '.join(V2_DATATYPES)}"
            )
        if any(type(d) is not int or d < -1 for d in self.shape):
            raise ValueError(
                f"tensor {self.name!r}: shape {self.shape} must hold ints >= 0, or -1 for variable"
            )

    @property
    def dtype(self) -> np.dtype:
        return V2_DATATYPES[self.datatype]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request. ``tensors`` hold the model's dtypes and shapes; ``rows`` is the shared
    first dimension; ``requested_outputs`` are output names in the order to answer with."""

    id: str | None
    tensors: dict[str, np.ndarray]
    requested_outputs: list[str]
    rows: int


def v2_datatype(dtype: Any) -> str:
    """The v2 datatype of a numpy dtype (str, bytes and object -> BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OUS":
        return "BYTES"
    for name, candidate in V2_DATATYPES.items():
        if candidate == dtype:
            return name
    raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol v2 datatype")


def server_metadata(version: str, extensions: list[str]) -> dict[str, Any]:
    """Body of ``GET /v2``."""
    return {"name": SERVER_NAME, "version": version, "extensions": list(extensions)}


def model_metadata(
    name: str, versions: list[str], platform: str, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> dict[str, Any]:
    """Body of ``GET /v2/models/{name}[/versions/{v}]``."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [spec.to_json() for spec in inputs],
        "outputs": [spec.to_json() for spec in outputs],
    }


def error_body(message: str) -> dict[str, str]:
    """Body of every error answer."""
    return {"error": message}


def parse_infer_request(
    body: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], max_rows: int
) -> InferRequest:
    """Validate a decoded ``POST .../infer`` JSON body against the model's tensors; build its arrays.

    Raises ``RequestError`` (400, or 413 past ``max_rows`` rows) naming every bad input and field.
    """
    if not isinstance(body, dict):
        raise RequestError(
            f"request body must be a JSON object, got {_json_kind(body)}; send "
            '{"inputs": [{"name": ..., "datatype": ..., "shape": [...], "data": [...]}]}'
        )
    items = body.get("inputs")
    if not isinstance(items, list) or not items:
        got = "no \"inputs\"" if items is None else f'"inputs" as {_json_kind(items)}'
        raise RequestError(
            f'request body must have "inputs": a non-empty list of {{"name", "datatype", "shape", "data"}} '
            f"objects, one per model input ({_names(inputs)}); got {got}"
        )
    request_id = body.get("id")
    problems: list[str] = []
    if request_id is not None and not isinstance(request_id, str):
        problems.append(f'"id" must be a string, got {_json_kind(request_id)}')

    specs = {spec.name: spec for spec in inputs}
    headers: list[tuple[TensorSpec, str, list[int], Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            header = _read_header(index, item, specs, seen)
        except RequestError as error:
            problems.append(error.message)
            continue
        headers.append(header)
    problems += [f"missing input {name!r}; send every model input ({_names(inputs)})" for name in specs
                 if name not in seen]
    requested = _requested_outputs(body.get("outputs"), outputs, problems)
    if problems:
        raise RequestError(summarize(problems))

    # Rows before data: refuse an oversized request without building anything.
    rows_of = {spec.name: shape[0] if shape else 1 for spec, _, shape, _ in headers}
    if len(set(rows_of.values())) > 1:
        listed = ", ".join(f"{name!r} has {rows}" for name, rows in rows_of.items())
        raise RequestError(
            f"inputs disagree on the batch size (first shape dimension): {listed}; every input must carry "
            "the same rows"
        )
    rows = next(iter(rows_of.values()))
    if rows > max_rows:
        raise RequestError(
            f"input {headers[0][0].name!r}: shape {headers[0][2]} asks for {rows} rows; this server "
            f"accepts at most {max_rows} rows per request. Split the request",
            status=413,
        )

    tensors: dict[str, np.ndarray] = {}
    for spec, datatype, shape, data in headers:
        try:
            tensors[spec.name] = _to_array(spec, datatype, shape, data)
        except RequestError as error:
            problems.append(error.message)
    if problems:
        raise RequestError(summarize(problems))
    return InferRequest(id=request_id, tensors=tensors, requested_outputs=requested, rows=rows)


def infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    specs: list[TensorSpec],
) -> dict[str, Any]:
    """Body of a successful ``infer``: each array of ``outputs`` (in its order) as flat row-major JSON data
    with the datatype of its spec. Raises ValueError (a server fault, not the client's) for an output without
    a spec or with NaN/infinity, which JSON cannot carry."""
    by_name = {spec.name: spec for spec in specs}
    encoded = []
    for name, array in outputs.items():
        spec = by_name.get(name)
        if spec is None:
            raise ValueError(f"output {name!r} has no TensorSpec; the model's outputs are {_names(specs)}")
        array = np.asarray(array)
        if spec.datatype == "BYTES":
            flat = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.ravel().tolist()]
        else:
            array = array.astype(spec.dtype, copy=False)
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ValueError(f"output {name!r} holds NaN or infinity, which JSON cannot carry")
            flat = array.ravel().tolist()
        encoded.append({"name": name, "datatype": spec.datatype, "shape": list(array.shape), "data": flat})
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = encoded
    return body


# ---------------------------------------------------------------------------------------------- internals


def _read_header(
    index: int, item: Any, specs: dict[str, TensorSpec], seen: set[str]
) -> tuple[TensorSpec, str, list[int], Any]:
    """Check one input's name, datatype, shape and that it has data; nothing here touches the data."""
    if not isinstance(item, dict):
        raise RequestError(
            f'inputs[{index}] must be an object with "name", "datatype", "shape" and "data", '
            f"got {_json_kind(item)}"
        )
    name = item.get("name")
    if not isinstance(name, str):
        raise RequestError(f'inputs[{index}]: "name" must be a string, got {_json_kind(name)}')
    spec = specs.get(name)
    if spec is None:
        known = _names(list(specs.values()))
        raise RequestError(f"unknown input {_clip(name)}; this model's inputs are {known}")
    if name in seen:
        raise RequestError(f"input {name!r} appears more than once in \"inputs\"; send each input once")
    seen.add(name)  # even if the rest is bad: it is not also "missing"
    where = f"input {name!r}"

    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_DATATYPES:
        raise RequestError(
            f"{where}: unknown datatype {_clip(datatype)}; send {spec.datatype!r} "
            f"(v2 datatypes: {', '.join(V2_DATATYPES)})"
        )
    if datatype != spec.datatype and not _widens(datatype, spec.datatype):
        accepted = [t for t in _NUMERIC if t != spec.datatype and _widens(t, spec.datatype)]
        hint = f"; it also accepts {', '.join(accepted)}, which convert exactly" if accepted else ""
        raise RequestError(f"{where}: datatype {spec.datatype} expected, got {datatype}{hint}")

    shape = item.get("shape")
    if not isinstance(shape, list):
        raise RequestError(
            f'{where}: "shape" must be a list of non-negative integers, got {_json_kind(shape)}'
        )
    if len(shape) != len(spec.shape):
        raise RequestError(
            f"{where}: shape {_shape_text(shape)} has rank {len(shape)}; the model's shape is {spec.shape} "
            f"(rank {len(spec.shape)}, -1 = any size)"
        )
    if any(type(d) is not int or d < 0 for d in shape):
        raise RequestError(f"{where}: shape {_shape_text(shape)} must hold non-negative integers")
    for axis, (sent, wanted) in enumerate(zip(shape, spec.shape, strict=True)):
        if wanted != -1 and sent != wanted:
            raise RequestError(
                f"{where}: shape {shape} does not match the model's {spec.shape}: dimension {axis} must be "
                f"{wanted} (-1 = any size)"
            )

    if "data" not in item:
        parameters = item.get("parameters")
        binary = isinstance(parameters, dict) and "binary_data_size" in parameters
        hint = (
            "; binary tensor data is not supported, send the values as JSON "
            "(tritonclient: set_data_from_numpy(array, binary_data=False))" if binary else ""
        )
        raise RequestError(f'{where}: no "data"; send the {math.prod(shape)} values as a JSON list{hint}')
    return spec, datatype, shape, item["data"]


def _widens(sent: str, wanted: str) -> bool:
    """A numeric datatype numpy casts to the model's safely (values survive exactly)."""
    if sent not in _NUMERIC or wanted not in _NUMERIC:
        return False
    return bool(np.can_cast(V2_DATATYPES[sent], V2_DATATYPES[wanted], "safe"))


def _requested_outputs(value: Any, outputs: list[TensorSpec], problems: list[str]) -> list[str]:
    """Names from the optional ``"outputs": [{"name": ...}]``; absent or empty means all, in model order."""
    if value is None or value == []:
        return [spec.name for spec in outputs]
    if not isinstance(value, list):
        problems.append(f'"outputs" must be a list of {{"name": ...}} objects, got {_json_kind(value)}')
        return []
    known = {spec.name for spec in outputs}
    names: list[str] = []
    for index, item in enumerate(value):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            problems.append(f'outputs[{index}] must be an object with a string "name"')
        elif name not in known:
            problems.append(f"unknown output {_clip(name)}; this model's outputs are {_names(outputs)}")
        elif name in names:
            problems.append(f"output {name!r} is requested more than once; request each output once")
        else:
            names.append(name)
    return names


def _to_array(spec: TensorSpec, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """The data of one input (header already checked) as an array of the model's dtype and ``shape``."""
    where = f"input {spec.name!r}"
    if not isinstance(data, list):
        raise RequestError(f'{where}: "data" must be a JSON list, got {_json_kind(data)}')
    count = math.prod(shape)  # Python ints: an enormous declared shape cannot overflow or allocate
    if len(shape) > 1 and data and type(data[0]) is list:
        flat = _flatten_nested(where, data, shape)
    else:
        flat = data
    if len(flat) != count:
        raise RequestError(f"{where}: shape {shape} holds {count} elements but data has {len(flat)}")

    allowed = _LEAF_TYPES[datatype]
    if not set(map(type, flat)) <= allowed:  # C-level type scan: strict, and no coercion of "1" or true
        index, bad = next((i, x) for i, x in enumerate(flat) if type(x) not in allowed)
        deeper = f" (data is nested deeper than shape {shape})" if type(bad) is list else ""
        raise RequestError(
            f"{where}: {datatype} data must be {_EXPECTED[datatype]}; found {_json_kind(bad)} "
            f"({_clip(bad)}) at flat index {index}{deeper}"
        )

    sent = V2_DATATYPES[datatype]
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = flat  # element-wise, so equal-length strings are never split into characters
    elif sent.kind in "iu":
        if flat:
            info = np.iinfo(sent)
            low, high = min(flat), max(flat)
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                raise RequestError(
                    f"{where}: value {_clip(bad)} is out of range for {datatype} ({info.min}..{info.max})"
                )
        array = np.asarray(flat, dtype=sent)
    elif sent.kind == "f":
        try:
            with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
                array = np.asarray(flat, dtype=sent)
        except OverflowError:
            raise RequestError(f"{where}: an integer in data is too large for {datatype}") from None
        if not np.isfinite(array).all():
            index = int(np.flatnonzero(~np.isfinite(array))[0])
            raise RequestError(
                f"{where}: value {_clip(flat[index])} at flat index {index} is not a finite {datatype} "
                f"(NaN, Infinity and values past {float(np.finfo(sent).max):.6g} are refused)"
            )
    else:  # BOOL
        array = np.asarray(flat, dtype=np.bool_)
    return array.astype(spec.dtype, copy=False).reshape(shape)


def _flatten_nested(where: str, data: list, shape: list[int]) -> list:
    """Row-major leaves of lists nested as ``shape``, walking one level per dimension (never deeper)."""
    nodes: list = [data]
    for axis, dim in enumerate(shape):
        if axis > 0:
            kinds = set(map(type, nodes))
            if kinds - {list}:
                odd = next(x for x in nodes if type(x) is not list)
                raise RequestError(
                    f"{where}: data nesting does not match shape {shape}: found {_json_kind(odd)} "
                    f"({_clip(odd)}) where a list of {dim} is expected at depth {axis}"
                )
        lengths = set(map(len, nodes))
        if lengths - {dim}:
            bad = next(n for n in lengths if n != dim)
            raise RequestError(
                f"{where}: data nesting does not match shape {shape}: a list at depth {axis} has {bad} "
                f"elements; dimension {axis} is {dim}"
            )
        if axis < len(shape) - 1:
            nodes = list(chain.from_iterable(nodes))
    return list(chain.from_iterable(nodes))


def _json_kind(value: Any) -> str:
    return _JSON_KIND.get(type(value), type(value).__name__)


def _clip(value: Any, limit: int = 40) -> str:
    """A short JSON rendering of a user value, for messages (containers summarized: they may be huge or
    nested deeper than any recursion limit)."""
    if isinstance(value, list):
        return f"[...{len(value)} items]"
    if isinstance(value, dict):
        return f"{{...{len(value)} keys}}"
    if isinstance(value, str):  # quoted like the input names in every message
        return repr(value) if len(value) <= limit else repr(value[: limit - 3]) + "..."
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shape_text(shape: list) -> str:
    head = ", ".join(_clip(d, 24) for d in shape[:16])
    return f"[{head}{', ...' if len(shape) > 16 else ''}]"


def _names(specs: list[TensorSpec]) -> str:
    return ", ".join(spec.name for spec in specs) or "(none)"
