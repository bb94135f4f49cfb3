"""The h1 server's pipelining bounds, on asyncio's loop and on uvloop (what the gateway and the
agent run on when it is installed): a client that leaves is seen while requests wait behind
the one answered, a client that reads no answers costs a socket buffer's worth, and at most
`max_pipelined` requests wait parsed. The request-path probes (test_probe_request_path*.py)
show the same through the agent and the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from vllm_sleep.h1 import Limits, Reply, Request, Response

from .test_h1 import connect, get, serving

pytestmark = pytest.mark.contract

MAX_PIPELINED = 8


async def _a_client_that_leaves_is_seen_behind_a_pipeline() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        if request.path == "/hold":
            started.set()
            try:
                await asyncio.Event().wait()  # held until the client leaves
            finally:
                cancelled.set()
        reply.send(Response(200, b"{}"))

    async with serving(handler) as (server, port):
        async with connect(port) as wire:
            wire.writer.write(get("/hold") + get("/next") + b"GET /partial HTTP/1.1\r\nHo")
            await asyncio.wait_for(started.wait(), 5)
            await asyncio.sleep(0.05)  # the pipelined bytes are in, reading ahead
        await asyncio.wait_for(cancelled.wait(), 5)
        await asyncio.wait_for(_until(lambda: not server.connections), 5)
        assert server.budget.used == 0


async def _a_client_that_reads_no_answers_costs_a_buffer() -> None:
    async def handler(request: Request, reply: Reply) -> None:
        reply.send(Response(200, b"x" * 200))

    async with serving(handler) as (server, port), connect(port, rcvbuf=4096) as wire:
        batch = get("/") * MAX_PIPELINED
        sent = 0
        with contextlib.suppress(TimeoutError):
            while sent < (4 << 20):  # until the server stops reading (or 4 MiB)
                wire.writer.write(batch)
                await asyncio.wait_for(wire.writer.drain(), 0.5)
                sent += len(batch)
                await asyncio.sleep(0)
        [conn] = server.connections
        transport = conn._transport
        assert transport is not None
        assert transport.get_write_buffer_size() < (1 << 20), sent
        assert len(conn._pending) <= MAX_PIPELINED


async def _a_pipeline_past_the_bound_is_answered_then_refused() -> None:
    async def handler(request: Request, reply: Reply) -> None:
        await asyncio.sleep(0)
        reply.send(Response(200, b"{}"))

    limits = Limits(max_pipelined=MAX_PIPELINED)
    async with serving(handler, limits) as (server, port), connect(port) as wire:
        wire.writer.write(get("/") * (MAX_PIPELINED * 3))
        data = await wire.eof()
        assert server.budget.used == 0
    # The one being answered, the MAX_PIPELINED waiting behind it, then the next one's 400.
    assert data.count(b"HTTP/1.1 ") == MAX_PIPELINED + 2, data[-300:]
    assert data.count(b"HTTP/1.1 200 ") == MAX_PIPELINED + 1
    assert b"HTTP/1.1 400 " in data and b"Too many pipelined requests" in data


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - the server has no event for it
        await asyncio.sleep(0.005)


CASES = [
    _a_client_that_leaves_is_seen_behind_a_pipeline,
    _a_client_that_reads_no_answers_costs_a_buffer,
    _a_pipeline_past_the_bound_is_answered_then_refused,
]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__.strip("_"))
def test_pipeline_bounds(case: Callable[[], Awaitable[None]], loop: str) -> None:
    async def run() -> None:
        await case()

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run())
