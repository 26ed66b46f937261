"""Scoring with a registered model: request validation + the fitted featurizer + ONNX Runtime.

No Serve import: the same ``Predictor`` runs inside a Serve replica and in offline batch scoring. Records
are checked by the same ``validate.validate_batch`` that guarded training, then featurized by the same
``featurize.transform``, so serving cannot drift from training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rayml import artifacts, featurize
from rayml.errors import RequestError, summarize
from rayml.export import INPUT_NAME, OUTPUT_NAME, onnx_session, output_name
from rayml.features.base import FeatureInputError
from rayml.serve.protocol import TensorSpec
from rayml.source import records_table
from rayml.validate import ERROR, PROBLEM_SEPARATOR, ColumnSpec, validate_batch

MODEL_FILE = "model.onnx"
FEATURIZER_FILE = "featurizer.json"


class Predictor:
    """A loaded, checksum-verified model version.

    A version whose ``model.onnx`` takes raw columns (``manifest["onnx_input"] == "columns"``: the featurizer
    fused into the graph at export) is fed columns directly; an older one takes the Python featurizer's matrix.
    """

    def __init__(self, version_dir: str | Path, threads: int = 1, max_batch_rows: int = 1024,
                 spinning: bool = False) -> None:
        self.path = artifacts.local_version_dir(version_dir)  # an s3:// version is fetched to a local cache
        self.manifest = artifacts.verify(self.path)
        self.name: str = self.manifest["model_name"]
        self.version: str = self.manifest["version"]
        threshold = self.manifest.get("threshold")
        self.threshold: float | None = None if threshold is None else float(threshold)
        self.columns = [ColumnSpec(**c) for c in self.manifest["input_schema"]]
        self.state = featurize.loads((self.path / FEATURIZER_FILE).read_text())
        self.task: str = self.state["task"]
        self.classes: list[str] | None = self.state.get("classes")
        self.output = output_name(self.task)
        self.fused = self.manifest.get("onnx_input") == "columns"
        self.session = onnx_session(self.path / MODEL_FILE, threads=threads, spinning=spinning)
        self.max_batch_rows = max_batch_rows
        reference = self.path / REFERENCE_FILE
        self.reference: dict[str, Any] | None = json.loads(reference.read_text()) if reference.is_file() else None

    def records_table(self, instances: Any) -> pa.Table:
        """Validate ``{"instances": [...]}`` records into typed columns; RequestError names the bad field."""
        return self._validated(self.records_raw(instances), "instances")

    def records_raw(self, instances: Any) -> pa.Table:
        """``{"instances": [...]}`` records as an untyped table, after the checks of their shape (a list of
        objects, within the row limit, required fields present); ``validate_requests`` types them."""
        if not isinstance(instances, list):
            raise RequestError(
                f"'instances' must be a list of objects, got {type(instances).__name__}; send "
                '{"instances": [{"column": value, ...}]}'
            )
        if not instances:
            raise RequestError("'instances' is empty; send at least one record")
        self._check_rows(len(instances), "'instances'")
        problems = []
        required = [c.name for c in self.columns if not c.nullable]
        for i, record in enumerate(instances):
            if not isinstance(record, dict):
                problems.append(f"instances[{i}]: must be an object of column: value, got {type(record).__name__}")
                continue
            missing = [name for name in required if name not in record]
            if missing:
                problems.append(f"instances[{i}]: missing field(s) {', '.join(repr(m) for m in missing)}")
        if problems:
            raise RequestError(summarize(problems))
        return records_table(instances)

    def tensors_table(self, tensors: dict[str, np.ndarray]) -> pa.Table:
        """Validate Open Inference Protocol input tensors (one per column, already shape-checked)."""
        return self._validated(self.tensors_raw(tensors), "tensors")

    @staticmethod
    def tensors_raw(tensors: dict[str, np.ndarray]) -> pa.Table:
        """Open Inference Protocol input tensors as an untyped table, one column each."""
        columns = {}
        for name, values in tensors.items():
            flat = values.reshape(-1)
            columns[name] = pa.array(flat.tolist() if flat.dtype == object else flat)
        return pa.table(columns)

    def validate_requests(self, raws: list[pa.Table], forms: list[str]) -> tuple[pa.Table, list[RequestError | None]]:
        """Several requests' untyped rows (``forms``: "instances" or "tensors", how a bad row is named) validated
        in one call when their columns agree, since one call's fixed cost dominates a one-row request: the typed
        rows of the requests that passed, in request order, and per request None or the RequestError naming its
        bad fields. Requests whose columns differ are validated one by one, so a request's outcome never depends
        on the others."""
        if all(raw.schema.equals(raws[0].schema) for raw in raws[1:]):
            checked = validate_batch(pa.concat_tables(raws) if len(raws) > 1 else raws[0], self.columns,
                                     "request", 0)
        else:
            checked = pa.concat_tables([validate_batch(raw, self.columns, "request", 0) for raw in raws])
        errors = checked.column(ERROR).to_pylist()
        outcomes: list[RequestError | None] = []
        kept: list[int] = []
        offset = 0
        for raw, form in zip(raws, forms):
            problems = _problems(errors[offset:offset + raw.num_rows], form)
            outcomes.append(RequestError(summarize(problems)) if problems else None)
            if not problems:
                kept.extend(range(offset, offset + raw.num_rows))
            offset += raw.num_rows
        typed = checked if len(kept) == checked.num_rows else checked.take(pa.array(kept, type=pa.int64()))
        return typed, outcomes

    def features_from_records(self, instances: Any) -> np.ndarray:
        """The Python featurizer's matrix for request records (what a feature-input graph takes)."""
        return featurize.transform(self.records_table(instances), self.state)

    def predict_table(self, table: pa.Table) -> np.ndarray:
        """The model's output for validated, typed rows: probability [rows] (binary), probabilities
        [rows, classes] (multiclass) or prediction [rows] (regression)."""
        if self.fused:
            from rayml.fuse import fused_feeds

            return self.session.run([self.output], fused_feeds(table, self.state))[0]
        try:
            features = featurize.transform(table, self.state)
        except FeatureInputError as exc:  # e.g. bytes that are not an image: the client's fault
            raise RequestError(str(exc)) from exc
        return self.predict(features)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The output for a float32 feature matrix (a graph that takes features, not raw columns)."""
        if self.fused:
            raise ValueError(f"{self.name} v{self.version} takes raw columns; call predict_table")
        return self.session.run([self.output], {INPUT_NAME: features.astype(np.float32, copy=False)})[0]

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        """One number per row for score metrics and shadow deltas: the probability (binary), the top class's
        probability (multiclass) or the prediction (regression)."""
        return outputs.max(axis=1) if self.task == "multiclass" else outputs

    def answers(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """The ``predictions`` of a /predict response, one object per row."""
        if self.task == "binary":
            threshold = float(self.threshold if self.threshold is not None else 0.5)
            return [{"probability": float(p), "label": int(p >= threshold)} for p in outputs.tolist()]
        if self.task == "regression":
            return [{"prediction": float(v)} for v in outputs.tolist()]
        classes = self.classes or []
        answers = []
        for row in outputs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            answers.append({"label": classes[best], "probability": float(row[best]),
                            "probabilities": dict(zip(classes, (float(p) for p in row)))})
        return answers

    def v2_tensors(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        """Every v2 output tensor of a batch, by name (see ``v2_outputs``)."""
        if self.task == "binary":
            threshold = float(self.threshold if self.threshold is not None else 0.5)
            return {OUTPUT_NAME: outputs.astype(np.float32),
                    LABEL_OUTPUT: (outputs >= threshold).astype(np.int64)}
        if self.task == "regression":
            return {self.output: outputs.astype(np.float32)}
        classes = np.asarray(self.classes or [], dtype=object)
        return {self.output: outputs.astype(np.float32), LABEL_OUTPUT: classes[outputs.argmax(axis=1)]}

    def v2_inputs(self) -> list[TensorSpec]:
        return [TensorSpec(c.name, _V2_TYPES[c.type], [-1]) for c in self.columns]

    def v2_outputs(self) -> list[TensorSpec]:
        if self.task == "binary":
            return [TensorSpec(OUTPUT_NAME, "FP32", [-1]), TensorSpec(LABEL_OUTPUT, "INT64", [-1])]
        if self.task == "regression":
            return [TensorSpec(self.output, "FP32", [-1])]
        return [TensorSpec(self.output, "FP32", [-1, len(self.classes or [])]),
                TensorSpec(LABEL_OUTPUT, "BYTES", [-1])]

    def _check_rows(self, rows: int, what: str) -> None:
        if rows > self.max_batch_rows:
            raise RequestError(
                f"{what} has {rows} records; the limit is {self.max_batch_rows} per request. Split the batch",
                status=413,
            )

    def _validated(self, raw: pa.Table, form: str) -> pa.Table:
        typed, (problem,) = self.validate_requests([raw], [form])
        if problem is not None:
            raise problem
        return typed


def _problems(errors: list[str | None], form: str) -> list[str]:
    """Every problem of a request's rows (validate's error column), each named the way the client sent it."""
    where = (lambda i: f"instances[{i}].") if form == "instances" else (lambda i: f"row {i}: ")
    return [f"{where(i)}{problem}" for i, error in enumerate(errors) if error is not None
            for problem in error.split(PROBLEM_SEPARATOR)]


LABEL_OUTPUT = "label"
REFERENCE_FILE = "reference.json"
_V2_TYPES = {"string": "BYTES", "float": "FP64", "int": "INT64", "bool": "BOOL", "timestamp": "BYTES",
             "binary": "BYTES"}
