"""The HTTP front of one engine: an aiohttp low-level server on the engine's own socket.

A low-level `web.Server` per engine (no Application, no router objects) keeps 1000 idle engines
cheap; the route table is one shared dict. While the engine loads, requests are held unanswered,
like a real vLLM whose socket is bound before the server runs; when startup fails, the held
connections are dropped. An exited engine stops listening: new connections are refused.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from .engine import SimEngine
from .http_util import Route, detail, json_response
from .routes_checkpoint import CHECKPOINT_ROUTES
from .routes_dev import DEV_ROUTES
from .routes_info import INFO_ROUTES
from .routes_openai import OPENAI_ROUTES
from .routes_rl import RL_ROUTES
from .routes_tasks import TASK_ROUTES, templated_route

log = logging.getLogger(__name__)

ROUTES: dict[str, Route] = {
    **INFO_ROUTES,
    **OPENAI_ROUTES,
    **TASK_ROUTES,
    **DEV_ROUTES,
    **RL_ROUTES,
    **CHECKPOINT_ROUTES,
}
# vLLM (uvicorn, FastAPI) reads a body of any size. The simulator's bound is above what the
# agent and the gateway forward at their defaults (--max-body-bytes 32 MiB, docs/security.md),
# so a large upload the pod accepts reaches the engine here as it would reach vLLM; past it, 413.
MAX_BODY = 64 << 20
AUTH_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")  # 0.33 authenticate.py; ≤0.11 only /v1


async def dispatch(engine: SimEngine, request: web.BaseRequest) -> web.StreamResponse:
    path = request.path
    if path.startswith("/_sim/"):  # simulator-only introspection, answers in every state
        return await _sim_route(engine, path)
    await engine.ready.wait()
    if engine.phase == "failed":  # the server never started: drop what the backlog held
        if request.transport is not None:
            request.transport.close()
        raise ConnectionResetError("engine exited")
    route = ROUTES.get(path) or templated_route(path)
    if (
        route is None
        or (route.dev and not engine.cfg.dev_mode)
        or (route.sleep_mode and not engine.cfg.enable_sleep_mode)
        or engine.cfg.profile not in route.profiles
    ):
        return detail(404, "Not Found")
    handler = route.methods.get(request.method)
    if handler is None:
        return detail(405, "Method Not Allowed")
    if engine.cfg.api_keys and path.startswith(AUTH_PREFIXES) and request.method != "OPTIONS":
        auth = request.headers.get("Authorization", "")
        if auth not in {f"Bearer {k}" for k in engine.cfg.api_keys}:
            return json_response({"error": "Unauthorized"}, 401)
    if not route.inference:
        return await handler(engine, request)
    engine.server_load += 1
    try:
        return await handler(engine, request)
    finally:
        engine.server_load -= 1


async def _sim_route(engine: SimEngine, path: str) -> web.Response:
    if path == "/_sim/state":
        return json_response(engine.snapshot())
    if path == "/_sim/violations":
        items = [v.model_dump(mode="json") for v in engine.violations]
        return json_response({"count": len(items), "violations": items})
    return detail(404, "Not Found")


def _large_bodies(
    message: RawRequestMessage,
    payload: StreamReader,
    protocol: RequestHandler,
    writer: AbstractStreamWriter,
    task: asyncio.Task[None],
) -> web.BaseRequest:
    """aiohttp's request, with MAX_BODY instead of its 1 MiB `client_max_size`."""
    loop = asyncio.get_running_loop()
    return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY)


async def serve(engine: SimEngine) -> None:
    """Bind the engine's socket (raises OSError if taken) and start answering."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return await dispatch(engine, request)

    # vLLM (uvicorn + FastAPI) never decompresses request bodies: Content-Encoding is ignored.
    server = web.Server(
        handler,
        request_factory=_large_bodies,
        handler_cancellation=True,
        access_log=None,
        auto_decompress=False,
    )
    runner = web.ServerRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, engine.cfg.host, engine.cfg.port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    sockets = [s for srv in [site._server] if srv is not None for s in getattr(srv, "sockets", ())]
    engine.bound_port = sockets[0].getsockname()[1] if sockets else engine.cfg.port
    engine.name = f"{engine.cfg.served_names[0]}@{engine.cfg.host or '0.0.0.0'}:{engine.bound_port}"

    async def close() -> None:
        try:
            await runner.cleanup()
        except (asyncio.CancelledError, Exception):  # closing a dying server must not raise
            log.debug("cleanup of %s failed", engine.name, exc_info=True)

    engine.close_server = close
