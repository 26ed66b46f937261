"""Ray Serve application: a registered model behind HTTP, with dynamic batching.

This module holds the config, the application builder and the ``rayml serve`` verb; the deployment itself
(routes, batching) is ``rayml.serve.deployment``, imported only when an application is built.

Routes (see DESIGN.md): ``POST /predict/{model}`` with ``{"instances": [{column: value}]}``, the Open Inference
Protocol v2 health routes, and model metadata. Each replica loads ONNX + featurizer JSON from the registry
(checksums verified), validates and featurizes each request on arrival, and runs ONNX Runtime once per
dynamic batch of rows. Malformed requests get a 4xx with ``{"error": "..."}``; only a server fault is a 5xx.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from pydantic import Field, model_validator

from rayml.config import StrictModel, apply_overrides, parse

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
    def _batches_can_form(self) -> ServeConfig:
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


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder: ``serve run rayml.serve:build_app model_dir=registry/fraud`` or a
    serve_configs/ file whose ``args`` are a ``ServeConfig``."""
    config = parse(ServeConfig, dict(args), source="serve config args")
    from rayml import artifacts

    artifacts.verify(artifacts.resolve_version_dir(config.model_dir))  # fail at deploy time, not in a replica
    from rayml.serve.deployment import ModelServer

    deployment = ModelServer.options(
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

