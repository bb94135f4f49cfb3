"""The gateway's --read-timeout and a request the agent holds though the gateway saw it awake.

The Pod watch lags: a replica the gateway still sees awake may have put its engine to sleep,
and its agent then holds the request (no byte) until the engine is awake again, for at most
its hold timeout, which is the model's `wake.timeout`. So the first byte of any routed request
may take that long on top of the read timeout; between later reads the read timeout applies.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiohttp import web

from vllm_sleep.gateway import Gateway, StaticSource
from vllm_sleep.gateway.routing import WakePolicy

from .test_gateway_hold import AgentHold, Behaviour, chat, queued, until
from .test_gateway_review_read_timeout import (  # noqa: F401 (the fixtures)
    READ_TIMEOUT,
    Upstream,
    gateway,
    source,
    upstream,
)

pytestmark = pytest.mark.contract

EVENTS = [b"data: %d\n\n" % i for i in range(5)] + [b"data: [DONE]\n\n"]


def held_then_streams(hold: AgentHold, stall: float = 0.0) -> Behaviour:
    """A fake agent that holds the request, then streams EVENTS (after a `stall` past the
    first, if given: an engine that hangs mid-stream)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await hold(request)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i, event in enumerate(EVENTS):
            await resp.write(event)
            if i == 0 and stall:
                await asyncio.sleep(stall)
        await resp.write_eof()
        return resp

    return handle


async def held_past(hold: AgentHold, seconds: float, task: asyncio.Task[httpx.Response]) -> None:
    """Until the request has waited at the agent for `seconds` (the engine is still waking),
    still unanswered."""
    try:
        await until(lambda: hold.waiting == 1)
        await asyncio.sleep(seconds)
        assert hold.waiting == 1
        if task.done():
            resp = task.result()
            raise AssertionError(f"answered while held: {resp.status_code} {resp.text}")
    except BaseException:
        hold.release.set()  # the fake agent's shutdown waits for its handler
        raise


async def test_a_request_the_agent_holds_past_the_read_timeout_after_the_gateway_saw_it_awake(
    gateway: Gateway,  # noqa: F811
    source: StaticSource,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    http: httpx.AsyncClient,
) -> None:
    hold = AgentHold()
    upstream.behaviour = held_then_streams(hold)
    source.add_model("m", [upstream.url], awake=True, wake=WakePolicy(timeout=30))
    task = asyncio.create_task(chat(gateway, http))
    await held_past(hold, READ_TIMEOUT * 3, task)
    hold.release.set()  # the engine is awake: the agent sends the request on
    resp = await task
    assert resp.status_code == 200, resp.text
    assert resp.content == b"".join(EVENTS)  # the whole answer
    assert queued(gateway) == 0  # it was never held by the gateway itself


async def test_after_the_first_byte_the_read_timeout_bounds_each_read(
    gateway: Gateway,  # noqa: F811
    source: StaticSource,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    http: httpx.AsyncClient,
) -> None:
    hold = AgentHold()
    # Stalls for less than the hold's allowance: only the read timeout can cut it.
    upstream.behaviour = held_then_streams(hold, stall=READ_TIMEOUT * 10)
    source.add_model("m", [upstream.url], awake=True, wake=WakePolicy(timeout=30))
    task = asyncio.create_task(chat(gateway, http))
    await held_past(hold, READ_TIMEOUT * 3, task)
    hold.release.set()
    # Cut at the read timeout after the first event: the status line was out, so the stream
    # ends short.
    with pytest.raises(httpx.RemoteProtocolError):
        await asyncio.wait_for(task, 10)


async def test_a_replica_that_never_answers_is_still_a_504(
    gateway: Gateway,  # noqa: F811
    source: StaticSource,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    http: httpx.AsyncClient,
) -> None:
    hold = AgentHold()  # released only at the end, for the fake agent's shutdown
    upstream.behaviour = hold
    source.add_model("m", [upstream.url], awake=True, wake=WakePolicy(timeout=0.5))
    try:
        resp = await asyncio.wait_for(chat(gateway, http), 10)  # bounded: read + wake timeout
    finally:
        hold.release.set()
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "upstream_timeout"
    assert upstream.received == 1  # sent once, never again
