"""vLLM's other client routes: pooling tasks, Responses, Anthropic Messages, token-in/token-out
generation, audio, and the tokenizer's.

Each inference route meets the engine as chat does (`run_once`): the same admission (a legacy
engine asleep runs it and dies, a 500; 0.33/0.34 queue it until the wake; /pause refuses it),
the same violation records, the same `model` check (404). A pooling task is one engine step
(the prefill); a generation is one step per token. Answers have vLLM's shapes with simulated
values (embeddings and scores derived from the input, text from the fake generator). The
tokenizer routes, `count_tokens` and a stored response (vLLM keeps none unless
VLLM_ENABLE_RESPONSES_API_STORE is set, so every id is 404) never touch the GPU.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
import uuid
import zlib
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .engine import SimEngine
from .generation import Emit, count_tokens, prompt_seed, run_request
from .http_util import Route, json_response, openai_error, read_json_object
from .routes_openai import DEAD_MESSAGE as DEAD
from .routes_openai import _admission_error, _dead
from .scheduler import EngineDead

Answer = Callable[[SimEngine, web.BaseRequest, str, dict[str, Any]], Awaitable[web.StreamResponse]]


def _text_of(value: Any) -> str:
    """The text in a request field, whatever its shape (a string, a list, message objects)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return " ".join(_text_of(v) for k, v in value.items() if k in ("content", "text"))
    return "" if value is None else str(value)


def _vector(text: str, size: int = 8) -> list[float]:
    seed = zlib.crc32(text.encode())
    return [round(((seed >> i) % 1000) / 1000 - 0.5, 3) for i in range(size)]


def _score(a: str, b: str) -> float:
    return round((zlib.crc32(f"{a}\0{b}".encode()) % 1000) / 1000, 3)


def _admit(engine: SimEngine) -> web.Response | None:
    """Chat's admission: None to run, else the answer (paused: 503; engine dead: 500)."""
    try:
        return _admission_error(engine)
    except EngineDead:
        return _dead(engine)


async def _generate_tokens(engine: SimEngine, prompt: str, max_tokens: int, emit: Emit) -> None:
    """Run an admitted request on the engine, `emit` per token. Raises EngineDead."""
    prompt_tokens = count_tokens(prompt)
    engine.metrics.prompt_tokens += prompt_tokens
    req = engine.sched.new_request(prompt_tokens, max_tokens)

    async def count(tok: str) -> None:
        engine.metrics.generation_tokens += 1
        await emit(tok)

    engine.metrics.finish(await run_request(engine, req, prompt_seed(prompt), count))


async def run_once(
    engine: SimEngine, prompt: str, max_tokens: int
) -> tuple[list[str], web.Response | None]:
    """Run one request on the engine: (generated tokens, None), or (_, the error answer)."""
    if (refused := _admit(engine)) is not None:
        return [], refused
    pieces: list[str] = []

    async def collect(tok: str) -> None:
        pieces.append(tok)

    try:
        await _generate_tokens(engine, prompt, max_tokens, collect)
    except EngineDead:
        return [], _dead(engine)
    return pieces, None


async def _stream(
    engine: SimEngine,
    request: web.BaseRequest,
    prompt: str,
    max_tokens: int,
    first: list[dict[str, Any]],
    delta: Callable[[str], dict[str, Any]],
    last: Callable[[list[str]], list[dict[str, Any]]],
) -> web.StreamResponse:
    """An SSE answer of typed events (`event: <type>` + `data: <json>`, as vLLM writes the
    Responses and Messages streams): `first`, one `delta` per token, then `last`. An engine
    that dies mid-stream ends it with an `error` event."""
    if (refused := _admit(engine)) is not None:
        return refused
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)

    async def send(event: dict[str, Any]) -> None:
        data = json.dumps(event, separators=(",", ":"))
        await resp.write(f"event: {event['type']}\ndata: {data}\n\n".encode())

    for event in first:
        await send(event)
    pieces: list[str] = []

    async def emit(tok: str) -> None:
        pieces.append(tok)
        await send(delta(tok))

    try:
        await _generate_tokens(engine, prompt, max_tokens, emit)
    except EngineDead:
        await send({"type": "error", "error": {"type": "InternalServerError", "message": DEAD}})
        return resp
    for event in last(pieces):
        await send(event)
    await resp.write_eof()
    return resp


def _task(answer: Answer) -> Callable[[SimEngine, web.BaseRequest], Awaitable[web.StreamResponse]]:
    """A JSON route: the body, the `model` check, then `answer`."""

    async def handler(engine: SimEngine, request: web.BaseRequest) -> web.StreamResponse:
        body = await read_json_object(engine, request, required=True)
        if isinstance(body, web.Response):
            return body
        model = body.get("model") or engine.cfg.served_names[0]
        if model not in engine.cfg.served_names:
            return openai_error(404, f"The model `{model}` does not exist.", param="model")
        return await answer(engine, request, model, body)

    return handler


def _usage(prompt: str, generated: int = 0) -> dict[str, int]:
    n = count_tokens(prompt)
    return {"prompt_tokens": n, "total_tokens": n + generated, "completion_tokens": generated}


def _head(prefix: str, model: str) -> dict[str, Any]:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def _inputs(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    return [_text_of(v) for v in value] if isinstance(value, list) else [_text_of(value)]


async def _embeddings(
    engine: SimEngine, _req: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    # encoding_format "base64" (what the OpenAI SDKs ask for by default): the float32 values'
    # bytes in the machine's order (vLLM's default embed_dtype and endianness), base64-encoded.
    b64 = body.get("encoding_format") == "base64"

    def item(i: int, t: str) -> dict[str, Any]:
        vec = _vector(t)
        data = base64.b64encode(array("f", vec).tobytes()).decode() if b64 else vec
        return {"object": "embedding", "index": i, "embedding": data}

    return await _listed(engine, _inputs(body, "input"), model, "embd", item)


async def _pooling(
    engine: SimEngine, _req: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    def item(i: int, t: str) -> dict[str, Any]:
        return {"index": i, "object": "pooling", "data": _vector(t)}

    texts = _inputs(body, "input" if "input" in body else "messages")
    return await _listed(engine, texts, model, "pool", item)


async def _listed(
    engine: SimEngine,
    texts: list[str],
    model: str,
    prefix: str,
    item: Callable[[int, str], dict[str, Any]],
) -> web.StreamResponse:
    """One engine pass over the inputs, answered as vLLM's list of per-input items."""
    _, err = await run_once(engine, " ".join(texts), 1)
    if err is not None:
        return err
    data = [item(i, t) for i, t in enumerate(texts)]
    usage = _usage(" ".join(texts))
    return json_response({**_head(prefix, model), "object": "list", "data": data, "usage": usage})


async def _classify(
    engine: SimEngine, _req: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    texts = _inputs(body, "input")
    _, err = await run_once(engine, " ".join(texts), 1)
    if err is not None:
        return err
    data = []
    for i, t in enumerate(texts):
        p = _score(t, "")
        label = "LABEL_1" if p >= 0.5 else "LABEL_0"
        data.append({"index": i, "label": label, "probs": [1 - p, p], "num_classes": 2})
    usage = _usage(" ".join(texts))
    return json_response(
        {**_head("classify", model), "object": "list", "data": data, "usage": usage}
    )


async def _score_route(
    engine: SimEngine, _req: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    first = _text_of(body.get("text_1", body.get("queries")))
    seconds = _inputs(body, "text_2" if "text_2" in body else "documents")
    _, err = await run_once(engine, first + " " + " ".join(seconds), 1)
    if err is not None:
        return err
    data = [
        {"index": i, "object": "score", "score": _score(first, s)} for i, s in enumerate(seconds)
    ]
    usage = _usage(first + " " + " ".join(seconds))
    return json_response({**_head("score", model), "object": "list", "data": data, "usage": usage})


async def _rerank(
    engine: SimEngine, _req: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    query = _text_of(body.get("query"))
    docs = _inputs(body, "documents")
    _, err = await run_once(engine, query + " " + " ".join(docs), 1)
    if err is not None:
        return err
    results = sorted(
        (
            {"index": i, "document": {"text": d}, "relevance_score": _score(query, d)}
            for i, d in enumerate(docs)
        ),
        key=lambda r: -r["relevance_score"],  # type: ignore[operator]
    )
    top_n = body.get("top_n")
    if isinstance(top_n, int) and top_n > 0:
        results = results[:top_n]
    tokens = count_tokens(query + " " + " ".join(docs))
    return json_response(
        {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": model,
            "usage": {"total_tokens": tokens},
            "results": results,
        }
    )


def _max_tokens(engine: SimEngine, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return engine.cfg.default_max_tokens


async def _responses(
    engine: SimEngine, request: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    prompt = _text_of(body.get("input")) + " " + _text_of(body.get("instructions"))
    max_tokens = _max_tokens(engine, body.get("max_output_tokens"))
    n = count_tokens(prompt)
    rid, mid = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"

    def response(status: str, pieces: list[str]) -> dict[str, Any]:
        text = "".join(pieces)
        content = [{"type": "output_text", "text": text, "annotations": []}]
        message = {"type": "message", "id": mid, "role": "assistant", "status": status}
        return {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "status": status,
            "output": [{**message, "content": content}] if status == "completed" else [],
            "usage": {
                "input_tokens": n,
                "output_tokens": len(pieces),
                "total_tokens": n + len(pieces),
            },
        }

    if body.get("stream") is True:
        # vLLM's order (docs/simulator.md, "Client routes besides chat"): created, in_progress, the
        # message item and its text part opened, the deltas, the text, part and item closed,
        # completed; `sequence_number` counts from 0. The OpenAI SDK's responses.stream()
        # refuses a delta for an item it was not told of.
        seq = itertools.count()
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        item = {"type": "message", "id": mid, "role": "assistant", "content": []}
        at = {"output_index": 0, "item_id": mid, "content_index": 0}

        def ev(kind: str, **fields: Any) -> dict[str, Any]:
            return {"type": f"response.{kind}", "sequence_number": next(seq), **fields}

        def done(pieces: list[str]) -> list[dict[str, Any]]:
            text = "".join(pieces)
            full = {"type": "output_text", "text": text, "annotations": []}
            return [
                ev("output_text.done", **at, text=text, logprobs=[]),
                ev("content_part.done", **at, part=full),
                ev(
                    "output_item.done",
                    output_index=0,
                    item={**item, "content": [full], "status": "completed"},
                ),
                ev("completed", response=response("completed", pieces)),
            ]

        started = response("in_progress", [])
        return await _stream(
            engine,
            request,
            prompt,
            max_tokens,
            [
                ev("created", response=started),
                ev("in_progress", response=started),
                ev("output_item.added", output_index=0, item={**item, "status": "in_progress"}),
                ev("content_part.added", **at, part=part),
            ],
            lambda tok: ev("output_text.delta", **at, delta=tok, logprobs=[]),
            done,
        )
    pieces, err = await run_once(engine, prompt, max_tokens)
    if err is not None:
        return err
    return json_response(response("completed", pieces))


async def _messages(
    engine: SimEngine, request: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    if not isinstance(body.get("max_tokens"), int):
        return openai_error(400, "max_tokens: Field required", param="max_tokens")
    prompt = _text_of(body.get("system")) + " " + _text_of(body.get("messages"))
    max_tokens = _max_tokens(engine, body["max_tokens"])
    n = count_tokens(prompt)
    message: dict[str, Any] = {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "stop_sequence": None,
    }
    if body.get("stream") is True:
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": n, "output_tokens": 0},
        }
        return await _stream(
            engine,
            request,
            prompt,
            max_tokens,
            [
                {"type": "message_start", "message": start},
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ],
            lambda tok: {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": tok},
            },
            lambda pieces: [
                {"type": "content_block_stop", "index": 0},
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                    "usage": {"output_tokens": len(pieces)},
                },
                {"type": "message_stop"},
            ],
        )
    pieces, err = await run_once(engine, prompt, max_tokens)
    if err is not None:
        return err
    return json_response(
        {
            **message,
            "content": [{"type": "text", "text": "".join(pieces)}],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": n, "output_tokens": len(pieces)},
        }
    )


async def _generate(
    engine: SimEngine, _req: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    ids = body.get("token_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
        return openai_error(
            400, "token_ids must be a non-empty list of integers", param="token_ids"
        )
    raw_params = body.get("sampling_params")
    params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
    prompt = " ".join(map(str, ids))
    pieces, err = await run_once(engine, prompt, _max_tokens(engine, params.get("max_tokens")))
    if err is not None:
        return err
    out = [zlib.crc32(p.encode()) % 32000 for p in pieces]
    return json_response(
        {
            "request_id": f"gen-{uuid.uuid4().hex}",
            "choices": [{"index": 0, "token_ids": out, "finish_reason": "length"}],
        }
    )


async def _count_tokens(
    engine: SimEngine, _req: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    prompt = _text_of(body.get("system")) + " " + _text_of(body.get("messages"))
    return json_response({"input_tokens": count_tokens(prompt)})


async def _tokenize(
    engine: SimEngine, _req: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    text = _text_of(body.get("prompt", body.get("messages")))
    tokens = [zlib.crc32(w.encode()) % 32000 for w in text.split()] or [0]
    return json_response(
        {"count": len(tokens), "max_model_len": engine.cfg.max_model_len, "tokens": tokens}
    )


async def _detokenize(
    engine: SimEngine, _req: web.BaseRequest, model: str, body: dict[str, Any]
) -> web.StreamResponse:
    tokens = body.get("tokens")
    if not isinstance(tokens, list):
        return openai_error(400, "tokens must be a list of integers", param="tokens")
    return json_response({"prompt": " ".join(f"t{t}" for t in tokens)})


async def audio(engine: SimEngine, request: web.BaseRequest) -> web.StreamResponse:
    """/v1/audio/transcriptions and /translations: a multipart form (file, model, ...)."""
    try:
        form = await request.post()
    except ValueError:
        return openai_error(400, "There was an error parsing the body", "Bad Request")
    model = form.get("model") or engine.cfg.served_names[0]
    if not isinstance(model, str) or model not in engine.cfg.served_names:
        return openai_error(404, f"The model `{model!s:.100}` does not exist.", param="model")
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        return openai_error(400, "file: Field required", param="file")
    size = len(upload.file.read())
    pieces, err = await run_once(engine, f"audio {size}", engine.cfg.default_max_tokens)
    if err is not None:
        return err
    return json_response({"text": "".join(pieces).strip()})


async def stored_response(engine: SimEngine, request: web.BaseRequest) -> web.StreamResponse:
    """GET /v1/responses/{id}, POST .../cancel: no store (vLLM's default), every id is 404."""
    rid = request.path.removeprefix("/v1/responses/").removesuffix("/cancel")
    return openai_error(404, f"Response with id '{rid}' not found.", "NotFoundError")


def _post(answer: Answer, *, inference: bool = True) -> Route:
    return Route({"POST": _task(answer)}, inference=inference)


TASK_ROUTES: dict[str, Route] = {
    "/v1/embeddings": _post(_embeddings),
    "/pooling": _post(_pooling),
    "/classify": _post(_classify),
    **{p: _post(_score_route) for p in ("/score", "/v1/score")},
    **{p: _post(_rerank) for p in ("/rerank", "/v1/rerank", "/v2/rerank")},
    "/v1/responses": _post(_responses),
    "/v1/messages": _post(_messages),
    "/inference/v1/generate": _post(_generate),
    "/v1/audio/transcriptions": Route({"POST": audio}, inference=True),
    "/v1/audio/translations": Route({"POST": audio}, inference=True),
    "/v1/messages/count_tokens": _post(_count_tokens, inference=False),
    "/tokenize": _post(_tokenize, inference=False),
    "/detokenize": _post(_detokenize, inference=False),
}
STORED_RESPONSE = Route({"GET": stored_response})  # /v1/responses/{response_id}
CANCEL_RESPONSE = Route({"POST": stored_response})  # /v1/responses/{response_id}/cancel


def templated_route(path: str) -> Route | None:
    """The route of a path with a path parameter (FastAPI's `{response_id}`: one segment)."""
    rest = path.removeprefix("/v1/responses/")
    if rest == path or not rest:
        return None
    rid, _, tail = rest.partition("/")
    if not rid or "/" in tail:
        return None
    return {"": STORED_RESPONSE, "cancel": CANCEL_RESPONSE}.get(tail)
