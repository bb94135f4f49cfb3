"""Abuse of the gateway's request path, each finding of issue 13 against a running gateway.

A real Gateway (StaticSource, API keys on) in front of a small aiohttp upstream, attacked over
loopback with raw sockets while a background client keeps sending ordinary requests, which
must all succeed. Bounded in count and time (each attack is a few connections and a few MiB;
timeouts are set to fractions of a second), never asserting timings.

The memory bounds stated and checked here (tracemalloc of this process, which holds the
in-process gateway; the attack payloads are built before the baseline):
  - a request's body is buffered at most once as received and once decoded, so one connection
    costs at most 2 x `--max-body-bytes` and all of them together `--max-buffered-bytes`
    (the budget; past it, 503) plus what the parser and socket buffers hold per connection;
  - a JSON body is never turned into Python objects when it is large: parsing it costs a
    slice of parser events (< 1 byte per body byte), not ~25 bytes per byte;
  - an unauthenticated upload costs nothing: it is answered 401 from its head.
The event-loop stall these attacks caused is measured by bench/abuse_bench.py, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]

HOST = "127.0.14.1"
UPSTREAM = "127.0.14.2"
KEY = "abuse-key"
MIB = 1 << 20
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TIMEOUT = 0.4  # head and body timeouts of the gateway under test
# A bound on a hang, not a timing: tracemalloc slows every allocation, and the suite's workers
# share the machine's cores.
WAIT = 60.0


class Upstream:
    """Answers every chat completion with the model it was asked for."""

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.read()
        model = json.loads(body).get("model") if len(body) < MIB else "big"
        return web.json_response({"object": "chat.completion", "model": model})

    async def __aenter__(self) -> Upstream:
        app = web.Application(client_max_size=64 * MIB)
        app.router.add_post("/v1/chat/completions", self.chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, UPSTREAM, 0).start()
        self.url = f"http://{UPSTREAM}:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def started(tmp_path: Path, timeout: float) -> AsyncIterator[Gateway]:
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    async with Upstream() as up:
        source = StaticSource("team")
        source.add_model("m", [up.url])
        config = GatewayConfig(
            listen_host=HOST,
            port=0,
            api_keys_file=str(keys),
            max_body_bytes=8 * MIB,
            max_buffered_bytes=16 * MIB,
            header_timeout=timeout,
            body_timeout=timeout,
        )
        async with Gateway(config, source, MemoryDemand()) as g:
            yield g


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with started(tmp_path, TIMEOUT) as g:
        yield g


@pytest.fixture
async def patient_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """For the memory tests: a big body under tracemalloc (which slows every allocation) can take
    the gateway longer than TIMEOUT to read on a starved host, and a 408 would say nothing of
    memory."""
    async with started(tmp_path, WAIT) as g:
        yield g


def budget(gateway: Gateway) -> int:
    server = gateway._server
    assert server is not None
    return server.budget.used


class Background:
    """Ordinary authenticated requests, one after the other, for as long as the attack runs."""

    def __init__(self, gateway: Gateway) -> None:
        self._url = gateway.url + "/v1/chat/completions"
        self.statuses: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as http:
            while True:
                resp = await http.post(self._url, json=CHAT, headers=headers)
                self.statuses.append(resp.status_code)
                await asyncio.sleep(0.02)

    async def __aenter__(self) -> Background:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        # At least a few requests went through during the attack, whatever the machine's pace.
        async with asyncio.timeout(WAIT):
            while len(self.statuses) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        assert self.statuses and set(self.statuses) == {200}, self.statuses


class Raw:
    """One raw client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> bool:
        """False once the gateway has closed (a refused upload's bytes are dropped)."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            return False
        return True

    async def answer(self) -> tuple[int, dict[str, object]]:
        """Status and JSON body of the one response the gateway sends before closing."""
        raw = bytearray()
        async with asyncio.timeout(WAIT):
            with contextlib.suppress(ConnectionError):
                while chunk := await self.reader.read(1 << 16):
                    raw += chunk
                    head, sep, body = bytes(raw).partition(b"\r\n\r\n")
                    length = _content_length(head)
                    if sep and length is not None and len(body) >= length:
                        break
        head, _, body = bytes(raw).partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), json.loads(body)

    def close(self) -> None:
        self.writer.close()


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


@contextlib.asynccontextmanager
async def raw(gateway: Gateway, n: int = 1) -> AsyncIterator[list[Raw]]:
    conns = []
    try:
        for _ in range(n):
            conns.append(Raw(*await asyncio.open_connection(HOST, gateway.port)))
        yield conns
    finally:
        for c in conns:
            c.close()


def head(length: int | None = None, *extra: str, key: str | None = KEY) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: gw", "Content-Type: application/json"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def assert_openai(status: int, body: dict[str, object], want: int) -> str:
    assert status == want, body
    err = body["error"]
    assert isinstance(err, dict) and set(err) >= {"message", "type", "code"}
    return str(err["code"])


# -- slow POST: authentication on the head, the budget, the body timeout ----------------------


async def test_unauthenticated_uploads_cost_nothing(gateway: Gateway) -> None:
    """Six clients announce 8 MiB bodies without a valid key and send 1 MiB each: every one
    is answered 401 from its head, and not one byte of their bodies is kept."""
    payload = b"x" * MIB
    async with Background(gateway), raw(gateway, 6) as conns:
        for i, c in enumerate(conns):
            await c.send(head(8 * MIB, key=None if i % 2 else "wrong"))
        for c in conns:
            await c.send(payload)  # dropped (or refused: the gateway may have closed)
            assert budget(gateway) == 0
        for c in conns:
            status, body = await c.answer()
            assert assert_openai(status, body, 401) == "invalid_api_key"


async def test_slow_posts_are_bounded_in_total_and_timed_out(gateway: Gateway) -> None:
    """Authenticated clients trickle 3 MiB bodies and stall: the gateway holds at most its
    budget (16 MiB) in total, refuses the connection that would pass it (503), and answers
    each stalled body 408 after the body timeout, giving every byte back."""
    part = b"y" * (3 * MIB)
    async with Background(gateway), raw(gateway, 6) as conns:
        for c in conns:
            await c.send(head(8 * MIB) + part)
        statuses = []
        for c in conns:
            assert budget(gateway) <= 16 * MIB
            status, body = await c.answer()
            statuses.append(status)
            code = assert_openai(status, body, status)
            assert code == {408: "request_timeout", 503: "busy"}[status]
        assert sorted(statuses) == [408] * 5 + [503]
        assert budget(gateway) < 1024  # at most the background's request


async def test_a_request_head_trickled_byte_by_byte_is_408(gateway: Gateway) -> None:
    async with Background(gateway), raw(gateway) as (c,):
        request = head(2)

        async def trickle() -> None:
            for i in range(len(request)):
                if not await c.send(request[i : i + 1]):
                    break
                await asyncio.sleep(TIMEOUT / 10)

        sender = asyncio.create_task(trickle())
        try:
            status, body = await c.answer()
        finally:
            sender.cancel()
        assert assert_openai(status, body, 408) == "request_timeout"


# -- one-byte chunks and JSON amplification ------------------------------------------------


async def test_one_byte_chunks_cost_about_their_size(patient_gateway: Gateway) -> None:
    gateway = patient_gateway
    body = json.dumps({**CHAT, "pad": "z" * 100_000}).encode()  # under --max-body-chunks
    wire = head(None, "Transfer-Encoding: chunked")
    wire += b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body))) + b"0\r\n\r\n"
    async with Background(gateway), raw(gateway) as (c,):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            await c.send(wire)
            status, answer = await c.answer()
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert status == 200, answer
        assert answer["model"] == "m"
    # The body once as received, once joined and once forwarded, plus the response; a list of
    # one-byte objects was ~40 bytes per body byte.
    assert peak < 8 * len(body), peak


@pytest.mark.parametrize("shape", ["in-a-field", "top-level"])
async def test_json_amplification_is_never_built(patient_gateway: Gateway, shape: str) -> None:
    """A gzip body of ~2 KiB that inflates to 1.5 MiB of `{},{},...`: as objects ~40 MiB.
    (Small enough to stay quick under tracemalloc, which slows every allocation.)"""
    gateway = patient_gateway
    items = b",".join([b"{}"] * (MIB // 2))
    doc = b'{"model": "m", "x": [' + items + b"]}" if shape == "in-a-field" else b"[" + items + b"]"
    wire = gzip.compress(doc, 9)
    request = head(len(wire), "Content-Encoding: gzip") + wire
    async with Background(gateway), raw(gateway) as (c,):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            await c.send(request)
            status, answer = await c.answer()
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    if shape == "in-a-field":
        assert (status, answer["model"]) == (200, "big")  # routed, and forwarded whole
    else:
        assert assert_openai(status, answer, 400) == "invalid_body"
    # Decoded once, forwarded; the parser holds one slice of events.
    assert peak < 4 * len(doc), peak


async def test_a_body_with_too_many_json_tokens_is_413(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEY)
    async with Upstream() as up:
        source = StaticSource("team")
        source.add_model("m", [up.url])
        config = GatewayConfig(
            listen_host=HOST, port=0, api_keys_file=str(keys), max_json_tokens=10_000
        )
        async with Gateway(config, source, MemoryDemand()) as g, raw(g) as (c,):
            doc = json.dumps({**CHAT, "x": [1] * 40_000}).encode()
            await c.send(head(len(doc)) + doc)
            status, body = await c.answer()
            assert assert_openai(status, body, 413) == "body_too_complex"


# -- framing and head size: one answer shape --------------------------------------------------


async def test_unknown_transfer_codings_are_501(gateway: Gateway) -> None:
    async with raw(gateway) as (c,):
        await c.send(head(None, "Transfer-Encoding: x, chunked") + b"2\r\n{}\r\n0\r\n\r\n")
        status, body = await c.answer()
        assert assert_openai(status, body, 501) == "unsupported_transfer_encoding"


async def test_headers_past_the_shared_head_limit_are_431(gateway: Gateway) -> None:
    async with raw(gateway) as (c,):
        await c.send(head(2, "X-Big: " + "h" * (70 << 10)) + b"{}")
        status, body = await c.answer()
        assert assert_openai(status, body, 431) == "headers_too_large"
