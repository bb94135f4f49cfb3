"""vLLM 0.34's `/checkpoint/prepare|restore|status` (docs/vllm.md "vLLM 0.34").

Registered whenever `--enable-sleep-mode` is on, not dev-gated and not behind `--api-key`: anything
that reaches vLLM's port can pause it. `prepare` pauses generation (new inference requests get
503 engine_paused), releases the KV cache and tears down communicators; until `restore`, /sleep
and /wake_up fail with 500. The response bodies are this simulator's (UNCONFIRMED upstream):
`{"state": "RUNNING"|"PREPARED"}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from . import ops, ops_checkpoint
from .engine import SimEngine
from .http_util import Route, json_response, openai_error
from .scheduler import EngineDead

V034 = frozenset({"0.34"})


def _state(engine: SimEngine) -> web.Response:
    return json_response({"state": engine.checkpoint})


async def _step(engine: SimEngine, step: Callable[[SimEngine], Awaitable[object]]) -> web.Response:
    try:
        await step(engine)
    except (ops.UtilityError, EngineDead) as e:
        return openai_error(500, str(e) or "EngineCore died", "InternalServerError")
    return _state(engine)


async def prepare(engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    return await _step(engine, ops_checkpoint.checkpoint_prepare)


async def restore(engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    return await _step(engine, ops_checkpoint.checkpoint_restore)


async def status(engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    return _state(engine)


CHECKPOINT_ROUTES: dict[str, Route] = {
    "/checkpoint/prepare": Route({"POST": prepare}, profiles=V034, sleep_mode=True),
    "/checkpoint/restore": Route({"POST": restore}, profiles=V034, sleep_mode=True),
    "/checkpoint/status": Route({"GET": status}, profiles=V034, sleep_mode=True),
}
