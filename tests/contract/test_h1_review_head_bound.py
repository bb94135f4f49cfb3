"""h1's upstream pool bounds a response head and trailer section: a replica that never ends
its head (one endless header line, or interim responses without end) or its trailers is an
UpstreamError once they pass MAX_RESPONSE_HEAD, not memory that grows for as long as it sends.
httptools keeps a header line that has not ended in memory, and re-copies it at every read.
The helpers are test_h1's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from vllm_sleep.h1 import UpstreamError
from vllm_sleep.h1.client import MAX_RESPONSE_HEAD

from .test_h1 import (
    UPSTREAM,
    IncompleteResponse,
    Relay,
    Requests,
    Upstream,
    connect,
    get,
    pooled,
    post,
    serving,
    upstream_head,
    wait_for,
)

pytestmark = [pytest.mark.contract, pytest.mark.timeout(30)]

ENDLESS = 64 * MAX_RESPONSE_HEAD  # sent in all, far past the bound: the test stops there


def endless(start: bytes, repeat: bytes) -> Upstream:
    async def script(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(start)
        sent = 0
        try:
            while sent < ENDLESS:
                writer.write(repeat)
                sent += len(repeat)
                await writer.drain()
        except ConnectionError:
            up.eof.set()  # the pool closed the connection while the head went on
            return
        up.gate.set()  # all of it went out: the pool kept reading it
        await requests.next()

    return Upstream(script)


CASES = {
    "header line": (b"HTTP/1.1 200 OK\r\nx-big: ", b"a" * 4096),
    "header lines": (b"HTTP/1.1 200 OK\r\n", b"x-many: " + b"a" * 4086 + b"\r\n"),
    "interim answers": (b"", b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" * 64),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("whole", [False, True])
async def test_a_response_head_that_never_ends_is_an_upstream_error(case: str, whole: bool) -> None:
    async with endless(*CASES[case]) as up, pooled(read_timeout=None) as pool:
        request = pool.request(UPSTREAM, up.port, upstream_head(), b"", whole=whole)
        with pytest.raises(UpstreamError, match="head"):
            await asyncio.wait_for(request, 10)
        await wait_for(up.eof)  # the connection is closed while the head went on
        assert not up.gate.is_set()


async def test_a_client_gets_502_for_a_response_head_that_never_ends() -> None:
    async with (
        endless(*CASES["header line"]) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        r = await w.response()
        assert r.status == 502


async def test_a_large_head_under_the_bound_and_a_body_in_the_same_read_pass() -> None:
    # The bound is on the head alone: a read that brings a large head and a larger body with
    # it is not counted as head.
    head = b"HTTP/1.1 200 OK\r\nx-big: %s\r\ncontent-length: %d\r\n\r\n"
    body = b"b" * (4 * MAX_RESPONSE_HEAD)
    answer = head % (b"a" * (MAX_RESPONSE_HEAD - 200), len(body)) + body

    async def script(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        while await requests.next() is not None:
            writer.write(answer)

    async with Upstream(script) as up, pooled() as pool:
        exchange = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        data, complete = await exchange.read(len(body))
        assert complete and data == body
        exchange.release()


CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"


@pytest.mark.parametrize("line", [b"x-big: ", b""], ids=["one line", "many lines"])
async def test_a_trailer_section_that_never_ends_is_an_upstream_error(line: bytes) -> None:
    repeat = b"a" * 4096 if line else b"x-many: " + b"a" * 4086 + b"\r\n"
    async with endless(CHUNKED + line, repeat) as up, pooled(read_timeout=None) as pool:
        exchange = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        with pytest.raises(UpstreamError, match="trailers"):
            await asyncio.wait_for(exchange.read(1 << 20), 10)
        exchange.release()
        await wait_for(up.eof)
        assert not up.gate.is_set()


@pytest.mark.parametrize("version", ["1.1", "1.0"], ids=["raw relay", "decoded"])
async def test_a_client_is_cut_off_by_trailers_that_never_end(version: str) -> None:
    async with (
        endless(CHUNKED + b"x-big: ", b"a" * 4096) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        if version == "1.1":
            await w.send(post("/v1/x", b"{}"))
            with pytest.raises(IncompleteResponse) as info:
                await w.response()
            assert info.value.partial is not None and info.value.partial.body == b"hello"
        else:
            await w.send(get("/v1/x", version="1.0"))
            assert (await w.eof()).endswith(b"hello")  # cut: no way to say more to 1.0
        await wait_for(up.eof)
        assert not up.gate.is_set()


async def _uvloop_head() -> None:
    await test_a_response_head_that_never_ends_is_an_upstream_error("header line", True)


async def _uvloop_trailers() -> None:
    await test_a_client_is_cut_off_by_trailers_that_never_end("1.1")


@pytest.mark.parametrize("case", [_uvloop_head, _uvloop_trailers], ids=["head", "trailers"])
def test_on_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    # The gateway's and the agent's event loop.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case())
