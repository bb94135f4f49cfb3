"""The agent's public port relaying a byte-exact, misbehaving vLLM (a raw asyncio server).

vLLM's chunked answers reach the client as vLLM framed them (extensions, trailers, a last
chunk split over writes), nothing vLLM sent after an answer's end reaches the client,
pipelined requests are answered in order, and a client that leaves mid-stream frees its
in-flight slot and closes vLLM's connection, whose stale bytes never reach a later request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httptools
import pytest

from vllm_sleep.agent import Agent

from .test_agent_upstream import awake_agent

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]

UPSTREAM_HOST = "127.0.3.41"
AGENT_HOST = "127.0.2.41"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
# Zero-padded sizes, an extension, a trailer, and CR/LF after the end (llhttp skips them).
BODY = b"000a;x=1\r\ndata: one\n\r\n0a\r\ndata: two\n\r\n0\r\nx-usage: 7\r\n\r\n"
PARTS = (SSE_HEAD + BODY[:20], BODY[20:-5], BODY[-5:-2], BODY[-2:] + b"\r\n")


class RawVllm:
    """Answers /health and /is_sleeping plainly, and each POST per `mode`."""

    def __init__(self) -> None:
        self.mode = "parts"
        self.eofs = 0
        self.posts = 0
        self.stalled = asyncio.Event()
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done: list[tuple[bytes, bytes]] = []
        current: dict[str, bytes] = {}

        class Cb:
            def on_url(self, url: bytes) -> None:
                current["url"] = current.get("url", b"") + url

            def on_message_complete(self) -> None:
                done.append((parser.get_method(), current.pop("url", b"")))

        parser = httptools.HttpRequestParser(Cb())
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    self.eofs += 1
                    return
                parser.feed_data(data)
                while done:
                    method, url = done.pop(0)
                    if method == b"GET":
                        body = b'{"is_sleeping": false}' if url == b"/is_sleeping" else b""
                        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
                        writer.write(body)
                        continue
                    self.posts += 1
                    if self.mode == "stall":
                        writer.write(SSE_HEAD + b"a\r\ndata: one\n\r\n")
                        await writer.drain()
                        self.stalled.set()
                        continue  # never ends this answer: only the agent's close ends it
                    for part in PARTS:
                        writer.write(part)
                        await writer.drain()
                        await asyncio.sleep(0.02)
        except ConnectionError:
            self.eofs += 1
        finally:
            writer.close()


@pytest.fixture
async def vllm() -> AsyncIterator[RawVllm]:
    up = RawVllm()
    server = await asyncio.start_server(up.serve, UPSTREAM_HOST, 0)
    up.port = server.sockets[0].getsockname()[1]
    yield up
    server.close()


@pytest.fixture
async def agent(vllm: RawVllm) -> AsyncIterator[Agent]:
    async with awake_agent(f"http://{UPSTREAM_HOST}:{vllm.port}", AGENT_HOST) as a:
        yield a


class Responses:
    def __init__(self) -> None:
        self.done: list[tuple[int, bytes, list[tuple[bytes, bytes]]]] = []
        self.head = False
        self.body = b""
        self.trailers: list[tuple[bytes, bytes]] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head:
            self.trailers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self.body, self.trailers))
        self.head, self.body, self.trailers = False, b"", []


POST = b"POST /v1/completions HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}"


@contextlib.asynccontextmanager
async def client(agent: Agent) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = agent.public_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()


async def read_answers(reader: asyncio.StreamReader, n: int) -> tuple[Responses, bytes]:
    got = Responses()
    raw = b""
    async with asyncio.timeout(10):
        while len(got.done) < n:
            data = await reader.read(1 << 16)
            assert data, f"closed after {len(got.done)} answers: {raw!r}"
            raw += data
            got.parser.feed_data(data)
    return got, raw


async def test_pipelined_chunked_answers_arrive_as_vllm_framed_them(
    agent: Agent, vllm: RawVllm
) -> None:
    async with client(agent) as (reader, writer):
        writer.write(POST * 3)
        got, raw = await read_answers(reader, 3)
        assert [d[0] for d in got.done] == [200] * 3
        assert [d[1] for d in got.done] == [b"data: one\ndata: two\n"] * 3
        assert all(d[2] == [(b"x-usage", b"7")] for d in got.done)
        assert raw.count(BODY) == 3 and raw.endswith(BODY)  # byte for byte, nothing after
        writer.write(POST)  # the connection still serves
        again, _ = await read_answers(reader, 1)
        assert again.done[0][1] == b"data: one\ndata: two\n"
    async with asyncio.timeout(10):
        while agent.gate.inflight:  # noqa: ASYNC110 - the gate has no event for it
            await asyncio.sleep(0.01)


async def test_a_client_leaving_mid_stream_frees_its_slot_and_nothing_stale_follows(
    agent: Agent, vllm: RawVllm
) -> None:
    vllm.mode = "stall"
    eofs = vllm.eofs
    async with client(agent) as (reader, writer):
        writer.write(POST)
        async with asyncio.timeout(10):
            await vllm.stalled.wait()
            assert (await reader.read(1 << 16)).startswith(b"HTTP/1.1 200")
            while agent.gate.inflight != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    async with asyncio.timeout(10):
        while agent.gate.inflight or vllm.eofs == eofs:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert agent.gate.last_abandoned is not None
    vllm.mode = "parts"
    async with client(agent) as (reader, writer):
        writer.write(POST)
        got, raw = await read_answers(reader, 1)
        assert got.done[0][1] == b"data: one\ndata: two\n"
        assert raw.endswith(BODY) and raw.count(b"data: one") == 1
