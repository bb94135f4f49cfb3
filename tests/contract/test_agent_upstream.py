"""What vLLM receives from the agent's public port, and what a client that leaves leaves behind.

A hand-made upstream (aiohttp) stands in for vLLM so the test sees the request as it arrived and
controls when the answer comes; the client speaks raw HTTP/1.1 so its header bytes are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from vllm_sleep.agent import Agent, AgentConfig

from .agent_wait import wait_state

pytestmark = pytest.mark.contract


@dataclass
class Upstream:
    url: str = ""
    seen: list[web.BaseRequest] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()

    async def completions(request: web.Request) -> web.Response:
        up.seen.append(request)
        await request.read()
        if request.query.get("wait"):
            await up.release.wait()  # a non-streamed answer: it comes whole, at the end
        return web.json_response({"ok": True})

    async def health(_request: web.Request) -> web.Response:
        return web.Response()

    async def awake(_request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": False})

    app = web.Application()
    app.add_routes(
        [
            web.get("/health", health),
            web.get("/is_sleeping", awake),
            web.post("/v1/completions", completions),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.3.3", 0)
    await site.start()
    up.url = site.name
    yield up
    up.release.set()
    await runner.cleanup()


@contextlib.asynccontextmanager
async def awake_agent(upstream: str, host: str) -> AsyncIterator[Agent]:
    """An agent in front of `upstream`, once it has seen the engine awake."""
    config = AgentConfig(
        listen_host=host,
        public_port=0,
        control_port=0,
        upstream=upstream,
        control_token="t",
        poll_interval=0.01,
        health_interval=0.05,
    )
    async with Agent(config) as a:
        await wait_state(a, "awake")
        yield a


@pytest.fixture
async def agent(upstream: Upstream) -> AsyncIterator[Agent]:
    async with awake_agent(upstream.url, "127.0.2.3") as a:
        yield a


async def send_raw(
    agent: Agent, head: bytes, body: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = agent.public_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    return reader, writer


async def test_vllm_gets_the_clients_header_bytes_as_they_came(
    agent: Agent, upstream: Upstream
) -> None:
    # A field value may carry obs-text (RFC 9110 §5.5): latin-1 bytes that are not UTF-8. The
    # agent passes names and values byte for byte, in the client's case, as the gateway does.
    head = (
        b"POST /v1/completions HTTP/1.1\r\nhost: agent\r\n"
        b"X-Note: caf\xe9\r\nX-Request-Id: Abc-1\r\nconnection: keep-alive, x-hop\r\n"
        b"x-hop: gone\r\n"
    )
    reader, writer = await send_raw(agent, head, b'{"model":"m","prompt":"hi"}')
    try:
        async with asyncio.timeout(10):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
    finally:
        writer.close()
    (seen,) = upstream.seen
    raw = dict(seen.raw_headers)
    assert raw[b"X-Note"] == b"caf\xe9"
    assert raw[b"X-Request-Id"] == b"Abc-1"
    lower = {n.lower(): v for n, v in seen.raw_headers}
    assert b"x-hop" not in lower  # named in Connection: for this hop only
    assert lower[b"x-forwarded-for"] == b"127.0.0.1"  # the client's address


async def test_a_client_that_leaves_before_a_non_streamed_answer_is_an_abandon(
    agent: Agent, upstream: Upstream
) -> None:
    # vLLM answers a non-streamed request only when it is done, so a client that leaves
    # before the head leaves the engine working until it sees the closed connection: the
    # sleep's settle pause must know of it, as of a stream cut short.
    head = b"POST /v1/completions?wait=1 HTTP/1.1\r\nhost: agent\r\n"
    _, writer = await send_raw(agent, head, b'{"model":"m","prompt":"hi"}')
    async with asyncio.timeout(10):
        while not upstream.seen or agent.gate.inflight == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert agent.gate.last_abandoned is None
    writer.close()
    async with asyncio.timeout(10):
        while agent.gate.inflight:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert agent.gate.last_abandoned is not None
