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
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from rayml import artifacts
from rayml import storage as store
from rayml.artifacts import NAME_PATTERN
from rayml.config import StrictModel, apply_overrides, load_yaml, parse
from rayml.errors import ConfigError
from rayml.serve.routing import ModelRoutes

log = logging.getLogger(__name__)


class CanaryConfig(StrictModel):
    """A candidate version that takes a share of live traffic."""

    version: str = Field(pattern=NAME_PATTERN, description="registered version number, e.g. '3'")
    weight: float = Field(gt=0.0, lt=1.0, description="share of requests it answers, e.g. 0.1 for 90/10")


class ShadowConfig(StrictModel):
    """A candidate version that gets a copy of live traffic; its answers are recorded, never returned."""

    version: str = Field(pattern=NAME_PATTERN, description="registered version number")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of live requests copied to it")


class BatchingOverride(StrictModel):
    """Dynamic batching of one model, where it differs from the application's defaults."""

    max_batch_size: int | None = Field(None, ge=1, le=65_536, description="max rows per ONNX Runtime call")
    batch_wait_timeout_s: float | None = Field(None, ge=0.0, le=10.0, description="max wait for a batch to fill")
    max_concurrent_batches: int | None = Field(
        None, ge=1, le=64, description="batches scored at once per replica (ONNX Runtime in threads when > 1)"
    )


class ModelEntry(StrictModel):
    """One model name and the versions served under it."""

    name: str = Field(pattern=NAME_PATTERN, description="registered model name (<registry>/<name>)")
    versions: list[str] = Field(
        default_factory=list, description="versions to load; empty = the latest registered version"
    )
    default_version: str | None = Field(None, description="answers requests without a version; default: newest")
    canary: CanaryConfig | None = None
    shadow: ShadowConfig | None = None
    batching: BatchingOverride | None = Field(None, description="this model's batching; default: the app's")

    @field_validator("versions")
    @classmethod
    def _version_names(cls, versions: list[str]) -> list[str]:
        for version in versions:
            if not version.isdigit():
                raise ValueError(f"version {version!r} is not a registered version number like '1'")
        return versions


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling of the model replicas."""

    min_replicas: int = Field(1, ge=0, le=1024)
    max_replicas: int = Field(4, ge=1, le=1024)
    target_ongoing_requests: float = Field(32.0, gt=0.0, description="per replica, before scaling up")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}")
        return self


class ServeConfig(StrictModel):
    """A rayml Serve application: the ``args`` of ``build_app`` (a serve_configs/ application)."""

    registry: str = Field(
        "registry", min_length=1, description="registry root directory, or s3://bucket/prefix (reached with the "
        "AWS variables in the replicas' environment)"
    )
    models: list[ModelEntry] = Field(min_length=1, description="models (and versions) this application serves")
    max_batch_size: int = Field(256, ge=1, le=65_536, description="max rows per ONNX Runtime call")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=10.0, description="max wait for a batch to fill")
    max_concurrent_batches: int = Field(
        1, ge=1, le=64, description="batches scored at once per replica (ONNX Runtime in threads when > 1)"
    )
    max_request_rows: int = Field(256, ge=1, le=65_536, description="max instances in one request (413 past it)")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30, description="max request body size (413 past it)")
    max_ongoing_requests: int | None = Field(
        None, ge=1, le=100_000,
        description="per replica; default 2 x the largest max_batch_size x max_concurrent_batches of any model, "
        "so batches can form",
    )
    num_replicas: int = Field(1, ge=1, le=1024, description="replicas (ignored when autoscaling is set)")
    autoscaling: AutoscalingConfig | None = Field(None, description="autoscale replicas instead of a fixed count")
    num_cpus: float = Field(1.0, gt=0.0, le=256.0, description="CPUs reserved per replica")
    ort_threads: int | None = Field(None, ge=1, le=256, description="ONNX Runtime threads; default = num_cpus")
    auth_token_env: str | None = Field(
        None, pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="environment variable holding a bearer token required on every non-health route",
    )
    drift_window_rows: int = Field(10_000, ge=100, le=10_000_000, description="live rows compared for drift")
    access_log: bool = Field(
        False, description="Serve's per-request access log line in the replica log (about 9% of a busy replica's "
        "CPU); requests by model, version, route and status are always counted in the metrics",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"a model is listed twice in models: {names}; list each name once")
        for name in names:
            knobs = self.batching(name)
            where = f"model {name!r}: " if len(names) > 1 else ""
            if self.max_request_rows > knobs["max_batch_size"]:
                raise ValueError(
                    f"{where}max_request_rows ({self.max_request_rows}) exceeds max_batch_size "
                    f"({knobs['max_batch_size']}); one request must fit in one batch. Lower max_request_rows or "
                    "raise max_batch_size"
                )
            needed = knobs["max_batch_size"] * knobs["max_concurrent_batches"]
            if self.max_ongoing_requests is not None and self.max_ongoing_requests < needed:
                raise ValueError(
                    f"{where}max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size x "
                    f"max_concurrent_batches ({needed}); a replica would never see enough requests to fill its "
                    "batches. Raise max_ongoing_requests or leave it unset"
                )
        return self

    def batching(self, model: str) -> dict[str, Any]:
        """The batching knobs of ``model``: its own ``batching`` entries over the application's."""
        knobs = {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s,
                 "max_concurrent_batches": self.max_concurrent_batches}
        for entry in self.models:
            if entry.name == model and entry.batching is not None:
                knobs.update(entry.batching.model_dump(exclude_none=True))
        return knobs

    def ongoing_requests(self) -> int:
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        return 2 * max(k["max_batch_size"] * k["max_concurrent_batches"]
                       for k in (self.batching(m.name) for m in self.models))

    def threads(self) -> int:
        return self.ort_threads or max(1, int(self.num_cpus))


def resolve_routes(config: ServeConfig) -> dict[str, ModelRoutes]:
    """Versions to load and routes per model, checked against the registry (fails at deploy time)."""
    routes = {}
    problems = []
    for entry in config.models:
        registered = [str(v) for v in artifacts.versions(store.join(config.registry, entry.name))]
        if not registered:
            problems.append(f"models: {entry.name!r} has no registered version under {config.registry}")
            continue
        wanted = list(entry.versions) or [registered[-1]]
        for extra in (entry.canary, entry.shadow):
            if extra is not None and extra.version not in wanted:
                wanted.append(extra.version)
        missing = [v for v in wanted if v not in registered]
        if missing:
            problems.append(
                f"models: {entry.name!r} version(s) {missing} are not registered; registered: {registered}"
            )
            continue
        ordered = tuple(sorted(set(wanted), key=int))
        default = entry.default_version or ordered[-1]
        if default not in ordered:
            problems.append(f"models: {entry.name!r} default_version {default!r} is not in versions {ordered}")
            continue
        routes[entry.name] = ModelRoutes(
            versions=ordered,
            default=default,
            canary=entry.canary.version if entry.canary else None,
            canary_weight=entry.canary.weight if entry.canary else 0.0,
            shadow=entry.shadow.version if entry.shadow else None,
            shadow_fraction=entry.shadow.fraction if entry.shadow else 0.0,
        )
    if problems:
        raise ConfigError(problems, "serve config")
    return routes


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder: the ``import_path`` of serve_configs/ files (``rayml.serve:build_app``)."""
    config = parse(ServeConfig, dict(args), source="serve config args")
    routes = resolve_routes(config)
    for name, model in routes.items():
        for version in model.versions:
            artifacts.verify(store.join(config.registry, name, version))  # fail at deploy, not in a replica
    from rayml.serve.deployment import ModelServer

    options: dict[str, Any] = {
        "max_ongoing_requests": config.ongoing_requests(),
        "ray_actor_options": {"num_cpus": config.num_cpus},
        # Routing lives in user_config: `serve deploy` (declarative) with a new default, canary or shadow only
        # reconfigures the running replicas. serve.run (imperative, `start` below) gives every deploy a new code
        # version, so Serve rolls the replicas instead; neither drops a request in flight.
        "user_config": {"models": [m.model_dump() for m in config.models]},
        "logging_config": {"enable_access_log": config.access_log},
    }
    if config.autoscaling is not None:
        options["autoscaling_config"] = config.autoscaling.model_dump()
    else:
        options["num_replicas"] = config.num_replicas
    return ModelServer.options(**options).bind(config.model_dump(exclude={"models"}))


def args_for_model_dir(model_dir: str) -> dict[str, Any]:
    """Serve args for ``rayml serve <registry>/<model>[/<version>]`` (a local path or an s3:// URI)."""
    if store.is_remote(model_dir):
        uri = model_dir.rstrip("/")
        registry, _, name = uri.rpartition("/")
        if store.file_type(store.join(uri, artifacts.MANIFEST)) == "file":  # a version directory
            root, _, model = registry.rpartition("/")
            return {"registry": root, "models": [{"name": model, "versions": [name]}]}
        if artifacts.versions(uri):
            return {"registry": registry, "models": [{"name": name}]}
    else:
        path = Path(model_dir).resolve()
        if (path / artifacts.MANIFEST).is_file():  # a version directory
            return {"registry": str(path.parent.parent),
                    "models": [{"name": path.parent.name, "versions": [path.name]}]}
        if artifacts.versions(path):
            return {"registry": str(path.parent), "models": [{"name": path.name}]}
    raise ConfigError(
        f"{model_dir!r} is neither a registered model (<registry>/<model>) nor one of its versions; run the "
        "pipeline first or pass a serve config file", "rayml serve",
    )


def start(
    args: dict[str, Any], *, host: str = "127.0.0.1", port: int = 8000, app_name: str = "rayml",
    route_prefix: str = "/", overrides: list[str] | None = None,
) -> str:
    """Deploy a rayml application (serve args) on the connected Ray cluster; return its base URL.

    Deploying again under the same ``app_name`` updates the running application with a rolling replacement of
    its replicas (serve.run gives each deploy a new code version), dropping no request in flight.
    """
    from ray import serve

    app = build_app(apply_overrides(args, overrides or [], source="serve overrides"))
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=app_name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def serve_forever(target: str, *, host: str, port: int, overrides: list[str] | None = None) -> None:
    """``rayml serve``: deploy a model directory or every application of a serve config file, print the
    routes, and keep serving until SIGINT/SIGTERM."""
    from ray import serve

    from rayml import runtime

    where = runtime.connect()
    log.info("%s", where)
    if target.endswith((".yaml", ".yml")):
        applications = load_yaml(target).get("applications") or []
        if len(applications) != 1:
            raise ConfigError(f"{target}: rayml serve deploys one application; use `serve deploy` for several")
        args, name = applications[0].get("args") or {}, applications[0].get("name", "rayml")
    else:
        args, name = args_for_model_dir(target), "rayml"
    url = start(args, host=host, port=port, app_name=name, overrides=overrides)
    log.info("serving %s: POST %s/predict/<model>  POST %s/v2/models/<model>/infer  (Ctrl-C to stop)", target,
             url, url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    serve.shutdown()
    runtime.shutdown_if_embedded(where)

