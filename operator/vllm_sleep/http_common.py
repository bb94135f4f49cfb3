"""What the two proxies (the pod agent and the gateway) share: header rules; and the
agent's aiohttp relay (the gateway splices with vllm_sleep.h1 instead)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

log = logging.getLogger(__name__)

# RFC 9110 §7.6.1 hop-by-hop headers (plus the non-standard Proxy-Connection and Keep-Alive):
# they describe one connection and must not be forwarded to the next.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# One bound on a request's head for both proxies, so a head the gateway forwards is never one
# the agent refuses: request line and headers together (and so any single field) at most
# MAX_HEAD_BYTES, at most MAX_HEADERS fields. Past it: 431 in OpenAI's error shape.
MAX_HEAD_BYTES: Final = 64 << 10
MAX_HEADERS: Final = 128

# Responses with a known length up to this (and not SSE) are relayed in one write.
SMALL_BODY = 1 << 20
_DROP_RESPONSE: Final = HOP_BY_HOP | {"content-length"}


def response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Upstream response headers a proxy passes on: no hop-by-hop, length recomputed."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in _DROP_RESPONSE:
            out.add(name, value)
    return out


async def relay(
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    *,
    on_client_left: Callable[[], None] = lambda: None,
    on_broken: Callable[[BaseException], None] = lambda _e: None,
) -> web.StreamResponse:
    """Copy an upstream response to the client; SSE and long bodies chunk by chunk, unbuffered.

    A client that leaves ends the relay (leaving the caller's `async with` closes the upstream
    connection, which is how vLLM learns to abort). An upstream that breaks off mid-body cuts
    the client's connection: the status line is already out, so an incomplete response is the
    only honest signal left (a second status line would corrupt the connection).
    """
    headers = response_headers(upstream.headers)
    length = upstream.content_length
    if length is not None and length <= SMALL_BODY and upstream.content_type != "text/event-stream":
        body = await upstream.read()
        return web.Response(
            status=upstream.status, reason=upstream.reason, headers=headers, body=body
        )
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if length is not None:
        resp.content_length = length
    await resp.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await resp.write(chunk)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        on_client_left()
        return resp
    except Exception as e:
        on_broken(e)
        log.warning("relay of %s broke off: %s: %s", request.path, type(e).__name__, e)
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp
