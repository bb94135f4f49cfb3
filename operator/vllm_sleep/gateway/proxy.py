"""The data path to one replica: the request head, one send, the agent-refusal check.

Retry rule (the only place a request may be sent twice): `send` returns `Retry` exactly when the
request provably never reached an engine:
  - the TCP connection to the replica could not be opened (h1.ConnectError, which includes the
    connect timeout): not one byte was written;
  - the agent answered one of its own refusals (api.openai_errors.AGENT_REFUSALS: 503
    `hold_timeout`, `engine_unavailable`, `engine_unreachable`, 429 `queue_full`): the agent
    guarantees such a request was never forwarded to vLLM.
(The upstream pool also sends a request again by itself, on a fresh connection to the same
replica, when a pooled connection was closed under it before any byte of it was read: the
keep-alive race, h1/client.py. That is not a retry in this sense: the first copy was never
taken.)
Anything else after the connection was open (a disconnect while writing or reading, a read
timeout, any other status, including a 503 or 429 that vLLM itself produced) is final: the body may
have reached the engine, so it is answered (502/504 or the upstream's own response), never resent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from ..api.openai_errors import AGENT_REFUSAL_STATUSES, AGENT_REFUSALS, ErrorCode, error_code
from ..h1 import ConnectError, Exchange, Reply, Request, Response, UpstreamError, UpstreamPool
from ..h1 import UpstreamTimeout as _UpstreamTimeout
from ..http_common import HOP_BY_HOP, forwarded_header_block, response_header_fields
from .errors import error_response

log = logging.getLogger(__name__)

_HOP = frozenset(h.encode() for h in HOP_BY_HOP)
# The gateway decoded the body (Content-Encoding) and answered Expect itself; Host and
# Content-Length belong to the upstream request, X-Forwarded-For is extended.
_DROP_REQUEST = _HOP | {
    b"host",
    b"content-length",
    b"content-encoding",
    b"expect",
    b"x-forwarded-for",
}
_DROP_AUTH = _DROP_REQUEST | {b"authorization"}
# Framing is the client connection's own (h1.Reply sets Content-Length or chunked).
_DROP_RESPONSE = _HOP | {b"content-length"}
_REFUSAL_PEEK = 1 << 16


@dataclass(frozen=True)
class Retry:
    reason: str  # "connect" | agent refusal code


@dataclass(frozen=True)
class Failed:
    response: Response


SendResult = Exchange | Retry | Failed


def forwarded_headers(request: Request, *, strip_auth: bool) -> bytes:
    """The client's headers as the upstream gets them (a header block without Host/length)."""
    return forwarded_header_block(
        request.headers, request.peer, _DROP_AUTH if strip_auth else _DROP_REQUEST
    )


def request_head(target: bytes, hostport: bytes, length: int, block: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n%s\r\n" % (
        target,
        hostport,
        length,
        block,
    )


@lru_cache(maxsize=4096)
def host_port(url: str) -> tuple[str, int]:
    """("10.0.0.7", 8000) of a replica's base URL (cached: the same few URLs every request)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 80


@lru_cache(maxsize=4096)
def host_header(url: str) -> bytes:
    """The Host of a request to a replica: b"10.0.0.7:8000", b"[fd00::7]:8000".

    urlsplit's hostname drops an IPv6 literal's brackets; joined back with the port without
    them (b"fd00::7:8000") every request to a pod of an IPv6 cluster had an invalid Host
    (RFC 9110 §7.2 / RFC 3986 §3.2.2: an IP-literal is bracketed).
    """
    host, port = host_port(url)
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return response_header_fields(headers, _DROP_RESPONSE)


async def send(
    pool: UpstreamPool,
    url: str,
    target: bytes,
    block: bytes,
    body: bytes,
    reply: Reply,
    *,
    whole: bool = False,
    first: float | None = None,
) -> SendResult:
    """Send once; an Exchange returned is already being relayed into `reply` (with `whole`,
    already relayed, unless it is a refusal-sized answer spliced after the peek: see
    UpstreamPool.request). `first`, when given, bounds the wait for the answer's first byte
    instead of the pool's read timeout (which bounds the reads after it)."""
    host, port = host_port(url)
    head = request_head(target, host_header(url), len(body), block)
    try:
        exchange = await pool.request(
            host,
            port,
            head,
            body,
            sink=reply,
            header_filter=response_headers,
            buffered=AGENT_REFUSAL_STATUSES,
            whole=whole,
            first_read_timeout=first,
        )
    except ConnectError:
        return Retry("connect")
    except _UpstreamTimeout:
        return Failed(
            error_response(
                504, "the model server did not answer in time", ErrorCode.UPSTREAM_TIMEOUT
            )
        )
    except UpstreamError as e:
        log.info("upstream %s failed: %s", url, e)
        return Failed(error_response(502, "the model server failed", ErrorCode.UPSTREAM_ERROR))
    if exchange.status not in AGENT_REFUSAL_STATUSES:
        return exchange
    try:
        raw, complete = await exchange.read(_REFUSAL_PEEK)
    except UpstreamError:
        exchange.close()
        return Failed(error_response(502, "the model server failed", ErrorCode.UPSTREAM_ERROR))
    except BaseException:
        exchange.close()
        raise
    if not complete:
        # Larger than the peek: not one of the agent's small refusals, so the upstream's own
        # answer; relayed whole (answering from the peeked bytes would truncate it).
        exchange.splice()
        return exchange
    exchange.release()
    code = error_code(raw)
    if code is not None and AGENT_REFUSALS.get(code) == exchange.status:
        return Retry(code)
    return Failed(_passthrough(exchange, raw))


def _passthrough(exchange: Exchange, raw: bytes) -> Response:
    ctype = None
    headers = []
    for name, value in response_headers(exchange.headers):
        low = name.lower()
        if low == b"content-type":
            ctype = value.decode("latin-1")
        elif low not in (b"date", b"server"):
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return Response(exchange.status, raw, tuple(headers), content_type=ctype)
