"""The control port: the operator's authenticated API (docs/interfaces.md, "Agent control API").

Every route needs `Authorization: Bearer <token>` except `/metrics` (the agent's own counters,
no secrets, scraped by Prometheus) and `/healthz` (the agent process itself is up).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from ..api import agent_protocol as protocol
from .clock import SYSTEM, Clock
from .config import AgentConfig
from .gate import Gate
from .metrics import AgentMetrics
from .openai_errors import error_body, error_response
from .state import StateBoard
from .token import ControlToken
from .transitions import Outcome, Transitions

log = logging.getLogger(__name__)

_PUBLIC_PATHS = frozenset({"/metrics", "/healthz"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ControlAPI:
    def __init__(
        self,
        config: AgentConfig,
        board: StateBoard,
        gate: Gate,
        transitions: Transitions,
        metrics: AgentMetrics,
        *,
        clock: Clock = SYSTEM,
    ) -> None:
        self._config = config
        self._clock = clock
        self._token = ControlToken(
            config.control_token.get_secret_value(), config.control_token_file
        )
        self._board, self._gate = board, gate
        self._transitions, self._metrics = transitions, metrics

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get(protocol.PATH_STATE, self.state)
        app.router.add_post(protocol.PATH_SLEEP, self.sleep)
        app.router.add_post(protocol.PATH_WAKE, self.wake)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        return app

    def snapshot(self) -> dict[str, object]:
        return self.report().to_json()

    def report(self) -> protocol.StateReport:
        b, g = self._board, self._gate
        now_mono, now_wall = self._clock.monotonic(), self._clock.wall()

        def wall(mono: float | None) -> float | None:
            return None if mono is None else round(now_wall - (now_mono - mono), 3)

        return protocol.StateReport(
            state=b.state,
            level=b.level,
            inflight=g.inflight,
            held=g.held,
            last_activity=wall(g.last_activity),
            since=wall(b.since),
            version=b.version,
            engine_alive=b.engine_alive,
            engine_version=b.engine_version,
            last_error=b.last_error,
            freed_bytes=b.freed_bytes,
            residual_bytes=b.residual_bytes,
            wake_on_request=b.wake_grant,
            woken_by=b.woken_by,
            wake_started=b.wake_started,  # unix seconds already, read once at the start
        )

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _PUBLIC_PATHS and not self._authorized(request):
            return error_response(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            return await handler(request)
        except web.HTTPException as e:  # the router's 404/405, in the same JSON shape
            return error_response(e.status, e.reason)
        except Exception:
            log.exception("control %s %s failed", request.method, request.path)
            return error_response(500, "internal error in the pod agent")

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        # surrogateescape: the header's own bytes, whatever they are (aiohttp decodes them so),
        # so a non-UTF-8 token is a wrong token (401), never an encoding error.
        return scheme.lower() == "bearer" and self._token.matches(
            token.strip().encode("utf-8", "surrogateescape")
        )

    async def state(self, request: web.Request) -> web.Response:
        try:
            wait = _number(
                request.query.get(protocol.PARAM_WAIT, "0"),
                protocol.PARAM_WAIT,
                0.0,
                protocol.MAX_WAIT,
            )
            raw_version = request.query.get(protocol.PARAM_VERSION)
            version = int(raw_version) if raw_version is not None else None
        except ValueError as e:
            return error_response(400, str(e))
        if version is not None and wait > 0:
            await self._board.wait_change(version, wait)
        return web.json_response(self.snapshot())

    async def sleep(self, request: web.Request) -> web.Response:
        try:
            level = int(request.query.get(protocol.PARAM_LEVEL, "1"))
            if level not in protocol.SLEEP_LEVELS:
                raise ValueError(
                    f"{protocol.PARAM_LEVEL} must be one of {protocol.SLEEP_LEVELS}, got {level}"
                )
            drain = _number(
                request.query.get(protocol.PARAM_DRAIN_TIMEOUT, str(self._config.drain_timeout)),
                protocol.PARAM_DRAIN_TIMEOUT,
                0.0,
                math.inf,
            )
            grant = _flag(request.query, protocol.PARAM_WAKE_ON_REQUEST)
            grant_only = _flag(request.query, protocol.PARAM_GRANT_ONLY)
        except ValueError as e:
            return error_response(400, str(e))
        idle = request.query.get(protocol.PARAM_REASON) == protocol.REASON_IDLE
        outcome = await self._transitions.sleep(
            level, drain, idle=idle, grant=grant, grant_only=grant_only
        )
        return self._answer(outcome)

    async def wake(self, _request: web.Request) -> web.Response:
        return self._answer(await self._transitions.wake())

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def _answer(self, outcome: Outcome) -> web.Response:
        if outcome.status == 200:
            return web.json_response(self.snapshot())
        extra: dict[str, object] = {}
        if outcome.vllm_status is not None:
            extra = {"vllm_status": outcome.vllm_status, "vllm_body": outcome.vllm_body}
        body = error_body(outcome.status, outcome.message, extra=extra)
        body["state"] = self.snapshot()  # what the engine is now, so the caller needs no poll
        return web.Response(
            status=outcome.status, body=json.dumps(body).encode(), content_type="application/json"
        )


def _flag(query: Mapping[str, str], name: str) -> bool:
    raw = query.get(name, "0")
    value = protocol.FLAG_VALUES.get(raw.lower())
    if value is None:
        raise ValueError(f"{name} must be one of {sorted(protocol.FLAG_VALUES)}, got {raw!r}")
    return value


def _number(raw: str, name: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not (low <= value) or math.isnan(value):
        raise ValueError(f"{name} must be >= {low:g}, got {raw!r}")
    return min(value, high)
