"""OpenAI-shaped error responses, the format every OpenAI client already parses."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_body(
    status: int,
    message: str,
    *,
    code: str | int | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    err: dict[str, object] = {
        "message": message,
        "type": _TYPES.get(status, "Error"),
        "param": None,
        "code": status if code is None else code,
        **(extra or {}),
    }
    return {"error": err}


def error_response(
    status: int,
    message: str,
    *,
    code: str | int | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(error_body(status, message, code=code, extra=extra)).encode(),
        content_type="application/json",
        headers=headers,
    )
