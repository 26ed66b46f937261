"""ONNX export with a dynamic batch axis, and the onnxruntime-vs-torch parity gate."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from rayml import storage as store
from rayml.config import StrictModel
from rayml.errors import ParityError
from rayml.run_dir import dataset_path, filesystem, staged
from rayml.storage import StorageConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INPUT_NAME = "features"
OUTPUT_NAME = "probability"  # the output of a binary classifier
OUTPUT_NAMES = {"binary": OUTPUT_NAME, "multiclass": "probabilities", "regression": "prediction"}


def output_name(task: str) -> str:
    """The ONNX output of a model of ``task``: probability [batch], probabilities [batch, classes] or
    prediction [batch]."""
    return OUTPUT_NAMES[task]


class ExportConfig(StrictModel):
    """ONNX export and the parity gate."""

    tolerance: float = Field(1e-4, gt=0.0, le=1.0, description="max |onnxruntime - torch| probability difference")
    parity_rows: int = Field(2048, ge=1, le=1_000_000, description="held-out rows compared in the parity gate")
    opset: int = Field(18, ge=17, le=23, description="ONNX opset version")


def export_onnx(model: torch.nn.Module, input_dim: int, path: str | Path, opset: int = 18,
                task: str = "binary") -> Path:
    """Export ``model`` (logits) as an ONNX graph ``features[batch, input_dim] -> output_name(task)``."""
    import torch

    from rayml.models import Probability

    wrapped = Probability(model, task).eval()
    example = torch.zeros(2, input_dim, dtype=torch.float32)
    target = Path(path)
    torch_onnx_export(
        wrapped,
        (example,),
        str(target),
        input_names=[INPUT_NAME],
        output_names=[output_name(task)],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=opset,
        external_data=False,
        verbose=False,
    )
    return target


AST_RACE = "AST constructor recursion depth mismatch"


def torch_onnx_export(*args: Any, **kwargs: Any) -> None:
    """``torch.onnx.export`` (warnings silenced), retried on CPython 3.11's spurious SystemError "AST constructor
    recursion depth mismatch" (python/cpython#106905). The exporter parses the source of hundreds of torchlib
    functions with ``ast.parse``; 3.11's AST converter keeps its recursion depth in interpreter-wide state, so
    another thread of a Ray driver that parses or compiles code at the same moment can trip the check. The
    exporter itself did nothing wrong, so the same call is made again (twice at most)."""
    import torch

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(*args, **kwargs)
            return
        except SystemError as exc:
            if AST_RACE not in str(exc) or attempt == 2:
                raise
            log.warning("export: torch.onnx.export hit CPython 3.11's AST recursion-depth race (%s); retrying", exc)


def onnx_session(
    path: str | Path, threads: int = 1, providers: list[str] | None = None, spinning: bool = False
) -> Any:
    """An onnxruntime session; CUDA first when the GPU build and a device are present.

    Thread spinning is off unless asked for: a spinning worker thread burns a core while waiting for work,
    which only pays when the replica owns its cores.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    available = ort.get_available_providers()
    chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)


def parity(model: torch.nn.Module, onnx_path: str | Path, features: np.ndarray, tolerance: float,
           task: str = "binary") -> dict[str, Any]:
    """Compare torch and onnxruntime outputs on ``features``; raise ParityError past ``tolerance``."""
    if features.ndim != 2 or features.shape[0] == 0:
        raise ParityError(f"parity needs a non-empty [rows, features] matrix, got shape {features.shape}")
    import torch

    from rayml.models import Probability

    wrapped = Probability(model, task).eval()
    with torch.no_grad():
        expected = wrapped(torch.from_numpy(features.astype(np.float32))).numpy()
    got = onnx_session(onnx_path).run([output_name(task)], {INPUT_NAME: features.astype(np.float32)})[0]
    report = parity_report(expected, got, tolerance)
    if not report["passed"]:
        raise ParityError(
            f"ONNX output differs from torch by up to {report['max_abs_diff']:.3g} on {report['rows']} held-out "
            f"rows (tolerance {tolerance:g}); the export is wrong or numerically unstable. Inspect the model or "
            "raise export.tolerance"
        )
    return report


def parity_report(expected: np.ndarray, got: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Max and mean |got - expected| over rows, and whether the max is within ``tolerance``."""
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    return {
        "rows": int(diff.shape[0]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "tolerance": tolerance,
        "passed": bool(diff.max() <= tolerance),
    }


def run_stage(
    checkpoint_dir: str,
    *,
    model_config: Any,
    state: dict[str, Any],
    held_out: pa.Table,
    train_sample: pa.Table,
    test_path: str,
    config: ExportConfig,
    out_dir: str | Path,
    storage: StorageConfig | None = None,
) -> dict[str, Any]:
    """Export the checkpoint, fuse the featurizer into it, and gate both graphs on parity.

    Writes ``model_features.onnx`` (features -> probability), ``model.onnx`` (raw columns -> probability, the
    served graph) and ``reference.json`` (the training distribution of each input, for drift). ``held_out``
    holds raw, validated test rows; edge cases (unseen categories, nulls) are added to it for the fused gate.
    The checkpoint, ``test_path`` and ``out_dir`` may be s3:// (``storage`` reaches them); the files are
    written locally first, then uploaded.
    """
    with staged(out_dir, storage) as out:
        result = _export_to(out, checkpoint_dir, model_config=model_config, state=state, held_out=held_out,
                            train_sample=train_sample, test_path=test_path, config=config, storage=storage)
    if store.is_remote(out_dir):  # where the uploaded files are now
        for key in ("onnx_path", "features_onnx_path", "reference_path"):
            if result[key] is not None:
                result[key] = str(store.join(out_dir, Path(result[key]).name))
    return result


def _export_to(out: Path, checkpoint_dir: str, *, model_config: Any, state: dict[str, Any], held_out: pa.Table,
               train_sample: pa.Table, test_path: str, config: ExportConfig, storage: StorageConfig | None
               ) -> dict[str, Any]:
    import ray.data

    from rayml import drift
    from rayml.featurize import FEATURES, fusable
    from rayml.fuse import fuse, fused_parity
    from rayml.models import load_trained, output_count

    input_dim, task = state["output_dim"], state["task"]
    outputs = output_count(task, state.get("classes"))
    model = load_trained(checkpoint_dir, model_config, input_dim, outputs, state["layout"],
                         filesystem(checkpoint_dir, storage))
    plain = export_onnx(model, input_dim, out / "model_features.onnx", opset=config.opset, task=task)
    path, test_filesystem = dataset_path(test_path, storage)
    test = ray.data.read_parquet(path, filesystem=test_filesystem).select_columns([FEATURES])
    rows = test.take_batch(config.parity_rows, batch_format="numpy")
    features = np.asarray(rows[FEATURES], dtype=np.float32)
    report = parity(model, plain, features, config.tolerance, task)
    fused_report = None
    if fusable(state):
        served = fuse(state, plain, out / "model.onnx")
        edge_cases = with_edge_cases(held_out.slice(0, config.parity_rows), state)
        fused_report = fused_parity(state, model, served, edge_cases, config.tolerance)
        log.info("export: parity max |diff| %.2e (features), %.2e (fused, %d rows incl. unseen/null); "
                 "tolerance %g", report["max_abs_diff"], fused_report["max_abs_diff"], fused_report["rows"],
                 config.tolerance)
    else:
        # Images and text: the replica runs the Python featurizer (the same code as training) before the graph.
        served = Path(shutil.copyfile(plain, out / "model.onnx"))
        log.info("export: parity max |diff| %.2e (features; image/text inputs are featurized in Python when "
                 "served); tolerance %g", report["max_abs_diff"], config.tolerance)
    numeric = [s["name"] for s in state["numeric"]]
    categorical = [s["name"] for s in state["categorical"]]
    reference = None
    if numeric or categorical:  # drift is profiled on tabular inputs; ids, images and text have no profile
        columns = {name: train_sample.column(name).to_numpy(zero_copy_only=False) for name in numeric + categorical}
        profile = drift.reference_profile(columns, numeric, categorical)
        reference = out / "reference.json"
        reference.write_text(json.dumps(profile, indent=2, sort_keys=True))
    return {
        "onnx_path": str(served),
        "onnx_input": "columns" if fused_report is not None else "features",
        "features_onnx_path": str(plain),
        "reference_path": str(reference) if reference is not None else None,
        "parity": report,
        "fused_parity": fused_report,
        "input_dim": input_dim,
        "opset": config.opset,
    }


UNSEEN = "__rayml_unseen__"


def with_edge_cases(table: pa.Table, state: dict[str, Any], rows: int = 32) -> pa.Table:
    """``table`` plus copies of its first rows with every categorical unseen, and with every input null."""
    k = min(rows, table.num_rows)
    head = table.slice(0, k)
    unseen = head
    nulls = head
    for spec in [*state["categorical"], *state.get("embed", [])]:
        index = head.schema.get_field_index(spec["name"])
        field_type = head.schema.field(index).type
        value = UNSEEN if pa.types.is_string(field_type) else -987_654_321  # an int id no vocabulary holds
        unseen = unseen.set_column(index, spec["name"], pa.array([value] * k, field_type))
    for spec in [*state["numeric"], *state["categorical"], *state.get("embed", [])]:
        index = head.schema.get_field_index(spec["name"])
        nulls = nulls.set_column(index, spec["name"], pa.nulls(k, head.schema.field(index).type))
    return pa.concat_tables([table, unseen, nulls])
