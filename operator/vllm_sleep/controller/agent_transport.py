"""One small connection pool per agent, so talking to one agent costs the same at 10 or 1,000.

httpcore's pool looks at every connection it holds for every request it sends. The operator
keeps one long-poll open per model pod, so one shared pool over all agents made each request
cost O(pods), and a fleet's bring-up O(pods²). Each agent (scheme, host, port) gets its own
transport here, holding only that agent's few connections; a pool idle for IDLE_SECONDS (its pod
gone, or quiet) is closed. The pools share one TLS context: httpx builds one per transport
otherwise, loading the CA bundle each time (~0.1 s of CPU and ~1 MB per agent).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

import httpx

IDLE_SECONDS = 300.0
PRUNE_EVERY = 60.0
# Per agent: the long-poll, a transition, and a state read or two.
AGENT_LIMITS = httpx.Limits(max_connections=16, max_keepalive_connections=4)

Origin = tuple[str, str, int | None]


class PerAgentTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        make: Callable[[], httpx.AsyncBaseTransport] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make = make or self._agent_pool
        self._tls: ssl.SSLContext | None = None
        self._clock = clock
        self._pools: dict[Origin, httpx.AsyncBaseTransport] = {}
        self._used: dict[Origin, float] = {}
        self._busy: dict[Origin, int] = {}
        self._pruned_at = clock()

    def _agent_pool(self) -> httpx.AsyncBaseTransport:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return httpx.AsyncHTTPTransport(verify=self._tls, limits=AGENT_LIMITS)

    def __len__(self) -> int:
        return len(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._prune()
        origin = (request.url.scheme, request.url.host, request.url.port)
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = self._make()
        self._busy[origin] = self._busy.get(origin, 0) + 1
        self._used[origin] = self._clock()
        try:
            return await pool.handle_async_request(request)
        finally:
            # A response body is read after this returns; IDLE_SECONDS covers that.
            self._busy[origin] -= 1
            self._used[origin] = self._clock()

    async def _prune(self) -> None:
        now = self._clock()
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        for origin in [o for o, t in self._used.items() if now - t > IDLE_SECONDS]:
            if self._busy.get(origin):
                continue
            pool = self._pools.pop(origin)
            del self._used[origin], self._busy[origin]
            await pool.aclose()

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        self._used.clear()
        self._busy.clear()
        for pool in pools:
            await pool.aclose()
