"""h1's upstream pool: a request's own read timeout replaces the pool's, for that request only
(the vLLM client's short calls and long transitions share one pool)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from vllm_sleep.h1 import UpstreamPool, UpstreamTimeout

pytestmark = pytest.mark.contract

HEAD = b"GET /x HTTP/1.1\r\nhost: up\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.fixture
async def slow_upstream() -> AsyncIterator[int]:
    """Answers each request 0.6 s after it arrived."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(0.6)
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def body(pool: UpstreamPool, port: int, **kwargs: float | None) -> bytes:
    exchange = await pool.request("127.0.0.1", port, HEAD, b"", **kwargs)
    try:
        data, complete = await exchange.read(1 << 16)
    finally:
        exchange.release()
    assert complete
    return data


async def test_a_request_timeout_shorter_than_the_pools_applies(slow_upstream: int) -> None:
    pool = UpstreamPool(connect_timeout=1.0)  # no read timeout of its own
    try:
        with pytest.raises(UpstreamTimeout):
            await body(pool, slow_upstream, read_timeout=0.2)
        assert await body(pool, slow_upstream) == b"ok"  # the next request: the pool's (none)
    finally:
        await pool.close()


async def test_a_request_timeout_longer_than_the_pools_applies(slow_upstream: int) -> None:
    pool = UpstreamPool(connect_timeout=1.0, read_timeout=0.2)
    try:
        assert await body(pool, slow_upstream, read_timeout=30.0) == b"ok"
        assert await body(pool, slow_upstream, read_timeout=None) == b"ok"
        with pytest.raises(UpstreamTimeout):
            await body(pool, slow_upstream)  # the pool's own
    finally:
        await pool.close()
