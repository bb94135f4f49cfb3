"""Dev-mode routes (VLLM_SERVER_DEV_MODE=1): /sleep, /wake_up, /is_sleeping, /collective_rpc, ...

Parameters are read from the query string only; no vLLM version reads a body on /sleep (docs/vllm.md#endpoints).
The 0.33 profile validates and answers JSON; legacy (≤0.16) answers empty 200s, and a non-int
level is an unhandled ValueError (plain-text 500).
"""

from __future__ import annotations

import platform
from typing import Any

from aiohttp import web

from . import ops
from .engine import SimEngine
from .http_util import (
    Route,
    empty,
    json_response,
    openai_error,
    plain_500,
    read_json_object,
)
from .scheduler import EngineDead

NEW = frozenset({"0.33", "0.34"})
MODES = ("abort", "wait", "keep")
# pydantic's bool parsing of a query parameter (case-insensitive)
TRUE, FALSE = {"1", "on", "t", "true", "y", "yes"}, {"0", "off", "f", "false", "n", "no"}


def _bad_query(name: str, message: str, value: str, type_: str) -> web.Response:
    err = {"type": type_, "loc": ("query", name), "msg": message, "input": value}
    return openai_error(400, f"[{err!r}]", "Bad Request", f"query.{name}")


def _reset_connector(
    engine: SimEngine, request: web.BaseRequest
) -> tuple[bool | None, web.Response | None]:
    """0.34's `reset_connector` query bool (default true); older versions ignore the name."""
    raw = request.query.get("reset_connector")
    if engine.cfg.profile != "0.34" or raw is None:
        return None, None
    if raw.strip().lower() in TRUE:
        return True, None
    if raw.strip().lower() in FALSE:
        return False, None
    return None, _bad_query(
        "reset_connector",
        "Input should be a valid boolean, unable to interpret input",
        raw,
        "bool_parsing",
    )


def _failed(engine: SimEngine, e: Exception) -> web.Response:
    if engine.cfg.legacy:
        return empty(500)  # ≤0.17 launcher's RuntimeError handler: empty 500
    return openai_error(500, str(e) if str(e) else "EngineCore died", "InternalServerError")


async def sleep(engine: SimEngine, request: web.BaseRequest) -> web.Response:
    raw_level, raw_mode = request.query.get("level", "1"), request.query.get("mode", "abort")
    if engine.cfg.legacy:
        try:
            level = int(raw_level)
        except ValueError:
            return plain_500()
        mode = "abort"  # ≤0.16 has no mode: sleep neither waits nor aborts
    else:
        try:
            level = int(raw_level.strip())
        except ValueError:
            return _bad_query(
                "level",
                "Input should be a valid integer, unable to parse string as an integer",
                raw_level,
                "int_parsing",
            )
        if not 0 <= level <= 2:
            bound = "greater than or equal to 0" if level < 0 else "less than or equal to 2"
            return _bad_query(
                "level",
                f"Input should be {bound}",
                raw_level,
                "greater_than_equal" if level < 0 else "less_than_equal",
            )
        if raw_mode not in MODES:
            return _bad_query(
                "mode", "Input should be 'abort', 'wait' or 'keep'", raw_mode, "literal_error"
            )
        mode = raw_mode
    reset, bad = _reset_connector(engine, request)
    if bad is not None:
        return bad
    try:
        await ops.sleep(engine, level, mode, reset)  # type: ignore[arg-type]
    except (ops.UtilityError, EngineDead) as e:
        return _failed(engine, e)
    return empty() if engine.cfg.legacy else json_response({"status": "sleeping", "level": level})


async def wake_up(engine: SimEngine, request: web.BaseRequest) -> web.Response:
    tags = request.query.getall("tags", []) or None
    try:
        fully = await ops.wake_up(engine, tags)
    except (ops.UtilityError, EngineDead) as e:
        return _failed(engine, e)
    if engine.cfg.legacy:
        return empty()
    return json_response({"status": "awake" if fully else "sleeping", "tags": tags})


async def is_sleeping(engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    return json_response({"is_sleeping": engine.is_sleeping})


async def release_kv_cache_memory(engine: SimEngine, request: web.BaseRequest) -> web.Response:
    reset, bad = _reset_connector(engine, request)
    if bad is not None:
        return bad
    try:
        await ops.release_kv_cache_memory(engine, reset)
    except (ops.UtilityError, EngineDead) as e:
        return _failed(engine, e)
    return json_response({"status": "kv_cache_released"})


async def reset_prefix_cache(engine: SimEngine, request: web.BaseRequest) -> web.Response:
    if engine.cfg.legacy:
        return empty()
    force = request.query.get("reset_running_requests", "false").lower() in ("true", "1")
    return json_response({"success": force or engine.sched.running == 0})


async def reset_other_cache(_engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    return empty()


async def collective_rpc(engine: SimEngine, request: web.BaseRequest) -> web.Response:
    body = await read_json_object(engine, request, required=True)
    if isinstance(body, web.Response):
        return body
    method = body.get("method")
    if not method:
        return openai_error(400, "Missing 'method' in request body", "Bad Request")
    try:
        if method != "reload_weights":
            raise ops.UtilityError(
                "collective_rpc", f"AttributeError: 'Worker' object has no attribute '{method}'"
            )
        await ops.reload_weights(engine)
    except (ops.UtilityError, EngineDead) as e:
        return _failed(engine, e)
    return json_response({"results": [None]})  # one worker, reload_weights returns None


async def server_info(engine: SimEngine, request: web.BaseRequest) -> web.Response:
    fmt = request.query.get("config_format", "text")
    if fmt not in ("text", "json"):
        return _bad_query("config_format", "Input should be 'text' or 'json'", fmt, "literal_error")
    cfg = engine.cfg
    conf: dict[str, Any] = {
        "model": cfg.model,
        "served_model_name": list(cfg.served_names),
        "enable_sleep_mode": cfg.enable_sleep_mode,
        "gpu_memory_utilization": cfg.util,
        "kv_cache_memory_bytes": cfg.kv_cache_memory_bytes,
        "max_model_len": cfg.max_model_len,
        "simulator_profile": cfg.profile,
    }
    info: dict[str, Any] = {"vllm_config": conf if fmt == "json" else repr(conf)}
    if not cfg.legacy:
        info["vllm_env"] = {"VLLM_SERVER_DEV_MODE": "1"}
        info["system_env"] = {"python": platform.python_version(), "device": engine.device.name}
    return json_response(info)


async def pause(engine: SimEngine, request: web.BaseRequest) -> web.Response:
    if engine.cfg.legacy:  # 0.12-0.16: wait_for_inflight_requests (default false = abort)
        wait = request.query.get("wait_for_inflight_requests", "false").lower() in ("true", "1")
        mode = "wait" if wait else "abort"
    else:
        mode = request.query.get("mode", "abort")
        if mode not in MODES:
            return json_response(
                {"error": f"Invalid mode: {mode!r}; expected one of {list(MODES)}"}, 400
            )
    await ops.pause(engine, mode)  # type: ignore[arg-type]
    return json_response({"status": "paused"})


async def resume(engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    ops.resume(engine)
    return json_response({"status": "resumed"})


async def is_paused(engine: SimEngine, _request: web.BaseRequest) -> web.Response:
    return json_response({"is_paused": bool(engine.sched.api_pause)})


async def abort_requests(engine: SimEngine, request: web.BaseRequest) -> web.Response:
    body = await read_json_object(engine, request, required=False)
    if isinstance(body, web.Response):
        return body
    n = ops.abort_requests(engine, body.get("request_ids"))
    return json_response({"status": "aborted", "aborted": n})


DEV_ROUTES: dict[str, Route] = {
    "/sleep": Route({"POST": sleep}, dev=True),
    "/wake_up": Route({"POST": wake_up}, dev=True),
    "/is_sleeping": Route({"GET": is_sleeping}, dev=True),
    "/release_kv_cache_memory": Route({"POST": release_kv_cache_memory}, dev=True, profiles=NEW),
    "/reset_prefix_cache": Route({"POST": reset_prefix_cache}, dev=True),
    "/reset_mm_cache": Route({"POST": reset_other_cache}, dev=True, profiles=NEW),
    "/reset_encoder_cache": Route({"POST": reset_other_cache}, dev=True, profiles=NEW),
    "/collective_rpc": Route({"POST": collective_rpc}, dev=True),
    "/server_info": Route({"GET": server_info}, dev=True),
    "/pause": Route({"POST": pause}, dev=True),
    "/resume": Route({"POST": resume}, dev=True),
    "/is_paused": Route({"GET": is_paused}, dev=True),
    "/abort_requests": Route({"POST": abort_requests}, dev=True, profiles=NEW),
}
