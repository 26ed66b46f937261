"""Ray Serve application: a registered model behind HTTP, with dynamic batching.

Routes (see DESIGN.md): ``POST /predict/{model}`` with ``{"instances": [{column: value}]}``, the Open Inference
Protocol v2 health routes, and model metadata. Each replica loads ONNX + featurizer JSON from the registry
(checksums verified), validates and featurizes each request on arrival, and runs ONNX Runtime once per
dynamic batch of rows. Malformed requests get a 4xx with ``{"error": "..."}``; only a server fault is a 5xx.
"""

# No `from __future__ import annotations` here: FastAPI resolves route parameter annotations (Request) at
# definition time, and they are imported inside _deployment().
import json
import logging
import signal
import threading
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from rayml.config import StrictModel, apply_overrides, parse
from rayml.errors import RequestError

log = logging.getLogger(__name__)


class ServeConfig(StrictModel):
    """One served model: the arguments of ``build_app`` (the ``args`` of a serve_configs/ application)."""

    model_dir: str = Field(min_length=1, description="<registry>/<model> (latest version) or a version dir")
    max_batch_size: int = Field(256, ge=1, le=65_536, description="max rows per ONNX Runtime call")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=10.0, description="max wait for a batch to fill")
    max_request_rows: int = Field(256, ge=1, le=65_536, description="max instances in one request (413 past it)")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30, description="max request body size (413 past it)")
    max_ongoing_requests: int | None = Field(
        None, ge=1, le=100_000, description="per replica; default 2 x max_batch_size so batches can form"
    )
    num_replicas: int = Field(1, ge=1, le=1024, description="replicas of the model deployment")
    num_cpus: float = Field(1.0, gt=0.0, le=256.0, description="CPUs reserved per replica")
    ort_threads: int = Field(1, ge=1, le=256, description="ONNX Runtime intra-op threads per replica")

    @model_validator(mode="after")
    def _batches_can_form(self) -> "ServeConfig":
        if self.max_request_rows > self.max_batch_size:
            raise ValueError(
                f"max_request_rows ({self.max_request_rows}) exceeds max_batch_size ({self.max_batch_size}); "
                "one request must fit in one batch. Lower max_request_rows or raise max_batch_size"
            )
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size "
                f"({self.max_batch_size}); a replica would never see enough requests to fill a batch"
            )
        return self

    def ongoing_requests(self) -> int:
        return self.max_ongoing_requests or 2 * self.max_batch_size


def _rows(items: list[np.ndarray]) -> int:
    return sum(len(item) for item in items)


def _deployment() -> Any:
    """Build the Serve deployment class (here, not at import, so importing rayml.serve imports no Ray)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve
    from starlette.exceptions import HTTPException

    from rayml.predictor import Predictor

    api = FastAPI(title="rayml", docs_url=None, redoc_url=None)

    @api.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @api.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @serve.deployment(name="ModelServer")
    @serve.ingress(api)
    class ModelServer:
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
                "predictions": [
                    {"probability": float(p), "label": int(p >= threshold)} for p in probabilities.tolist()
                ],
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
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.config.max_body_bytes:
                raise RequestError(f"body of {declared} bytes exceeds the {self.config.max_body_bytes}-byte limit",
                                   status=413)
            body = await request.body()
            if len(body) > self.config.max_body_bytes:
                raise RequestError(f"body of {len(body)} bytes exceeds the {self.config.max_body_bytes}-byte limit",
                                   status=413)
            try:
                return json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(f"body is not valid JSON ({exc})") from exc
            except RecursionError as exc:
                raise RequestError("body nests too deeply to parse") from exc

    return ModelServer


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder: ``serve run rayml.serve:build_app model_dir=registry/fraud`` or a
    serve_configs/ file whose ``args`` are a ``ServeConfig``."""
    config = parse(ServeConfig, dict(args), source="serve config args")
    from rayml import artifacts

    artifacts.verify(artifacts.resolve_version_dir(config.model_dir))  # fail at deploy time, not in a replica
    deployment = _deployment().options(
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.ongoing_requests(),
        ray_actor_options={"num_cpus": config.num_cpus},
    )
    return deployment.bind(config.model_dump())


def start(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, overrides: list[str] | None = None,
          app_name: str = "rayml") -> str:
    """Deploy ``model_dir`` on the connected Ray cluster; return the base URL."""
    from ray import serve

    args = apply_overrides({"model_dir": model_dir}, overrides or [], source="serve overrides")
    app = build_app(args)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=app_name, route_prefix="/")
    return f"http://{host}:{port}"


def serve_forever(model_dir: str, *, host: str, port: int, overrides: list[str] | None = None) -> None:
    """``rayml serve``: deploy, print the routes, and keep serving until SIGINT/SIGTERM."""
    from ray import serve

    from rayml import runtime

    where = runtime.connect()
    log.info("%s", where)
    url = start(model_dir, host=host, port=port, overrides=overrides)
    log.info("serving %s: POST %s/predict/<model>  GET %s/v2/health/ready  (Ctrl-C to stop)", model_dir, url, url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    serve.shutdown()
    runtime.shutdown_if_embedded(where)

