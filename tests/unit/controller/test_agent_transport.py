"""Each agent gets its own small connection pool; a pool left idle is closed."""

from __future__ import annotations

import contextlib

import httpx

from vllm_sleep.controller.agent_transport import IDLE_SECONDS, PRUNE_EVERY, PerAgentTransport


class Pool(httpx.AsyncBaseTransport):
    """An inner transport that records what it carried and whether it was closed."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(f"{request.url.host}:{request.url.port}")
        return httpx.Response(200, json={"state": "asleep"})

    async def aclose(self) -> None:
        self.closed = True


async def test_each_agent_has_its_own_pool_and_reuses_it() -> None:
    made: list[Pool] = []

    def make() -> Pool:
        made.append(Pool())
        return made[-1]

    async with httpx.AsyncClient(transport=PerAgentTransport(make)) as http:
        for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.2"):
            r = await http.get(f"http://{ip}:8002/state")
            assert r.json() == {"state": "asleep"}
    assert [p.hosts for p in made] == [["127.0.0.2:8002", "127.0.0.2:8002"], ["127.0.0.3:8002"]]
    assert all(p.closed for p in made)  # closing the client closes every pool


async def test_an_idle_agents_pool_is_closed_and_a_busy_one_kept() -> None:
    now = [0.0]
    made: dict[str, Pool] = {}

    def make() -> Pool:
        pool = Pool()
        made[f"p{len(made)}"] = pool
        return pool

    transport = PerAgentTransport(make, clock=lambda: now[0])
    async with httpx.AsyncClient(transport=transport) as http:
        await http.get("http://127.0.0.2:8002/state")  # p0: then idle
        now[0] = IDLE_SECONDS - 1
        await http.get("http://127.0.0.3:8002/state")  # p1: recent
        now[0] = IDLE_SECONDS + PRUNE_EVERY
        await http.get("http://127.0.0.3:8002/state")
        assert made["p0"].closed and not made["p1"].closed
        assert len(transport) == 1
        await http.get("http://127.0.0.2:8002/state")  # the agent is back: a fresh pool
        assert len(made) == 3 and len(transport) == 2


async def test_agent_pools_share_one_tls_context() -> None:
    transport = PerAgentTransport()
    async with httpx.AsyncClient(transport=transport) as http:
        for ip in ("127.0.0.2", "127.0.0.3"):
            with contextlib.suppress(httpx.HTTPError):  # nothing listens: only pools matter
                await http.get(f"http://{ip}:1/state", timeout=0.5)
        pools = list(transport._pools.values())
        contexts = {id(p._pool._ssl_context) for p in pools}  # type: ignore[attr-defined]
        assert len(pools) == 2 and len(contexts) == 1
