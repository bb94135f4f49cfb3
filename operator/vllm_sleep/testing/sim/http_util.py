"""Response shapes vLLM's FastAPI server produces, and the route table type."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .engine import SimEngine

Handler = Callable[["SimEngine", web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    methods: dict[str, Handler]
    dev: bool = False  # registered only with VLLM_SERVER_DEV_MODE=1
    profiles: frozenset[str] = field(default_factory=lambda: frozenset({"0.34", "0.33", "legacy"}))
    inference: bool = False  # counted by /load, held by /pause
    sleep_mode: bool = False  # registered only with --enable-sleep-mode


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def detail(status: int, text: str) -> web.Response:
    """FastAPI/Starlette's own errors: 404 {"detail":"Not Found"}, 405 ..."""
    return json_response({"detail": text}, status)


def openai_error(
    status: int, message: str, type_: str | None = None, param: str | None = None
) -> web.Response:
    types = {
        400: "BadRequestError",
        401: "Unauthorized",
        404: "NotFoundError",
        503: "ServiceUnavailableError",
    }
    return json_response(
        {
            "error": {
                "message": message,
                "type": type_ or types.get(status, "InternalServerError"),
                "param": param,
                "code": status,
            }
        },
        status,
    )


def empty(status: int = 200) -> web.Response:
    return web.Response(status=status)


def plain_500() -> web.Response:
    """Starlette's ServerErrorMiddleware: what ≤0.17 sends for an unhandled exception."""
    return web.Response(status=500, text="Internal Server Error")


PARSE_BODY_ERROR = "There was an error parsing the body"


@dataclass(frozen=True)
class BodyError:
    """Why a request body is not JSON. `undecodable`: not text at all (e.g. a gzip body: vLLM
    does not decompress request bodies, so json.loads raises UnicodeDecodeError, which is not a
    JSONDecodeError); else a JSON syntax error."""

    message: str
    undecodable: bool = False


async def read_json(request: web.BaseRequest) -> tuple[Any, BodyError | None]:
    """(body, error). The server does not decompress bodies (Content-Encoding is ignored)."""
    raw = await request.read()
    try:
        return json.loads(raw or b"null"), None
    except UnicodeDecodeError as e:
        return None, BodyError(str(e), undecodable=True)
    except ValueError as e:
        return None, BodyError(f"JSON decode error: {e}")


async def read_json_object(
    engine: SimEngine, request: web.BaseRequest, *, required: bool
) -> dict[str, Any] | web.Response:
    """The body of a route that wants a JSON object, or the answer vLLM gives when it is not
    one (see `raw_json_error`; a non-object: 400). Without `required`, no body reads as {}."""
    body, err = await read_json(request)
    if err:
        return raw_json_error(engine, err)
    if body is None and not required:
        return {}
    if not isinstance(body, dict):
        return openai_error(400, "Request body must be a JSON object", "Bad Request")
    return body


def raw_json_error(engine: SimEngine, err: BodyError) -> web.Response:
    """A route that calls `await raw_request.json()` and catches only JSONDecodeError: bad JSON
    is a 400, an undecodable body escapes as an unhandled exception (vLLM's catch-all 500;
    ≤0.17 Starlette's plain-text 500)."""
    if not err.undecodable:
        return openai_error(400, err.message, "Bad Request")
    if engine.cfg.legacy:
        return plain_500()
    return openai_error(500, err.message, "InternalServerError")
