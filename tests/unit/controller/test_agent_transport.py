"""The agents' transport: httpx requests carried by one aiohttp session, over real loopback HTTP.

Each request reaches its own agent with its own token; a connection to an agent is reused;
failures come out as the httpx errors AgentClient handles; a parked long-poll stays cheap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiohttp import web

from vllm_sleep.api.agent_protocol import StateReport
from vllm_sleep.controller import agents
from vllm_sleep.controller.agent_transport import AgentTransport


class Agents:
    """One aiohttp server on every loopback address: it answers with who it was asked as."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, int]] = []  # (agent IP, path, auth, peer port)
        self.parked = asyncio.Event()

    async def state(self, request: web.Request) -> web.Response:
        sock = request.transport.get_extra_info("sockname") if request.transport else ("", 0)
        peer = request.transport.get_extra_info("peername") if request.transport else ("", 0)
        self.seen.append((sock[0], request.path, request.headers.get("Authorization"), peer[1]))
        if request.query.get("wait"):
            self.parked.set()
            await asyncio.sleep(float(request.query["wait"]) + 60)
        version = int(request.query.get("version", "0")) + 1
        return web.json_response({"state": "asleep", "version": version})

    async def sleep(self, request: web.Request) -> web.Response:
        self.seen.append(("", request.path, request.headers.get("Authorization"), 0))
        if request.headers.get("Authorization") != "Bearer right":
            return web.json_response({"error": {"message": "bad token"}}, status=401)
        return web.json_response({"state": "sleeping", "level": int(request.query["level"])})

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Agents]:
    agents_ = Agents()
    app = web.Application()
    app.router.add_get("/state", agents_.state)
    app.router.add_post("/sleep", agents_.sleep)
    app.router.add_get("/slow", agents_.slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monkeypatch.setattr(agents, "CONTROL_PORT", port)
    try:
        yield agents_
    finally:
        await runner.cleanup()


async def test_each_agent_is_reached_with_its_own_token(served: Agents) -> None:
    async with httpx.AsyncClient(transport=AgentTransport()) as http:
        client = agents.AgentClient(http)
        a, b = await asyncio.gather(
            client.state("127.0.0.2", "token-a"), client.state("127.0.0.3", "token-b")
        )
        assert isinstance(a, StateReport) and a.version == 1 and b.version == 1
        again = await client.state("127.0.0.2", "token-a")
    by_ip = {(ip, auth) for ip, _path, auth, _port in served.seen}
    assert by_ip == {("127.0.0.2", "Bearer token-a"), ("127.0.0.3", "Bearer token-b")}
    assert again.version == 1
    # The agent's connection was kept and reused for its next request.
    ports = [port for ip, _path, _auth, port in served.seen if ip == "127.0.0.2"]
    assert len(ports) == 2 and ports[0] == ports[1]


async def test_a_transition_carries_its_query_and_the_agents_refusal(served: Agents) -> None:
    async with httpx.AsyncClient(transport=AgentTransport()) as http:
        client = agents.AgentClient(http)
        report = await client.sleep("127.0.0.2", "right", level=2, drain_timeout=5)
        assert report.level == 2
        with pytest.raises(agents.AgentError) as e:
            await client.sleep("127.0.0.2", "wrong", level=1, drain_timeout=5)
        assert e.value.status == 401 and "bad token" in e.value.message


async def test_failures_are_httpx_errors(served: Agents) -> None:
    async with httpx.AsyncClient(transport=AgentTransport()) as http:
        with pytest.raises(httpx.ConnectError):  # nothing listens on port 1
            await http.get("http://127.0.0.2:1/state")
        port = agents.CONTROL_PORT
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"http://127.0.0.2:{port}/slow", timeout=httpx.Timeout(0.2))
        # AgentClient reads both as an unreachable agent, as it did with httpx's own transport.
        client = agents.AgentClient(http)
        assert (await client.state("127.0.0.9", "t")).version == 1  # still serving after that


async def test_a_request_waiting_for_a_busy_agents_connection_times_out(served: Agents) -> None:
    def one_per_agent() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit_per_host=1))

    port = agents.CONTROL_PORT
    async with httpx.AsyncClient(transport=AgentTransport(one_per_agent)) as http:
        parked = asyncio.create_task(http.get(f"http://127.0.0.2:{port}/state?wait=30&version=1"))
        await asyncio.wait_for(served.parked.wait(), 5)
        with pytest.raises(httpx.TimeoutException):  # its pool wait is bounded, as httpx's was
            await http.get(
                f"http://127.0.0.2:{port}/state", timeout=httpx.Timeout(30, connect=0.1, pool=0.1)
            )
        parked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await parked


async def test_a_parked_long_poll_stays_shallow(served: Agents) -> None:
    # The operator parks one long-poll per model pod; its coroutines (each a frame kept alive)
    # were ~17 deep through httpcore, ~35 KiB a poll, most of the operator's memory per model.
    async with httpx.AsyncClient(transport=AgentTransport()) as http:
        client = agents.AgentClient(http)
        poll = asyncio.create_task(client.state("127.0.0.2", "t", version=1, wait=30))
        await asyncio.wait_for(served.parked.wait(), 5)
        await asyncio.sleep(0.05)
        depth, link = 0, poll.get_coro()
        while link is not None and (asyncio.iscoroutine(link) or hasattr(link, "gi_yieldfrom")):
            depth += 1
            link = getattr(link, "cr_await", None) or getattr(link, "gi_yieldfrom", None)
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll
    assert depth <= 14, depth  # 13 here; 17 through httpcore
