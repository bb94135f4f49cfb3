"""h1's upstream pool: a request's first byte may have a bound of its own (`first_read_timeout`,
for an upstream that may hold a request before working on it); the read timeout bounds every
read after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from vllm_sleep.h1 import UpstreamPool, UpstreamTimeout

pytestmark = pytest.mark.contract

HEAD = b"GET /x HTTP/1.1\r\nhost: up\r\n\r\n"
READ = 0.2  # the pool's read timeout
LATE = READ * 3  # how late the upstream's bytes come


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    """Two requests on one connection: the first one's answer comes LATE; the second one's
    head and half its body come at once, the rest LATE."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(LATE)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nok")
            await asyncio.sleep(LATE)
            writer.write(b"ok")
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_the_first_byte_has_its_own_bound_and_every_read_after_it_the_read_timeout(
    upstream: int,
) -> None:
    pool = UpstreamPool(connect_timeout=1.0, read_timeout=READ)
    try:
        exchange = await pool.request("127.0.0.1", upstream, HEAD, b"", first_read_timeout=30.0)
        data, complete = await exchange.read(1 << 16)
        assert (data, complete) == (b"ok", True)  # its first byte came past the read timeout
        exchange.release()
        # The same connection: its bytes stop after the first ones, for less than the first
        # byte's bound but more than the read timeout.
        exchange = await pool.request("127.0.0.1", upstream, HEAD, b"", first_read_timeout=30.0)
        try:
            with pytest.raises(UpstreamTimeout):
                await asyncio.wait_for(exchange.read(1 << 16), 10)
        finally:
            exchange.close()
    finally:
        await pool.close()


async def test_no_first_byte_within_its_bound_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; the client's close ends it
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    pool = UpstreamPool(connect_timeout=1.0, read_timeout=None)  # no read timeout at all
    try:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(
                pool.request("127.0.0.1", port, HEAD, b"", first_read_timeout=READ), 10
            )
    finally:
        await pool.close()
        server.close()
