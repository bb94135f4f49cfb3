"""The HTTP surface: routes, input checks, auth, /v1/models, /metrics, health.

Every answer the gateway makes itself is OpenAI-shaped JSON. Paths outside the table are 404
(so vLLM's dev endpoints like /sleep or /collective_rpc can never be reached through it); a
bug answers 500 rather than killing the connection handler. What can be decided from a
request's head (API key, path, method) is decided before its body is read (`head_check`), so
an unauthenticated client cannot make the gateway buffer anything.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..api.openai_errors import ErrorCode
from ..api.routes import GATEWAY_ROUTES, ModelField, Route, RouteKind, is_stored_response
from ..h1 import Reply, Request, Response
from ..h1.wire import find_header
from .auth import ApiKeys
from .dispatch import Dispatcher
from .errors import error_response
from .form import read_form_model
from .inbound import MISSING_MODEL, BadRequest, JsonLimits, decode_body_async, read_model
from .metrics import CLIENT_CLOSED, UNKNOWN_MODEL, GatewayMetrics
from .proxy import forwarded_headers
from .router import ShuttingDown
from .routing import ModelSpec, ModelTable

log = logging.getLogger(__name__)


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
        json_limits: JsonLimits | None = None,
        access_log: bool = False,
    ) -> None:
        self._max_body = max_body
        self._json_limits = json_limits or JsonLimits()
        self._table, self._dispatcher, self._metrics = table, dispatcher, metrics
        self._keys = api_keys
        self._is_ready = is_ready
        self._access_log = access_log
        self._worker_requests = metrics.worker_requests

    async def __call__(self, request: Request, reply: Reply) -> None:
        model = UNKNOWN_MODEL
        started = time.monotonic() if self._access_log else 0.0
        try:
            # _route inlined: one coroutine fewer per request.
            resp = self.head_check(request)
            if resp is None:
                route = GATEWAY_ROUTES.get(request.path)
                if route is not None:
                    model, resp = await self._inference(request, reply, route)
                else:
                    resp = _SIMPLE[request.path](self)
            if resp is not None:
                reply.send(resp)
        except Exception:
            log.exception("%s %s failed", request.method, request.path[:200])
            if reply.started:
                reply.abort()
            else:
                reply.send(error_response(500, "Internal error in the gateway.", "internal_error"))
        finally:
            # No status: the client left first (handler cancelled), counted as nginx's 499.
            status = str(reply.status) if reply.status is not None else CLIENT_CLOSED
            if self._worker_requests is not None:
                self._worker_requests.inc()
            if _is_api(request.path):
                self._metrics.count_request(model, status)
            if self._access_log:
                log.info(
                    '%s "%s %s" %s %.1fms',
                    request.peer,
                    request.method,
                    request.path[:200],
                    status,
                    (time.monotonic() - started) * 1000,
                )

    def rejected(self, path: str, status: int) -> None:
        """Requests the HTTP layer refused before routing (malformed, oversized) still count."""
        if _is_api(path):
            self._metrics.count_request(UNKNOWN_MODEL, str(status))

    def head_check(self, request: Request) -> Response | None:
        """The answer a request gets from its head alone (the h1 server asks before reading a
        body; the handler asks again for requests without one). None: read on."""
        path, method = request.path, request.method
        keys = self._keys
        # `is not None`, not truthiness: configured keys always mean auth, even with none loaded
        # (an empty file refuses everything; it must never read as "no auth").
        if keys is not None and _is_api(path) and not keys.check(request.header("Authorization")):
            return error_response(401, "Incorrect or missing API key.", "invalid_api_key")
        if path in GATEWAY_ROUTES:
            return None if method == "POST" else _not_allowed(method, path, "POST")
        if is_stored_response(path):
            # It names no model, and it lives on the one replica that made it: no affinity
            # to route by (docs/gateway.md, "Routes").
            return error_response(
                404,
                "Stored responses are not routed by the gateway: a stored response lives on the "
                "replica that created it. Send the conversation again instead of "
                "`previous_response_id`, or call that replica.",
                ErrorCode.NOT_ROUTED,
            )
        if path not in _SIMPLE:
            return error_response(404, f"{path[:200]} is not served here.", "not_found")
        if method not in ("GET", "HEAD"):
            # HEAD is served too (RFC 9110 §10.2.1: Allow lists every method the route takes).
            return _not_allowed(method, path, "GET, HEAD")
        return None

    async def _inference(
        self, request: Request, reply: Reply, route: Route
    ) -> tuple[str, Response | None]:
        """A request routed by the model it names: an inference route (held, woken) or a
        per-pod utility (any replica up, never held, never a wake)."""
        body = request.body  # the HTTP layer bounded it (413) and charged it to its budget
        encoding = find_header(request.headers, b"content-encoding")  # bytes: no per-call encode
        if encoding:
            decoded = await decode_body_async(body, encoding.decode("latin-1"), self._max_body)
            if isinstance(decoded, BadRequest):
                return UNKNOWN_MODEL, error_response(decoded.status, decoded.message, decoded.code)
            if decoded is not body and not request.reserve(len(decoded)):
                # The decoded copy is held as long as the request: it counts too.
                return UNKNOWN_MODEL, error_response(
                    503, "The gateway holds too many request bodies; retry.", "busy", retry_after=1
                )
            body = decoded
        utility = route.kind is RouteKind.PASSTHROUGH
        if route.model_field is ModelField.FORM:
            model = await read_form_model(body, request.header("Content-Type"))
        else:
            model = await read_model(body, self._json_limits)
        if isinstance(model, BadRequest):
            message = model.message
            if utility and model.code == MISSING_MODEL:
                # vLLM's own /tokenize and /detokenize default to the pod's one model; the
                # gateway serves many and cannot pick one for the client.
                message = (
                    f"`model` is required: the gateway serves several models and routes "
                    f"{route.path} by the one its body names."
                )
            return UNKNOWN_MODEL, error_response(
                model.status, message, model.code, param=model.param
            )
        spec = self._table.lookup(model)
        if spec is None and not self._is_ready():
            # Before the first list of ModelDeployments the table is empty: every model,
            # real or not, read as "does not exist" (a 404 clients do not retry). The
            # gateway listens (for /healthz) before that list arrives.
            return UNKNOWN_MODEL, _not_ready()
        if spec is None:
            # The name is echoed (truncated) so the user sees their typo; nothing else listed.
            return UNKNOWN_MODEL, error_response(
                404, f"The model `{model[:100]}` does not exist.", "model_not_found", param="model"
            )
        block = forwarded_headers(request, strip_auth=self._keys is not None)
        # Forwarded exactly as matched: what the upstream sees is the path that was checked.
        path = route.path
        target = (f"{path}?{request.query}" if request.query else path).encode("latin-1")
        if utility:
            return spec.served_name, await self._dispatcher.utility(
                reply, spec, target, block, body
            )
        try:
            resp = await self._dispatcher.dispatch(reply, spec, target, block, body)
        except ShuttingDown:
            # Held (never forwarded) when the gateway began to stop: a clean 503 the client
            # can retry on another replica, not a connection cut at the end of the grace.
            if reply.started:  # the agent's answer began just as the hold was ended
                reply.abort()
                return spec.served_name, None
            resp = error_response(
                503, "The gateway is shutting down; retry.", "shutting_down", retry_after=1
            )
        return spec.served_name, resp

    def models(self) -> Response:
        if not self._is_ready():  # an empty list before the first one arrived is a lie
            return _not_ready()
        data = [
            _model_entry(spec, len(self._table.awake_replicas(spec.key)))
            for spec in self._table.specs()
        ]
        return _json({"object": "list", "data": data})

    def metrics(self) -> Response:
        return Response(
            200, generate_latest(self._metrics.exposed), content_type=CONTENT_TYPE_LATEST
        )

    def healthz(self) -> Response:
        return _json({"status": "ok"})

    def readyz(self) -> Response:
        if self._is_ready():
            return _json({"status": "ready"})
        return _not_ready()


_SIMPLE: dict[str, Callable[[GatewayHandler], Response]] = {
    "/v1/models": GatewayHandler.models,
    "/metrics": GatewayHandler.metrics,
    "/healthz": GatewayHandler.healthz,
    "/readyz": GatewayHandler.readyz,
}


def _is_api(path: str) -> bool:
    """The OpenAI-style API (behind the API keys, counted per model), not the gateway's own
    endpoints: /v1/* and vLLM's routes outside /v1 (/pooling, /score, /inference/v1/generate...)."""
    return path.startswith("/v1/") or path in GATEWAY_ROUTES


def _json(doc: object, status: int = 200) -> Response:
    return Response(status, json.dumps(doc).encode())


def _model_entry(spec: ModelSpec, awake: int) -> dict[str, object]:
    entry: dict[str, object] = {
        "id": spec.served_name,
        "object": "model",
        "created": spec.created or int(time.time()),
        "owned_by": "vllm-sleep",
        # vLLM's own fields, as its /v1/models reports them (clients read `root` and
        # `max_model_len`); a context length the spec does not state is left out, not guessed.
        "root": spec.root or spec.served_name,
        "parent": None,
    }
    if spec.max_model_len is not None:
        entry["max_model_len"] = spec.max_model_len
    # Extensions (OpenAI clients ignore unknown fields): the sleep state at a glance.
    entry["state"] = spec.phase
    entry["awake_replicas"] = awake
    entry["wake_on_request"] = spec.wake.on_request
    return entry


def _not_ready() -> Response:
    return error_response(503, "Backends not listed yet.", "not_ready", retry_after=1)


def _not_allowed(method: str, path: str, allow: str) -> Response:
    return error_response(
        405, f"{method} is not allowed on {path}.", "method_not_allowed", headers={"Allow": allow}
    )
