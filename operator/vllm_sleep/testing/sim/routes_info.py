"""Routes that never touch the GPU: /health, /metrics, /load, /version, /v1/models."""

from __future__ import annotations

import time

from aiohttp import web

from .engine import SimEngine
from .http_util import Route, empty, json_response
from .metrics_text import render_metrics


async def health(engine: SimEngine, _req: web.BaseRequest) -> web.Response:
    # 200 while asleep in every version: liveness only (docs/vllm.md#requests-while-asleep). 503 once the engine core died.
    return empty(503 if engine.phase != "running" else 200)


async def metrics(engine: SimEngine, _req: web.BaseRequest) -> web.Response:
    return web.Response(text=render_metrics(engine), content_type="text/plain", charset="utf-8")


async def load(engine: SimEngine, _req: web.BaseRequest) -> web.Response:
    # Counted only with --enable-server-load-tracking; otherwise the initial 0 forever.
    return json_response(
        {"server_load": engine.server_load if engine.cfg.enable_server_load_tracking else 0}
    )


async def version(engine: SimEngine, _req: web.BaseRequest) -> web.Response:
    return json_response({"version": engine.cfg.version})


async def models(engine: SimEngine, _req: web.BaseRequest) -> web.Response:
    cfg = engine.cfg
    created = int(time.time())
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": cfg.model,
            "parent": None,
            "max_model_len": cfg.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{i}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        for i, name in enumerate(cfg.served_names)
    ]
    return json_response({"object": "list", "data": data})


INFO_ROUTES: dict[str, Route] = {
    "/health": Route({"GET": health}),
    "/metrics": Route({"GET": metrics}),
    "/load": Route({"GET": load}),
    "/version": Route({"GET": version}),
    "/v1/models": Route({"GET": models}),
}
