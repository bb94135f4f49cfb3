"""The OpenAI error shape of every answer the agent and the gateway make themselves.

`{"error": {"message", "type", "param", "code"}}`: what OpenAI's API returns and every OpenAI SDK
parses (the SDKs pick their exception class from the HTTP status; `type` and `code` are for
people and for programs that look closer). `type` uses OpenAI's own vocabulary, one value per
status class, so a client sees the same `type` from the gateway and from an agent. Answers that
vLLM itself makes are relayed as they are (vLLM names its types after exception classes,
"BadRequestError", and puts the status in `code`). `code` says what happened, in snake_case;
the codes another process acts on are `ErrorCode` members. docs/gateway.md and docs/agent.md
list them.

Pure: the HTTP stacks (aiohttp in the agent, h1 in the gateway) wrap these bodies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class ErrorType(StrEnum):
    """OpenAI's `type` values."""

    INVALID_REQUEST = "invalid_request_error"
    AUTHENTICATION = "authentication_error"
    PERMISSION = "permission_error"
    NOT_FOUND = "not_found_error"
    RATE_LIMIT = "rate_limit_error"
    SERVER = "server_error"


class ErrorCode(StrEnum):
    """`code` values another process (or a client's retry logic) acts on."""

    # The agent's refusals of an inference request that never reached vLLM: a gateway may
    # send the request to another replica, or hold it again (it is never run twice).
    HOLD_TIMEOUT = "hold_timeout"  # 503: not awake within the agent's hold timeout
    QUEUE_FULL = "queue_full"  # 429: the hold queue is full (agent or gateway)
    ENGINE_UNAVAILABLE = "engine_unavailable"  # 503: the engine failed
    ENGINE_UNREACHABLE = "engine_unreachable"  # 503: vLLM refused the connection
    # The gateway's own answers.
    MODEL_NOT_FOUND = "model_not_found"  # 404
    MODEL_ASLEEP = "model_asleep"  # 503: wake.onRequest is false
    WAKE_TIMEOUT = "wake_timeout"  # 503: no replica awake within wake.timeout
    MODEL_UNAVAILABLE = "model_unavailable"  # 503 at once: the operator says no wake can serve it
    UPSTREAM_TIMEOUT = "upstream_timeout"  # 504
    UPSTREAM_ERROR = "upstream_error"  # 502
    SHUTTING_DOWN = "shutting_down"  # 503
    NOT_READY = "not_ready"  # 503: models not listed yet
    NOT_ROUTED = "not_routed"  # 404: a vLLM route the gateway does not route (no model)
    # Either process, when the caller names no code.
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    BODY_TOO_LARGE = "body_too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
    RATE_LIMITED = "rate_limited"
    CLIENT_CLOSED = "client_closed"
    INTERNAL_ERROR = "internal_error"
    UNAVAILABLE = "unavailable"


# Refusals a gateway may retry elsewhere, with the status the agent answers each with.
AGENT_REFUSALS: Final[Mapping[str, int]] = {
    ErrorCode.HOLD_TIMEOUT: 503,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.ENGINE_UNAVAILABLE: 503,
    ErrorCode.ENGINE_UNREACHABLE: 503,
}
AGENT_REFUSAL_STATUSES: Final = frozenset(AGENT_REFUSALS.values())

# The one table: status -> (`type`, `code` when the caller names none). A status not listed
# is invalid_request (4xx) or server (5xx).
_BY_STATUS: Final[Mapping[int, tuple[ErrorType, ErrorCode]]] = {
    400: (ErrorType.INVALID_REQUEST, ErrorCode.INVALID_REQUEST),
    401: (ErrorType.AUTHENTICATION, ErrorCode.UNAUTHORIZED),
    403: (ErrorType.PERMISSION, ErrorCode.FORBIDDEN),
    404: (ErrorType.NOT_FOUND, ErrorCode.NOT_FOUND),
    405: (ErrorType.INVALID_REQUEST, ErrorCode.METHOD_NOT_ALLOWED),
    409: (ErrorType.INVALID_REQUEST, ErrorCode.CONFLICT),
    413: (ErrorType.INVALID_REQUEST, ErrorCode.BODY_TOO_LARGE),
    429: (ErrorType.RATE_LIMIT, ErrorCode.RATE_LIMITED),
    431: (ErrorType.INVALID_REQUEST, ErrorCode.HEADERS_TOO_LARGE),
    499: (ErrorType.INVALID_REQUEST, ErrorCode.CLIENT_CLOSED),
    500: (ErrorType.SERVER, ErrorCode.INTERNAL_ERROR),
    502: (ErrorType.SERVER, ErrorCode.UPSTREAM_ERROR),
    503: (ErrorType.SERVER, ErrorCode.UNAVAILABLE),
    504: (ErrorType.SERVER, ErrorCode.UPSTREAM_TIMEOUT),
}


def _by_status(status: int) -> tuple[ErrorType, ErrorCode]:
    found = _BY_STATUS.get(status)
    if found is not None:
        return found
    if 400 <= status < 500:
        return ErrorType.INVALID_REQUEST, ErrorCode.INVALID_REQUEST
    return ErrorType.SERVER, ErrorCode.INTERNAL_ERROR


def error_type(status: int) -> ErrorType:
    return _by_status(status)[0]


def default_code(status: int) -> str:
    return _by_status(status)[1].value


def error_body(
    status: int,
    message: str,
    code: str | None = None,
    *,
    param: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The JSON object of an error answer; `extra` adds fields inside `error`."""
    err: dict[str, object] = {
        "message": message,
        "type": error_type(status).value,
        "param": param,
        "code": default_code(status) if code is None else str(code),
        **(extra or {}),
    }
    return {"error": err}


def error_code(body: bytes) -> str | None:
    """The `code` of an error body, None when it is not one (or `code` is not a string)."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None
