"""Scoring with a registered model: request validation + the fitted featurizer + ONNX Runtime.

No Serve import: the same ``Predictor`` runs inside a Serve replica and in offline batch scoring. Records
are checked by the same ``validate.validate_batch`` that guarded training, then featurized by the same
``featurize.transform``, so serving cannot drift from training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rayml import artifacts, featurize
from rayml.errors import RequestError
from rayml.export import INPUT_NAME, OUTPUT_NAME, onnx_session
from rayml.source import records_table
from rayml.validate import ERROR, PROBLEM_SEPARATOR, ColumnSpec, validate_batch

MODEL_FILE = "model.onnx"
FEATURIZER_FILE = "featurizer.json"
_MAX_REPORTED = 5


class Predictor:
    """A loaded, checksum-verified model version."""

    def __init__(self, version_dir: str | Path, threads: int = 1, max_batch_rows: int = 1024) -> None:
        self.path = artifacts.resolve_version_dir(version_dir)
        self.manifest = artifacts.verify(self.path)
        self.name: str = self.manifest["model_name"]
        self.version: str = self.manifest["version"]
        self.threshold: float = float(self.manifest["threshold"])
        self.columns = [ColumnSpec(**c) for c in self.manifest["input_schema"]]
        self.state = featurize.loads((self.path / FEATURIZER_FILE).read_text())
        self.session = onnx_session(self.path / MODEL_FILE, threads=threads)
        self.max_batch_rows = max_batch_rows

    def features_from_records(self, instances: Any) -> np.ndarray:
        """Validate ``{"instances": [...]}`` records and featurize them; RequestError names the bad field."""
        if not isinstance(instances, list):
            raise RequestError(
                f"'instances' must be a list of objects, got {type(instances).__name__}; send "
                '{"instances": [{"column": value, ...}]}'
            )
        if not instances:
            raise RequestError("'instances' is empty; send at least one record")
        if len(instances) > self.max_batch_rows:
            raise RequestError(
                f"'instances' has {len(instances)} records; the limit is {self.max_batch_rows} per request. "
                "Split the batch",
                status=413,
            )
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
            raise RequestError(_summarize(problems))
        checked = validate_batch(records_table(instances), self.columns, "request", 0)
        errors = checked.column(ERROR).to_pylist()
        problems = [
            f"instances[{i}].{problem}"
            for i, error in enumerate(errors) if error is not None
            for problem in error.split(PROBLEM_SEPARATOR)
        ]
        if problems:
            raise RequestError(_summarize(problems))
        return featurize.transform(checked, self.state)

    def features_from_table(self, table: pa.Table) -> np.ndarray:
        """Features of already validated, typed rows (offline batch scoring)."""
        return featurize.transform(table, self.state)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 feature matrix."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: features.astype(np.float32, copy=False)})[0]

    def metadata(self) -> dict[str, Any]:
        """Inputs and outputs as the Open Inference Protocol v2 describes them."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": c.name, "datatype": _V2_TYPES[c.type], "shape": [-1]} for c in self.columns],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1]}],
        }


_V2_TYPES = {"string": "BYTES", "float": "FP64", "int": "INT64", "bool": "BOOL", "timestamp": "BYTES"}


def _summarize(problems: list[str]) -> str:
    shown = "; ".join(problems[:_MAX_REPORTED])
    more = len(problems) - _MAX_REPORTED
    return shown + (f"; and {more} more problem(s)" if more > 0 else "")
