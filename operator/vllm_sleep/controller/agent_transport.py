"""The operator's HTTP to its pods' agents: httpx requests, carried by one aiohttp session.

The operator keeps a long-poll open to every model pod's agent (`watchers.py`), so at a
thousand models a thousand requests are parked at any time, and what each costs is multiplied
by the fleet. Carried by httpcore, a parked request was ~19 coroutines, a pool, its locks and
an h11 state machine per agent: ~35 KiB each, most of the operator's memory per model. aiohttp
(already in the process: kopf's client) parks one in a few coroutines and a parser, and its
connector finds an agent's connections by key, so a request costs the same at 10 or 1,000
agents (httpcore's single pool looked at every connection it held for every request: O(pods)).
Idle connections close on their own after aiohttp's keep-alive time.

The agents' control port is plain HTTP on the pod IP (`AgentClient.url`); each request carries
its own Authorization header (the model's token), which aiohttp sends as given. Answers are
small JSON and are read whole. Failures come out as httpx's errors, which `AgentClient` handles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx

# Per agent: the long-poll, a transition, and a state read or two.
PER_AGENT_CONNECTIONS = 16

Session = Callable[[], aiohttp.ClientSession]


def agent_session() -> aiohttp.ClientSession:
    """No limit over all agents, a few connections to each; bodies passed on as sent (httpx
    decodes them), no cookies kept between agents, no redirects followed."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=PER_AGENT_CONNECTIONS),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
    )


class AgentTransport(httpx.AsyncBaseTransport):
    def __init__(self, session: Session = agent_session) -> None:
        self._make = session
        self._session: aiohttp.ClientSession | None = None  # made in the loop, on first use

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._make()
        timeout = request.extensions.get("timeout") or {}
        pool, connect = timeout.get("pool"), timeout.get("connect")
        try:
            async with self._session.request(
                request.method,
                str(request.url),
                headers=[
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                ],
                data=await request.aread() or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    # aiohttp's `connect` is the wait for a free connection plus the connect.
                    connect=None if pool is None or connect is None else pool + connect,
                    sock_connect=connect,
                    sock_read=timeout.get("read"),
                ),
            ) as resp:
                body = await resp.read()
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers]
                status = resp.status
        except Exception as e:
            raise _as_httpx(e, request) from e
        return httpx.Response(
            status, headers=headers, content=body, extensions={"http_version": b"HTTP/1.1"}
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _as_httpx(e: Exception, request: httpx.Request) -> Exception:
    """aiohttp's failure as the httpx error `AgentClient` expects (any other passes through)."""
    kind: Any
    if isinstance(e, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(e, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(e, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(e, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        kind = httpx.RemoteProtocolError
    elif isinstance(e, aiohttp.ClientError):
        kind = httpx.ReadError
    else:
        return e
    return kind(f"{type(e).__name__}: {e}", request=request)  # type: ignore[no-any-return]
