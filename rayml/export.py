"""ONNX export with a dynamic batch axis, and the onnxruntime-vs-torch parity gate."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from rayml.config import StrictModel
from rayml.errors import ParityError
from rayml.models import Probability

log = logging.getLogger(__name__)

INPUT_NAME = "features"
OUTPUT_NAME = "probability"


class ExportConfig(StrictModel):
    """ONNX export and the parity gate."""

    tolerance: float = Field(1e-4, gt=0.0, le=1.0, description="max |onnxruntime - torch| probability difference")
    parity_rows: int = Field(2048, ge=1, le=1_000_000, description="held-out rows compared in the parity gate")
    opset: int = Field(18, ge=17, le=23, description="ONNX opset version")


def export_onnx(model: torch.nn.Module, input_dim: int, path: str | Path, opset: int = 18) -> Path:
    """Export ``model`` (logits) as an ONNX graph ``features[batch, input_dim] -> probability[batch]``."""
    wrapped = Probability(model).eval()
    example = torch.zeros(2, input_dim, dtype=torch.float32)
    target = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            str(target),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    return target


def onnx_session(path: str | Path, threads: int = 1, providers: list[str] | None = None) -> Any:
    """An onnxruntime session; CUDA first when the GPU build and a device are present."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)


def parity(model: torch.nn.Module, onnx_path: str | Path, features: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Compare torch and onnxruntime probabilities on ``features``; raise ParityError past ``tolerance``."""
    if features.ndim != 2 or features.shape[0] == 0:
        raise ParityError(f"parity needs a non-empty [rows, features] matrix, got shape {features.shape}")
    wrapped = Probability(model).eval()
    with torch.no_grad():
        expected = wrapped(torch.from_numpy(features.astype(np.float32))).numpy()
    got = onnx_session(onnx_path).run([OUTPUT_NAME], {INPUT_NAME: features.astype(np.float32)})[0]
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    report = {
        "rows": int(features.shape[0]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "tolerance": tolerance,
        "passed": bool(diff.max() <= tolerance),
    }
    if not report["passed"]:
        raise ParityError(
            f"ONNX output differs from torch by up to {report['max_abs_diff']:.3g} on {report['rows']} held-out "
            f"rows (tolerance {tolerance:g}); the export is wrong or numerically unstable. Inspect the model or "
            "raise export.tolerance"
        )
    return report


def run_stage(
    checkpoint_dir: str,
    *,
    model_config: Any,
    input_dim: int,
    test_path: str,
    config: ExportConfig,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Export the checkpoint to ``<out_dir>/model.onnx`` and gate it on parity over held-out test rows."""
    import ray.data

    from rayml.featurize import FEATURES
    from rayml.models import load_trained

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_trained(checkpoint_dir, model_config, input_dim)
    path = export_onnx(model, input_dim, out / "model.onnx", opset=config.opset)
    test = ray.data.read_parquet(test_path).select_columns([FEATURES])
    rows = test.take_batch(config.parity_rows, batch_format="numpy")
    features = np.asarray(rows[FEATURES], dtype=np.float32)
    report = parity(model, path, features, config.tolerance)
    log.info("export: parity max |diff| %.2e on %d rows (tolerance %g)", report["max_abs_diff"], report["rows"],
             config.tolerance)
    return {"onnx_path": str(path), "parity": report, "input_dim": input_dim, "opset": config.opset}
