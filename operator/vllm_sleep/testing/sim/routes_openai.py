"""/v1/chat/completions and /v1/completions: streaming (SSE) and not, usage, aborts.

Admission decides what a request meets: 0.33 queues it while asleep (HTTP stays open until a
full wake), /pause rejects with 503, a legacy engine runs it and dies. Reaching a sleeping or
transitioning engine is recorded as a violation either way.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web

from .engine import SimEngine
from .generation import prompt_seed, run_request
from .http_util import (
    PARSE_BODY_ERROR,
    Route,
    detail,
    empty,
    json_response,
    openai_error,
    read_json,
)
from .openai_schema import BadRequest, Completion, parse_completion
from .scheduler import EngineDead

DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


def _admission_error(engine: SimEngine) -> web.Response | None:
    if engine.phase != "running":
        raise EngineDead()
    if engine.sched.reject_new:
        return openai_error(
            503, "Generation is paused. Please retry after it resumes.", "ServiceUnavailableError"
        )
    if engine.transition == "sleep" or (engine.transition and engine.state == "sleeping"):
        engine.record("request_during_transition", f"inference request during {engine.transition}")
    elif engine.state == "sleeping":
        engine.record(
            "request_while_asleep", f"inference request while asleep (level {engine.level})"
        )
    return None


def _usage(c: Completion, generated: int) -> dict[str, int]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "total_tokens": c.prompt_tokens + generated,
        "completion_tokens": generated,
    }


def _choice(c: Completion, text: str | None, finish: str | None, *, chunk: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"index": 0}
    if c.chat and chunk:
        out["delta"] = {} if text is None else {"content": text}
    elif c.chat:
        out["message"] = {"role": "assistant", "content": text, "tool_calls": []}
    else:
        out["text"] = text or ""
    out.update({"logprobs": None, "finish_reason": finish, "stop_reason": None})
    return out


async def completions(
    engine: SimEngine, request: web.BaseRequest, *, chat: bool
) -> web.StreamResponse:
    body, err = await read_json(request)
    if err and err.undecodable:
        # FastAPI parses the body for the route; any failure but a JSON syntax error becomes
        # HTTPException(400, "There was an error parsing the body"), which vLLM (≥0.18)
        # answers in the OpenAI shape and older versions as Starlette's {"detail": ...}.
        if engine.cfg.legacy:
            return detail(400, PARSE_BODY_ERROR)
        return openai_error(400, PARSE_BODY_ERROR, "Bad Request")
    if err:
        return openai_error(400, err.message)
    try:
        c = parse_completion(body, engine.cfg, chat=chat)
    except BadRequest as e:
        return openai_error(e.status, str(e), param=e.param)
    try:
        if (refused := _admission_error(engine)) is not None:
            return refused
    except EngineDead:
        return _dead(engine)
    engine.metrics.prompt_tokens += c.prompt_tokens
    req = engine.sched.new_request(c.prompt_tokens, c.max_tokens)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    head = {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": c.model,
    }
    seed = prompt_seed(c.prompt_text)
    if c.stream:
        return await _stream(engine, request, c, req, head, seed)
    pieces: list[str] = []

    async def collect(tok: str) -> None:
        pieces.append(tok)
        engine.metrics.generation_tokens += 1

    try:
        finish = await run_request(engine, req, seed, collect)
    except EngineDead:
        return _dead(engine)
    engine.metrics.finish(finish)
    return json_response(
        {
            **head,
            "choices": [_choice(c, "".join(pieces), finish, chunk=False)],
            "usage": _usage(c, len(pieces)),
        }
    )


def _dead(engine: SimEngine) -> web.Response:
    # ≤0.16 launcher: EngineDeadError -> 500 with an empty body. 0.33: OpenAI-style JSON.
    return (
        empty(500) if engine.cfg.legacy else openai_error(500, DEAD_MESSAGE, "InternalServerError")
    )


async def _stream(
    engine: SimEngine,
    request: web.BaseRequest,
    c: Completion,
    req: Any,
    head: dict[str, Any],
    seed: int,
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)  # vLLM returns the StreamingResponse before the first token
    head = {**head, "object": "chat.completion.chunk" if c.chat else "text_completion"}
    extra = {"usage": None} if c.include_usage else {}

    async def send(obj: dict[str, Any]) -> None:
        await resp.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

    async def emit(tok: str) -> None:
        engine.metrics.generation_tokens += 1
        await send({**head, "choices": [_choice(c, tok, None, chunk=True)], **extra})

    if c.chat:
        first = _choice(c, "", None, chunk=True)
        first["delta"] = {"role": "assistant", "content": ""}
        await send({**head, "choices": [first], **extra})
    try:
        finish = await run_request(engine, req, seed, emit)
    except EngineDead:
        await send(
            {
                "error": {
                    "message": DEAD_MESSAGE,
                    "type": "InternalServerError",
                    "param": None,
                    "code": 500,
                }
            }
        )
        await resp.write(b"data: [DONE]\n\n")
        return resp
    engine.metrics.finish(finish)
    await send(
        {**head, "choices": [_choice(c, None if c.chat else "", finish, chunk=True)], **extra}
    )
    if c.include_usage:
        await send({**head, "choices": [], "usage": _usage(c, req.generated)})
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def chat(engine: SimEngine, request: web.BaseRequest) -> web.StreamResponse:
    return await completions(engine, request, chat=True)


async def complete(engine: SimEngine, request: web.BaseRequest) -> web.StreamResponse:
    return await completions(engine, request, chat=False)


OPENAI_ROUTES: dict[str, Route] = {
    "/v1/chat/completions": Route({"POST": chat}, inference=True),
    "/v1/completions": Route({"POST": complete}, inference=True),
}
