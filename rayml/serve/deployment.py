"""The Serve deployment: routes, auth, request validation, version routing and ``@serve.batch`` over rows.

One replica holds every configured (model, version) and scores dynamic batches of rows with ONNX Runtime.
Routing (default version, canary weight, shadow) arrives as Serve ``user_config``, so ``serve deploy`` with a
new routing reconfigures running replicas in place without dropping requests. Imported by
``rayml.serve.build_app`` (and by Serve in each replica), never by ``import rayml``.
"""

# No `from __future__ import annotations`: FastAPI reads route parameter annotations (Request) at definition.
import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException

from rayml import __version__, drift
from rayml.errors import RequestError
from rayml.recorders import Recorder
from rayml.predictor import Predictor
from rayml.serve import ModelEntry, ServeConfig, resolve_routes
from rayml.serve import protocol
from rayml.serve.routing import RoutingTable

log = logging.getLogger(__name__)

api = FastAPI(title="rayml", docs_url=None, redoc_url=None, openapi_url=None)
_PSI_EVERY_ROWS = 100  # recompute drift gauges after this many live rows (cheap: ~10 buckets a feature)


@api.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(protocol.error_body(str(exc.detail)), status_code=exc.status_code)


@api.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse(protocol.error_body(exc.message), status_code=exc.status)


def _rows(items: list[tuple[Any, pa.Table, str]]) -> int:
    """Batch size in rows, not requests: one request may carry many instances."""
    return sum(item[1].num_rows for item in items)


class _Served:
    """One loaded version with its metrics and drift window."""

    def __init__(self, predictor: Predictor, window_rows: int) -> None:
        self.predictor = predictor
        self.metrics = Recorder(predictor.name, predictor.version)
        self.window = drift.RollingWindow(window_rows) if predictor.reference else None
        self.rows_since_psi = 0

    def observe(self, table: pa.Table, probabilities: np.ndarray) -> None:
        self.metrics.batch_rows(table.num_rows)
        self.metrics.prediction_scores(probabilities.tolist())
        if self.window is None:
            return
        reference = self.predictor.reference
        columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in reference["features"]}
        self.window.add(drift.counts(reference, columns), table.num_rows)
        self.rows_since_psi += table.num_rows
        if self.rows_since_psi >= _PSI_EVERY_ROWS:
            self.rows_since_psi = 0
            self.metrics.feature_psi(drift.psi_by_feature(reference, self.window.totals()))


@serve.deployment(name="ModelServer")
@serve.ingress(api)
class ModelServer:
    """One replica serving every configured model version."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.served: dict[tuple[str, str], _Served] = {}
        self.routes = RoutingTable({})
        token_env = settings.get("auth_token_env")
        self.token = os.environ.get(token_env, "") if token_env else ""
        if token_env and not self.token:
            raise RuntimeError(f"auth_token_env names {token_env}, which is not set in the replica's environment")
        # model name -> (its batching knobs, the @serve.batch function scoring its rows)
        self.batchers: dict[str, tuple[dict[str, Any], Callable[..., Awaitable[np.ndarray]]]] = {}
        self._shadow_tasks: set[asyncio.Task] = set()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load newly listed versions, then switch routing in one assignment; requests in flight keep the
        predictor they started with."""
        config = ServeConfig(**self.settings, models=[ModelEntry(**m) for m in user_config["models"]])
        routes = resolve_routes(config)
        served = {}
        for name, model in routes.items():
            for version in model.versions:
                key = (name, version)
                served[key] = self.served.get(key) or _Served(
                    Predictor(f"{config.registry}/{name}/{version}", threads=config.threads(),
                              max_batch_rows=config.max_request_rows, spinning=False),
                    config.drift_window_rows,
                )
        batchers = {}
        for entry in config.models:
            knobs = config.batching(entry.name)
            current = self.batchers.get(entry.name)
            # Serve cannot change a batch queue's concurrency, so changed knobs get a new queue; requests already
            # queued on the old one are scored there.
            batchers[entry.name] = current if current and current[0] == knobs else (knobs, self._batcher(knobs))
        dropped = [old for key, old in self.served.items() if key not in served]
        self.served, self.routes, self.batchers = served, RoutingTable(routes), batchers
        for old in dropped:
            old.metrics.close()  # its drift gauges stop being refreshed and age out of Prometheus
        log.info("serving %s", {k: (v.default, v.canary, v.shadow) for k, v in routes.items()})

    # ---- health and metadata (no auth: probes must work without a token)

    @api.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> JSONResponse:
        ready = bool(self.served)
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2")
    async def server(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return protocol.server_metadata(__version__, ["model_repository_versions", "canary", "shadow"])

    @api.get("/v2/models/{model}")
    async def model_metadata(self, model: str, request: Request) -> dict[str, Any]:
        return self._metadata(request, model, None)

    @api.get("/v2/models/{model}/versions/{version}")
    async def version_metadata(self, model: str, version: str, request: Request) -> dict[str, Any]:
        return self._metadata(request, model, version)

    @api.get("/v2/models/{model}/ready")
    async def model_ready(self, model: str, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {"name": model, "ready": self._served(model, self.routes.get(model).default) is not None}

    @api.get("/v2/models/{model}/versions/{version}/ready")
    async def version_ready(self, model: str, version: str, request: Request) -> dict[str, Any]:
        self._authorize(request)
        chosen = self.routes.choose(model, version).version
        return {"name": model, "version": chosen, "ready": self._served(model, chosen) is not None}

    # ---- inference

    @api.post("/v2/models/{model}/infer")
    async def v2_infer(self, model: str, request: Request) -> dict[str, Any]:
        return await self._v2(request, model, None)

    @api.post("/v2/models/{model}/versions/{version}/infer")
    async def v2_version_infer(self, model: str, version: str, request: Request) -> dict[str, Any]:
        return await self._v2(request, model, version)

    @api.post("/predict/{model}")
    async def predict(self, model: str, request: Request) -> dict[str, Any]:
        return await self._predict(request, model, None)

    @api.post("/predict/{model}/versions/{version}")
    async def predict_version(self, model: str, version: str, request: Request) -> dict[str, Any]:
        return await self._predict(request, model, version)

    async def infer(self, model: str, served: _Served, raw: pa.Table, form: str) -> np.ndarray:
        """Scores of ``raw``'s rows (untyped: validated in the batch; ``form`` names bad rows, see
        ``Predictor.validate_requests``) by ``served`` (one version of ``model``), in a dynamic batch of the
        model's requests. The item carries the loaded version itself, so a reconfigure that drops it while the
        request waits in the queue does not fail the batch. Raises the RequestError naming this request's bad
        fields; the other requests of its batch are answered."""
        result = await self.batchers[model][1]((served, raw, form))
        if isinstance(result, RequestError):
            raise result
        return result

    def _batcher(self, knobs: dict[str, Any]) -> Callable[..., Awaitable[np.ndarray]]:
        """A ``@serve.batch`` function with these knobs. With more than one concurrent batch, ONNX Runtime runs
        in a worker thread (it releases the GIL), so one batch is scored while the next one forms."""
        offload = knobs["max_concurrent_batches"] > 1

        async def score(items: list[tuple[_Served, pa.Table, str]]) -> list[np.ndarray | RequestError]:
            return await self._score_batch(items, offload)

        return serve.batch(max_batch_size=knobs["max_batch_size"], batch_wait_timeout_s=knobs["batch_wait_timeout_s"],
                           max_concurrent_batches=knobs["max_concurrent_batches"], batch_size_fn=_rows)(score)

    @staticmethod
    async def _score_batch(items: list[tuple[_Served, pa.Table, str]],
                           offload: bool) -> list[np.ndarray | RequestError]:
        """Validate and score one dynamic batch: one validation and one ORT call per version it holds. A request
        with a bad field gets its RequestError as its result; the rest are scored."""
        results: list[np.ndarray | RequestError | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (served, _, _) in enumerate(items):
            groups.setdefault(id(served), []).append(i)
        for indexes in groups.values():
            served = items[indexes[0]][0]
            table, outcomes = served.predictor.validate_requests([items[i][1] for i in indexes],
                                                                 [items[i][2] for i in indexes])
            good = [i for i, outcome in zip(indexes, outcomes) if outcome is None]
            for i, outcome in zip(indexes, outcomes):
                if outcome is not None:
                    results[i] = outcome
            if not good:
                continue
            if offload:
                probabilities = await asyncio.to_thread(served.predictor.predict_table, table)
            else:
                probabilities = served.predictor.predict_table(table)
            # on the event loop: metrics and drift windows are not locked
            served.observe(table, served.predictor.scores(probabilities))
            offset = 0
            for i in good:
                rows = items[i][1].num_rows
                results[i] = probabilities[offset:offset + rows]
                offset += rows
        return results

    # ---- helpers

    async def _predict(self, request: Request, model: str, version: Optional[str]) -> dict[str, Any]:
        started = time.perf_counter()
        self._authorize(request)
        choice = self.routes.choose(model, version)
        served = self._ready(model, choice.version)
        status = 200
        try:
            payload = await self._json_body(request)
            if not isinstance(payload, dict) or "instances" not in payload:
                raise RequestError('body must be a JSON object with "instances": [{"column": value, ...}]')
            raw = served.predictor.records_raw(payload["instances"])
            probabilities = await self.infer(model, served, raw, "instances")
        except RequestError as exc:
            status = exc.status
            raise
        finally:
            served.metrics.request("predict", status, time.perf_counter() - started)
        self._mirror(model, choice.shadow, raw, "instances", served.predictor.scores(probabilities))
        answer = {"model_name": model, "model_version": choice.version}
        if served.predictor.threshold is not None:
            answer["threshold"] = served.predictor.threshold
        return {**answer, "predictions": served.predictor.answers(probabilities)}

    async def _v2(self, request: Request, model: str, version: Optional[str]) -> dict[str, Any]:
        started = time.perf_counter()
        self._authorize(request)
        choice = self.routes.choose(model, version)
        served = self._ready(model, choice.version)
        predictor = served.predictor
        status = 200
        try:
            body = await self._json_body(request)
            parsed = protocol.parse_infer_request(
                body, predictor.v2_inputs(), predictor.v2_outputs(), self.settings["max_request_rows"]
            )
            if parsed.rows == 0:
                raise RequestError("the request holds no rows; send at least one")
            raw = predictor.tensors_raw(parsed.tensors)
            probabilities = await self.infer(model, served, raw, "tensors")
        except RequestError as exc:
            status = exc.status
            raise
        finally:
            served.metrics.request("v2_infer", status, time.perf_counter() - started)
        self._mirror(model, choice.shadow, raw, "tensors", predictor.scores(probabilities))
        outputs = predictor.v2_tensors(probabilities)
        chosen = {name: outputs[name] for name in parsed.requested_outputs}
        return protocol.infer_response(model, choice.version, parsed.id, chosen, predictor.v2_outputs())

    def _mirror(self, model: str, shadow: Optional[str], raw: pa.Table, form: str, live: np.ndarray) -> None:
        """Score a copy of the request with the shadow version after answering (validated by that version, whose
        schema may differ); record, never return."""
        if shadow is None:
            return

        async def run() -> None:
            served = self.served.get((model, shadow))
            if served is None:
                return
            started = time.perf_counter()
            try:
                scores = served.predictor.scores(await self.infer(model, served, raw, form))
            except Exception:  # noqa: BLE001 - a failing shadow must never affect live traffic
                served.metrics.shadow("error")
                return
            served.metrics.observe_latency("shadow", time.perf_counter() - started)
            served.metrics.shadow("ok", np.abs(scores - live).tolist())

        task = asyncio.get_running_loop().create_task(run())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    def _metadata(self, request: Request, model: str, version: Optional[str]) -> dict[str, Any]:
        self._authorize(request)
        routes = self.routes.get(model)
        chosen = self.routes.choose(model, version).version if version else routes.default
        predictor = self._ready(model, chosen).predictor
        return protocol.model_metadata(model, list(routes.versions), "onnxruntime_onnx", predictor.v2_inputs(),
                                       predictor.v2_outputs())

    def _ready(self, model: str, version: str) -> _Served:
        served = self._served(model, version)
        if served is None:
            raise RequestError(f"model {model!r} version {version!r} is not loaded yet; retry shortly", status=503)
        return served

    def _served(self, model: str, version: str) -> Optional[_Served]:
        return self.served.get((model, version))

    def _authorize(self, request: Request) -> None:
        if not self.token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), self.token):
            raise RequestError("missing or wrong bearer token; send Authorization: Bearer <token>", status=401)

    async def _json_body(self, request: Request) -> Any:
        limit = self.settings["max_body_bytes"]
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
