"""The agent's error answers: api.openai_errors bodies as aiohttp Responses."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from ..api.openai_errors import error_body

__all__ = ["error_body", "error_response"]


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(error_body(status, message, code, extra=extra)).encode(),
        content_type="application/json",
        headers=headers,
    )
