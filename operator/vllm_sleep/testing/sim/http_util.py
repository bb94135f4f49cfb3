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
    profiles: frozenset[str] = field(default_factory=lambda: frozenset({"0.33", "legacy"}))
    inference: bool = False  # counted by /load, held by /pause


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


async def read_json(request: web.BaseRequest) -> tuple[Any, str | None]:
    """(body, error message). vLLM answers bad JSON with 400."""
    raw = await request.read()
    try:
        return json.loads(raw or b"null"), None
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"JSON decode error: {e}"
