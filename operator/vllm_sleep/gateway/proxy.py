"""The data path to one replica: send a buffered request (the answer is relayed by `http_common.relay`).

Retry rule (the only place a request may be sent twice): `send` returns `Retry` exactly when the
request provably never reached an engine:
  - the TCP connection to the replica could not be opened (ClientConnectorError, or the connect
    timeout): not one byte was written;
  - the agent answered 503 with one of its own refusal codes (`hold_timeout`, `queue_full`,
    `engine_unavailable`, `engine_unreachable`): the agent guarantees such a request was never
    forwarded to vLLM.
Anything else after the connection was open (a disconnect while writing or reading, a read
timeout, any other status, including a 503 that vLLM itself produced) is final: the body may
have reached the engine, so it is answered (502/504 or the upstream's own response), never resent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..http_common import AGENT_REFUSAL_CODES, HOP_BY_HOP, response_headers
from .errors import error_response

log = logging.getLogger(__name__)

AGENT_REFUSALS = AGENT_REFUSAL_CODES
# aiohttp's server already decoded the request body (Content-Encoding) and answered Expect;
# Host and Content-Length belong to the upstream request.
_DROP_REQUEST = HOP_BY_HOP | {"host", "content-length", "content-encoding", "expect"}
_REFUSAL_PEEK = 1 << 16


@dataclass(frozen=True)
class Retry:
    reason: str  # "connect" | agent refusal code


@dataclass(frozen=True)
class Failed:
    response: web.Response


SendResult = aiohttp.ClientResponse | Retry | Failed


def make_session(connect_timeout: float, read_timeout: float | None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # the hold queue and the engines bound concurrency, not the pool
        keepalive_timeout=30,  # below aiohttp servers' 75 s: we close idle sockets first
        use_dns_cache=False,  # targets are pod IPs
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        ),
        auto_decompress=False,  # bytes pass through with the upstream's Content-Encoding
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        trust_env=False,
    )


def forward_headers(request: web.BaseRequest, *, strip_auth: bool) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        low = name.lower()
        if low in _DROP_REQUEST or (strip_auth and low == "authorization"):
            continue
        out.add(name, value)
    peer = request.remote
    if peer:
        prior = request.headers.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return out


async def send(
    session: aiohttp.ClientSession, url: str, headers: CIMultiDict[str], body: bytes
) -> SendResult:
    try:
        resp = await session.post(
            URL(url, encoded=True), headers=headers, data=body, allow_redirects=False
        )
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
        return Retry("connect")
    except TimeoutError:
        return Failed(
            error_response(504, "the model server did not answer in time", "upstream_timeout")
        )
    except aiohttp.ClientError as e:
        return Failed(
            error_response(502, f"the model server failed: {type(e).__name__}", "upstream_error")
        )
    if resp.status != 503:
        return resp
    try:
        raw = await resp.content.read(_REFUSAL_PEEK)
        complete = resp.content.at_eof()
    except (aiohttp.ClientError, TimeoutError):
        resp.release()
        return Failed(error_response(502, "the model server failed", "upstream_error"))
    resp.release()
    if complete and _refusal_code(raw) in AGENT_REFUSALS:
        return Retry(_refusal_code(raw) or "")
    return Failed(web.Response(status=503, body=raw, headers=response_headers(resp.headers)))


def _refusal_code(raw: bytes) -> str | None:
    try:
        code = json.loads(raw)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None
