"""What counts as an abandoned request at the agent's public port.

An abandon is noted for the sleep's settle pause: a client that leaves before vLLM's last byte
closes the upstream connection, and vLLM aborts the request a moment later. A client that
leaves once vLLM's answer is whole left nothing running in vLLM, and the upstream connection
is as clean as after any answer.

The event loop can see both in one turn: the client's EOF read first (its transport closes,
and the protocol hears of it on the next turn, which cancels the handler), then vLLM's last
bytes read and relayed (which wakes the handler on the next turn too, after the cancel). That
order is driven here on the protocol objects themselves, as the loop would run them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from vllm_sleep.agent import Agent
from vllm_sleep.h1.client import _Conn
from vllm_sleep.h1.server import _Connection

from .test_agent_upstream import Upstream, awake_agent, send_raw
from .test_agent_upstream import upstream as upstream  # the fixture

pytestmark = pytest.mark.contract

HEAD = b"POST /v1/completions?wait=1 HTTP/1.1\r\nhost: agent\r\n"
BODY = b'{"model":"m","prompt":"hi"}'
ANSWER = (
    b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'
)


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - the agent's gate has no public event
            await asyncio.sleep(0.01)


async def in_flight(agent: Agent, upstream: Upstream) -> tuple[_Connection, _Conn]:
    """The client's connection at the agent and the agent's connection to vLLM, once vLLM
    works on the one request."""
    await until(lambda: upstream.seen and agent.gate.inflight == 1)
    public, pool = agent._public, agent._pool
    assert public is not None and pool is not None
    (client,) = public.connections
    (vllm,) = (c for c in pool._all if c.exchange is not None)
    return client, vllm


async def test_a_client_that_leaves_as_the_whole_answer_is_relayed_is_no_abandon(
    upstream: Upstream,
) -> None:
    async with awake_agent(upstream.url, "127.0.2.45") as agent:
        _, writer = await send_raw(agent, HEAD, BODY)
        try:
            client, vllm = await in_flight(agent, upstream)
            transport = client._transport
            assert transport is not None
            transport.close()  # what the client's EOF does (eof_received: False)
            vllm.data_received(ANSWER)  # vLLM's whole answer, relayed in the same turn
            await until(lambda: agent.gate.inflight == 0)
        finally:
            writer.close()
        assert agent.gate.last_abandoned is None  # vLLM had nothing left to abort
        pool = agent._pool
        assert pool is not None
        assert vllm.transport is not None and vllm in pool._idle[vllm.key]  # kept for reuse


async def test_a_client_that_leaves_just_before_the_last_byte_is_an_abandon(
    upstream: Upstream,
) -> None:
    async with awake_agent(upstream.url, "127.0.2.46") as agent:
        _, writer = await send_raw(agent, HEAD, BODY)
        try:
            client, vllm = await in_flight(agent, upstream)
            transport = client._transport
            assert transport is not None
            transport.close()
            vllm.data_received(ANSWER[:-1])  # all but vLLM's last byte
            await until(lambda: agent.gate.inflight == 0)
        finally:
            writer.close()
        assert agent.gate.last_abandoned is not None  # vLLM aborts it when it sees the close
        assert vllm.transport is None  # closed
