"""The gateway's --read-timeout and requests held at a pod's agent.

`--read-timeout` bounds the silence between two reads from a replica that works on a request.
A request held at an agent is not being worked on: the agent answers nothing until its engine
is awake, and how long that may take is the model's wake timeout (the gateway's 503
`wake_timeout`), not the read timeout. Once released, the read timeout applies again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.gateway.routing import WakePolicy

from .test_gateway_hold import AgentHold, Upstream, chat, queued, until

pytestmark = pytest.mark.contract

READ_TIMEOUT = 0.3


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream("127.0.7.31").start()
    yield up
    await up.stop()


@pytest.fixture
def source() -> StaticSource:
    return StaticSource("team")


@pytest.fixture
async def gateway(source: StaticSource) -> AsyncIterator[Gateway]:
    cfg = GatewayConfig(listen_host="127.0.7.130", port=0, read_timeout=READ_TIMEOUT)
    async with Gateway(cfg, source, MemoryDemand()) as g:
        yield g


async def test_a_request_held_at_an_agent_longer_than_the_read_timeout_is_served(
    gateway: Gateway, source: StaticSource, upstream: Upstream, http: httpx.AsyncClient
) -> None:
    hold = AgentHold()
    upstream.behaviour = hold
    source.add_model("m", [upstream.url], awake=False, wake=WakePolicy(timeout=30), can_hold=True)
    task = asyncio.create_task(chat(gateway, http))
    await until(lambda: hold.waiting == 1)
    await asyncio.sleep(READ_TIMEOUT * 3)  # the engine is still waking
    assert not task.done() and hold.waiting == 1
    hold.release.set()
    resp = await task
    assert resp.status_code == 200, resp.text
    await until(lambda: queued(gateway) == 0)  # the handler ends just after the relay


async def test_a_released_request_that_goes_silent_is_still_cut_by_the_read_timeout(
    gateway: Gateway, source: StaticSource, upstream: Upstream, http: httpx.AsyncClient
) -> None:
    hold = AgentHold()

    async def held_then_stalls(request: web.Request) -> web.StreamResponse:
        await hold(request)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await asyncio.sleep(READ_TIMEOUT * 10)  # the engine hangs mid-stream
        return resp

    upstream.behaviour = held_then_stalls
    source.add_model("m", [upstream.url], awake=False, wake=WakePolicy(timeout=30), can_hold=True)
    task = asyncio.create_task(chat(gateway, http))
    await until(lambda: hold.waiting == 1)
    hold.release.set()
    with pytest.raises(httpx.RemoteProtocolError):  # the status line was out: cut
        await asyncio.wait_for(task, 10)
