"""The HTTP surface: routes, input checks, auth, /v1/models, /metrics, health.

Every answer the gateway makes itself is OpenAI-shaped JSON. Paths outside the table are 404
(so vLLM's dev endpoints like /sleep or /collective_rpc can never be reached through it); a
bug answers 500 rather than killing the connection handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .auth import ApiKeys
from .dispatch import Dispatcher
from .errors import error_response
from .inbound import INFERENCE_PATHS, BadRequest, decode_body, parse_model
from .metrics import UNKNOWN_MODEL, GatewayMetrics
from .proxy import forward_headers
from .routing import ModelSpec, ModelTable

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class GatewayHandler:
    def __init__(
        self,
        table: ModelTable,
        dispatcher: Dispatcher,
        metrics: GatewayMetrics,
        *,
        api_keys: ApiKeys | None,
        is_ready: Callable[[], bool],
        max_body: int,
    ) -> None:
        self._max_body = max_body
        self._table, self._dispatcher, self._metrics = table, dispatcher, metrics
        self._keys = api_keys
        self._is_ready = is_ready

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        model = UNKNOWN_MODEL
        status = 500
        try:
            model, resp = await self._route(request)
            status = resp.status
            return resp
        except web.HTTPRequestEntityTooLarge:
            status = 413
            return error_response(413, "The request body is too large.", "body_too_large")
        except Exception:
            log.exception("%s %s failed", request.method, request.path[:200])
            return error_response(500, "Internal error in the gateway.", "internal_error")
        finally:
            if request.path.startswith("/v1/"):
                self._metrics.requests.labels(model, str(status)).inc()

    async def _route(self, request: web.BaseRequest) -> tuple[str, web.StreamResponse]:
        path, method = request.path, request.method
        keys = self._keys
        if (
            path.startswith("/v1/")
            and keys
            and not keys.check(request.headers.get("Authorization"))
        ):
            return UNKNOWN_MODEL, error_response(
                401, "Incorrect or missing API key.", "invalid_api_key"
            )
        if path in INFERENCE_PATHS:
            if method != "POST":
                return UNKNOWN_MODEL, _not_allowed(method, path, "POST")
            return await self._inference(request, path)
        simple = _SIMPLE.get(path)
        if simple is None:
            return UNKNOWN_MODEL, error_response(
                404, f"{path[:200]} is not served here.", "not_found"
            )
        if method not in ("GET", "HEAD"):
            return UNKNOWN_MODEL, _not_allowed(method, path, "GET")
        return UNKNOWN_MODEL, simple(self)

    async def _inference(
        self, request: web.BaseRequest, path: str
    ) -> tuple[str, web.StreamResponse]:
        body = await request.read()  # client_max_size bounds it (413, raised through)
        encoding = request.headers.get("Content-Encoding")
        if encoding:
            decoded = decode_body(body, encoding, self._max_body)
            if isinstance(decoded, BadRequest):
                return UNKNOWN_MODEL, error_response(decoded.status, decoded.message, decoded.code)
            body = decoded
        model = parse_model(body)
        if isinstance(model, BadRequest):
            return UNKNOWN_MODEL, error_response(400, model.message, model.code, param=model.param)
        spec = self._table.lookup(model)
        if spec is None:
            # The name is echoed (truncated) so the user sees their typo; nothing else listed.
            return UNKNOWN_MODEL, error_response(
                404, f"The model `{model[:100]}` does not exist.", "model_not_found", param="model"
            )
        headers = forward_headers(request, strip_auth=self._keys is not None)
        query = request.rel_url.raw_query_string
        target = f"{path}?{query}" if query else path
        resp = await self._dispatcher.dispatch(request, spec, target, headers, body)
        return spec.served_name, resp

    def models(self) -> web.StreamResponse:
        data = [
            _model_entry(spec, len(self._table.awake_replicas(spec.key)))
            for spec in self._table.specs()
        ]
        return web.json_response({"object": "list", "data": data})

    def metrics(self) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(self._metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    def healthz(self) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    def readyz(self) -> web.StreamResponse:
        if self._is_ready():
            return web.json_response({"status": "ready"})
        return error_response(503, "Backends not listed yet.", "not_ready", retry_after=1)


_SIMPLE: dict[str, Callable[[GatewayHandler], web.StreamResponse]] = {
    "/v1/models": GatewayHandler.models,
    "/metrics": GatewayHandler.metrics,
    "/healthz": GatewayHandler.healthz,
    "/readyz": GatewayHandler.readyz,
}


def _model_entry(spec: ModelSpec, awake: int) -> dict[str, object]:
    return {
        "id": spec.served_name,
        "object": "model",
        "created": spec.created or int(time.time()),
        "owned_by": "vllm-sleep",
        # Extensions (OpenAI clients ignore unknown fields): the sleep state at a glance.
        "state": spec.phase,
        "awake_replicas": awake,
        "wake_on_request": spec.wake.on_request,
    }


def _not_allowed(method: str, path: str, allow: str) -> web.Response:
    return error_response(
        405, f"{method} is not allowed on {path}.", "method_not_allowed", headers={"Allow": allow}
    )
