"""The contract table's remaining rows: RL weight-transfer routes and elastic expert parallelism.

The simulator has no trainer and no data-parallel engines, so these answer the shapes vLLM 0.33
gives (JSON in, 400 on invalid JSON or a non-object body, JSON out) without moving anything.
The weight-transfer routes are dev-gated (0.33 `entrypoints/rl/factories.py`); elastic EP is not.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from .engine import SimEngine
from .http_util import Route, json_response, openai_error, read_json_object
from .routes_dev import NEW

_WEIGHT_ROUTES = {
    "/init_weight_transfer_engine": {"message": "Weight transfer engine initialized"},
    "/shutdown_weight_transfer_engine": {"message": "Weight transfer engine shut down"},
    "/start_weight_update": {"message": "Weight update started"},
    "/start_draft_weight_update": {"message": "Draft weight update started"},
    "/update_weights": {"message": "Weights updated"},
    "/finish_weight_update": {"message": "Weight update finished"},
    "/update_weight_version": {"message": "Weight version updated"},
}


def _json_object_route(answer: Mapping[str, object]) -> Route:
    async def handler(engine: SimEngine, request: web.BaseRequest) -> web.Response:
        body = await read_json_object(engine, request, required=False)
        if isinstance(body, web.Response):
            return body
        return json_response(answer)

    return Route({"POST": handler}, dev=True, profiles=NEW)


async def weight_info(engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    return json_response({"weight_version": 0, "model": engine.cfg.model})


async def weight_checker(_engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    return json_response({"ok": True})


async def get_world_size(_engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    return json_response({"world_size": 1})


async def scale_elastic_ep(engine: SimEngine, request: web.BaseRequest) -> web.Response:
    body = await read_json_object(engine, request, required=True)
    if isinstance(body, web.Response):
        return body
    size = body.get("new_data_parallel_size")
    drain = body.get("drain_timeout", 120)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return openai_error(400, "new_data_parallel_size must be a positive integer", "Bad Request")
    if not isinstance(drain, int) or isinstance(drain, bool) or drain <= 0:
        return openai_error(400, "drain_timeout must be a positive integer", "Bad Request")
    return json_response({"message": f"Scaled to {size} data parallel engines"})


async def is_scaling_elastic_ep(_engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    return json_response({"is_scaling_elastic_ep": False})


RL_ROUTES: dict[str, Route] = {
    **{path: _json_object_route(answer) for path, answer in _WEIGHT_ROUTES.items()},
    "/weight_info": Route({"GET": weight_info}, dev=True, profiles=NEW),
    "/weight_checker": Route({"GET": weight_checker}, dev=True, profiles=NEW),
    "/get_world_size": Route({"GET": get_world_size}, dev=True, profiles=NEW),
    "/scale_elastic_ep": Route({"POST": scale_elastic_ep}, profiles=NEW),
    "/is_scaling_elastic_ep": Route({"GET": is_scaling_elastic_ep}, profiles=NEW),
}
