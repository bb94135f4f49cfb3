"""OpenAI-shaped error responses: every OpenAI SDK already knows how to surface them."""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..h1 import Response

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "internal_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}
# `code` of the answers the HTTP layer makes for requests it refuses before routing.
_SERVER_CODES = {
    400: "invalid_request",
    413: "body_too_large",
    431: "headers_too_large",
    500: "internal_error",
}


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    err = {"message": message, "type": _TYPES.get(status, "error"), "param": param, "code": code}
    return json.dumps({"error": err}).encode()


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
    return Response(status, error_body(status, message, code, param), tuple(out.items()))


def server_error(status: int, message: str) -> Response:
    """The h1 server's refusals (malformed framing, oversized head or body) in OpenAI form."""
    return error_response(status, message, _SERVER_CODES.get(status, "invalid_request"))
