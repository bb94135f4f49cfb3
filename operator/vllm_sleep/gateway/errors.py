"""The gateway's error answers: api.openai_errors bodies as h1 Responses."""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..api.openai_errors import ErrorCode, error_body
from ..h1 import Response

# `code` of the answers the HTTP layer makes for requests it refuses before routing.
_SERVER_CODES: Mapping[int, str] = {
    400: ErrorCode.INVALID_REQUEST,
    408: "request_timeout",  # the head or body did not arrive in time (--header/body-timeout)
    413: ErrorCode.BODY_TOO_LARGE,
    431: ErrorCode.HEADERS_TOO_LARGE,
    500: ErrorCode.INTERNAL_ERROR,
    501: "unsupported_transfer_encoding",
    503: "busy",  # --max-buffered-bytes reached; Retry-After
}


def error_response(
    status: int,
    message: str,
    code: str,
    *,
    param: str | None = None,
    retry_after: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    out = dict(headers or {})
    if retry_after is not None:
        out["Retry-After"] = str(retry_after)
    body = json.dumps(error_body(status, message, code, param=param)).encode()
    return Response(status, body, tuple(out.items()))


def server_error(status: int, message: str) -> Response:
    """The h1 server's refusals (malformed framing, oversized head or body) in OpenAI form."""
    return error_response(status, message, _SERVER_CODES.get(status, ErrorCode.INVALID_REQUEST))
