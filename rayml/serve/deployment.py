"""The Serve deployment: FastAPI routes, request validation, and ``@serve.batch`` over rows.

Imported by ``rayml.serve.build_app`` (and by Serve in each replica), never by ``import rayml``.
"""

# No `from __future__ import annotations`: FastAPI reads route parameter annotations (Request) at definition.
import json
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException

from rayml.errors import RequestError
from rayml.predictor import Predictor
from rayml.serve import ServeConfig

api = FastAPI(title="rayml", docs_url=None, redoc_url=None)


@api.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


@api.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


def _rows(items: list[np.ndarray]) -> int:
    """Batch size in rows, not requests: one request may carry many instances."""
    return sum(len(item) for item in items)


@serve.deployment(name="ModelServer")
@serve.ingress(api)
class ModelServer:
    """One replica: a checksum-verified registry model, scored in dynamic batches of rows."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = ServeConfig(**config)
        self.predictor = Predictor(
            self.config.model_dir, threads=self.config.ort_threads, max_batch_rows=self.config.max_request_rows
        )
        self.infer.set_max_batch_size(self.config.max_batch_size)
        self.infer.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

    @api.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> dict[str, bool]:
        return {"ready": True}

    @api.get("/v2/models/{model}")
    async def metadata(self, model: str) -> dict[str, Any]:
        self._check_model(model)
        return self.predictor.metadata()

    @api.get("/v2/models/{model}/ready")
    async def model_ready(self, model: str) -> dict[str, Any]:
        self._check_model(model)
        return {"name": model, "ready": True}

    @api.post("/predict/{model}")
    async def predict(self, model: str, request: Request) -> dict[str, Any]:
        self._check_model(model)
        payload = await self._json_body(request)
        if not isinstance(payload, dict) or "instances" not in payload:
            raise RequestError('body must be a JSON object with "instances": [{"column": value, ...}]')
        features = self.predictor.features_from_records(payload["instances"])
        probabilities = await self.infer(features)
        threshold = self.predictor.threshold
        return {
            "model_name": self.predictor.name,
            "model_version": self.predictor.version,
            "threshold": threshold,
            "predictions": [{"probability": float(p), "label": int(p >= threshold)} for p in probabilities.tolist()],
        }

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005, batch_size_fn=_rows)
    async def infer(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(b) for b in batches]
        probabilities = self.predictor.predict(np.concatenate(batches))
        return np.split(probabilities, np.cumsum(sizes)[:-1])

    def _check_model(self, model: str) -> None:
        if model != self.predictor.name:
            raise RequestError(f"unknown model {model!r}; this server has {self.predictor.name!r}", status=404)

    async def _json_body(self, request: Request) -> Any:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"body of {declared} bytes exceeds the {limit}-byte limit", status=413)
        body = await request.body()
        if len(body) > limit:
            raise RequestError(f"body of {len(body)} bytes exceeds the {limit}-byte limit", status=413)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"body is not valid JSON ({exc})") from exc
        except RecursionError as exc:
            raise RequestError("body nests too deeply to parse") from exc
