"""Preprocessing inside the model graph: one ONNX model from raw columns to a probability.

``featurizer_graph`` turns a fitted featurizer state (see ``featurize.merge_stats``) into an ONNX graph that
computes exactly what ``featurize.transform`` computes, and ``fuse`` joins it to the exported model. A served
fused model takes raw columns, so training/serving skew in feature engineering is impossible by construction:
there is no second implementation to drift. ``fused_parity`` proves the two paths agree before shipping.

Graph contract (``featurizer_graph``):
    inputs   one per raw column, shape [batch]: numeric columns as tensor(double) with NaN for null,
             categorical columns as tensor(string) with '' for null (``fused_feeds`` builds these)
    output   ``features`` float [batch, output_dim], in ``state['feature_names']`` order
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.compute as pc
import torch
from onnx import TensorProto, helper, numpy_helper

from rayml.errors import DataValidationError, ParityError, RegistryError
from rayml.export import INPUT_NAME, onnx_session, output_name, parity_report
from rayml.featurize import _categories, fusable, transform
from rayml.models import Probability

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 3  # LabelEncoder-2 (string keys -> int64 values with a default) lives here; opset 18's companion
BATCH = "batch"
NULL_CATEGORY = ""  # what callers send for a null categorical value
_FEAT = "featurize/"  # prefix of every internal name of the featurizer graph
_MODEL = "model/"  # prefix of every internal name of the exported model once fused


def featurizer_graph(state: dict[str, Any], opset: int = 18) -> onnx.ModelProto:
    """An ONNX model computing ``featurize.transform(batch, state)`` from raw columns.

    Numerics (one vectorized block, in float64 like ``transform``, cast to float32 at the end):
    ``log1p(max(x, 0))`` for log1p columns, then non-finite values (NaN = null, and +inf; -inf too for
    columns without log1p, since ``max(-inf, 0)`` is finite) take the training mean, then ``(x - mean) / std``.
    Categoricals: ``ai.onnx.ml.LabelEncoder`` maps each vocabulary string to its index and everything else
    ('' for null, or any unseen value) to ``len(vocab)``, then ``OneHot`` of depth ``len(vocab) + 1``.
    """
    _check_state(state)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    blocks: list[str] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, _FEAT + name))
        return _FEAT + name

    def node(op: str, ins: list[str], out: str, domain: str = "", **attrs: Any) -> str:
        nodes.append(helper.make_node(op, ins, [_FEAT + out], name=_FEAT + out, domain=domain, **attrs))
        return _FEAT + out

    axis1 = const("axis1", np.array([1], np.int64))
    numeric = state["numeric"]
    if numeric:
        columns = []
        for i, spec in enumerate(numeric):
            inputs.append(helper.make_tensor_value_info(spec["name"], TensorProto.DOUBLE, [BATCH]))
            columns.append(node("Unsqueeze", [spec["name"], axis1], f"num{i}"))
        x = node("Concat", columns, "num", axis=1) if len(columns) > 1 else columns[0]
        is_log = np.array([bool(s["log1p"]) for s in numeric])
        mean = const("mean", np.array([float(s["mean"]) for s in numeric], np.float64))
        std = const("std", np.array([float(s["std"]) for s in numeric], np.float64))
        values = x
        if is_log.any():
            clipped = node("Max", [x, const("zero", np.array(0.0, np.float64))], "clipped")
            logged = node("Log", [node("Add", [clipped, const("one", np.array(1.0, np.float64))], "plus1")], "log")
            values = node("Where", [const("is_log", is_log), logged, x], "logged")
        # Which values transform() finds non-finite after log1p; decided on the raw input so that whatever
        # Max does with NaN cannot matter.
        bad = node("Or", [node("IsNaN", [x], "nan"), node("IsInf", [x], "posinf", detect_negative=0)], "nan_posinf")
        if not is_log.all():
            neginf = node("IsInf", [x], "neginf", detect_positive=0)
            neginf = node("And", [neginf, const("not_log", ~is_log)], "neginf_unlogged")
            bad = node("Or", [bad, neginf], "bad")
        filled = node("Where", [bad, mean, values], "filled")
        scaled = node("Div", [node("Sub", [filled, mean], "centered"), std], "scaled")
        blocks.append(node("Cast", [scaled], "num_features", to=TensorProto.FLOAT))

    onehot_values = const("onehot_values", np.array([0.0, 1.0], np.float32)) if state["categorical"] else ""
    for i, spec in enumerate(state["categorical"]):
        name, vocab = spec["name"], [str(v) for v in spec["vocab"]]
        inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, [BATCH]))
        if not vocab:
            # Nothing was kept in training: every row lands in the '<unseen>' slot.
            shape = node("Concat", [node("Shape", [name], f"cat{i}_shape"), axis1], f"cat{i}_shape2", axis=0)
            blocks.append(node("Expand", [const(f"cat{i}_one", np.ones((1, 1), np.float32)), shape], f"cat{i}"))
            continue
        codes = node(
            "LabelEncoder", [name], f"cat{i}_code", domain=ML_DOMAIN,
            keys_strings=vocab, values_int64s=list(range(len(vocab))), default_int64=len(vocab),
        )
        depth = const(f"cat{i}_depth", np.array(len(vocab) + 1, np.int64))
        blocks.append(node("OneHot", [codes, depth, onehot_values], f"cat{i}", axis=-1))

    for i, spec in enumerate(state.get("embed", [])):
        inputs.append(helper.make_tensor_value_info(spec["name"], TensorProto.STRING, [BATCH]))
        blocks.append(_embed_block(i, spec, node, const, axis1))

    output = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH, state["output_dim"]])
    nodes.append(helper.make_node("Concat", blocks, [INPUT_NAME], name=_FEAT + "features", axis=1))
    graph = helper.make_graph(nodes, "featurizer", inputs, [output], initializer=inits)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(ML_DOMAIN, ML_OPSET)]
    model = helper.make_model(
        graph, opset_imports=opsets, producer_name="rayml.fuse",
        ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True),
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _embed_block(i: int, spec: dict[str, Any], node: Any, const: Any, axis1: str) -> str:
    """The index featurize.transform writes for an embed column: vocabulary value i -> i + 1, unseen or null
    -> 0, as a float [batch, 1] block."""
    name, vocab = spec["name"], [str(v) for v in spec["vocab"]]
    if not vocab:
        shape = node("Concat", [node("Shape", [name], f"emb{i}_shape"), axis1], f"emb{i}_shape2", axis=0)
        return node("Expand", [const(f"emb{i}_zero", np.zeros((1, 1), np.float32)), shape], f"emb{i}")
    index = node(
        "LabelEncoder", [name], f"emb{i}_index", domain=ML_DOMAIN,
        keys_strings=vocab, values_int64s=list(range(1, len(vocab) + 1)), default_int64=0,
    )
    as_float = node("Cast", [index], f"emb{i}_float", to=TensorProto.FLOAT)
    return node("Unsqueeze", [as_float, axis1], f"emb{i}")


def fuse(state: dict[str, Any], model_path: str | Path, out_path: str | Path) -> Path:
    """Write ``out_path``: the featurizer of ``state`` feeding the exported model at ``model_path``.

    The result maps raw columns (see ``featurizer_graph``) to ``probability[batch]``. The exported model's
    internal names get the prefix ``model/`` so they cannot clash with raw column names.
    """
    exported = onnx.load(str(model_path))
    names = {i.name for i in exported.graph.input}
    output = output_name(state.get("task", "binary"))
    if INPUT_NAME not in names or output not in {o.name for o in exported.graph.output}:
        raise RegistryError(
            f"{model_path} is not an exported rayml model: expected input {INPUT_NAME!r} and output "
            f"{output!r}, found inputs {sorted(names)}. Export it with rayml.export.export_onnx"
        )
    width = exported.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    if width and width != state["output_dim"]:
        raise RegistryError(
            f"{model_path} takes {width} features but the featurizer state produces {state['output_dim']}; "
            "fuse the model with the featurizer.json it was trained on"
        )
    versions = {o.domain: o.version for o in exported.opset_import}
    if versions.get(ML_DOMAIN, ML_OPSET) != ML_OPSET:
        raise RegistryError(
            f"{model_path} imports {ML_DOMAIN} opset {versions[ML_DOMAIN]}; fusing needs {ML_OPSET}. Re-export it"
        )
    featurizer = featurizer_graph(state, opset=versions.get("", 18))
    featurizer.ir_version = exported.ir_version  # merge_models requires equal IR versions
    exported = onnx.compose.add_prefix(exported, _MODEL, rename_inputs=False, rename_outputs=False)
    fused = onnx.compose.merge_models(
        featurizer, exported, io_map=[(INPUT_NAME, INPUT_NAME)], name="rayml_fused",
        producer_name="rayml.fuse", producer_version="1",
    )
    # merge_models concatenates both models' opset lists; keep one entry per domain.
    opsets = {o.domain: o.version for o in fused.opset_import}
    del fused.opset_import[:]
    fused.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    onnx.checker.check_model(fused, full_check=True)
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(fused, str(target))
    return target


def fused_feeds(table: pa.Table, state: dict[str, Any]) -> dict[str, np.ndarray]:
    """onnxruntime feeds for a fused model from a typed table (as ``validate.validate_batch`` returns).

    Numerics become float64 with NaN for null; categoricals become object arrays of ``str`` with '' for null,
    converted to text exactly as ``featurize`` does (an int code 7 is '7').
    """
    missing = [c for c in _columns(state) if c not in table.column_names]
    if missing:
        raise DataValidationError(f"table lacks input columns {missing}; pass rows with every column the featurizer reads")
    feeds: dict[str, np.ndarray] = {}
    for spec in state["numeric"]:
        values = pc.cast(table.column(spec["name"]), pa.float64()).to_numpy(zero_copy_only=False)
        feeds[spec["name"]] = np.asarray(values, dtype=np.float64)
    for spec in [*state["categorical"], *state.get("embed", [])]:
        text = pc.fill_null(_categories(table.column(spec["name"])), NULL_CATEGORY)
        feeds[spec["name"]] = np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)
    return feeds


def fused_parity(
    state: dict[str, Any],
    model: torch.nn.Module,
    fused_path: str | Path,
    table: pa.Table,
    tolerance: float,
) -> dict[str, Any]:
    """Compare ``featurize.transform`` + torch (sigmoid of ``model``'s logits) with the fused ONNX model on
    ``table``; the report has the keys of ``export.parity``. Raises ParityError past ``tolerance``.
    """
    if table.num_rows == 0:
        raise ParityError("fused parity needs a non-empty table of raw rows, got 0 rows")
    features = transform(table, state)
    task = state.get("task", "binary")
    wrapped = Probability(model, task).eval()
    with torch.no_grad():
        expected = wrapped(torch.from_numpy(features)).numpy()
    got = onnx_session(fused_path).run([output_name(task)], fused_feeds(table, state))[0]
    report = parity_report(expected, got, tolerance)
    if not report["passed"]:
        raise ParityError(
            f"fused ONNX output (raw columns -> probability) differs from featurize.transform + torch by up to "
            f"{report['max_abs_diff']:.3g} on {report['rows']} rows (tolerance {tolerance:g}); the fused "
            "featurizer does not match this state or the model. Re-fuse with the featurizer.json the model was "
            "trained on, or raise export.tolerance"
        )
    return report


def _columns(state: dict[str, Any]) -> list[str]:
    specs = [*state["numeric"], *state["categorical"], *state.get("embed", [])]
    return [s["name"] for s in specs]


def _check_state(state: dict[str, Any]) -> None:
    """Reject states the graph cannot represent faithfully, naming the column and the fix."""
    if not fusable(state):
        raise RegistryError("this featurizer has image or text inputs, which ONNX cannot compute; serve the model "
                            "with the Python featurizer (export does this by itself)")
    columns = _columns(state)
    width = len(state["numeric"]) + sum(len(s["vocab"]) + 1 for s in state["categorical"])
    width += len(state.get("embed", []))
    if width != state.get("output_dim"):
        raise RegistryError(
            f"featurizer state says output_dim {state.get('output_dim')!r} but its columns make {width} "
            "features; the state is corrupt. Re-run the featurize stage"
        )
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise RegistryError(f"featurizer state lists columns {dupes} more than once; re-run the featurize stage")
    output = output_name(state.get("task", "binary"))
    reserved = sorted({c for c in columns if c in (INPUT_NAME, output) or c.startswith((_FEAT, _MODEL))})
    if reserved:
        raise RegistryError(
            f"input columns {reserved} clash with names the fused graph uses ({INPUT_NAME!r}, {output!r}, "
            f"'{_FEAT}*', '{_MODEL}*'); rename them in the data before featurizing"
        )
    for spec in [*state["categorical"], *state.get("embed", [])]:
        if NULL_CATEGORY in spec["vocab"]:
            raise RegistryError(
                f"categorical column {spec['name']!r} has the empty string in its vocabulary, but the fused graph "
                "reads '' as null; map empty strings to null before featurizing (validation), or serve this "
                "model with the Python featurizer instead of a fused graph"
            )
