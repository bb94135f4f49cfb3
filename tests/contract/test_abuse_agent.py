"""Abuse of the pod agent, each finding of issue 13 against a running agent.

A real Agent in front of a small fake vLLM (aiohttp) whose streamed answers last until the test
lets them end, attacked over loopback with raw sockets while ordinary requests keep being
served. Bounded in count and time (head and body timeouts are fractions of a second), never
asserting timings.

What is checked, beside each answer's status and OpenAI shape:
  - a request counts as in flight only once its body is read: a head plus a few body bytes,
    then silence, holds no slot (the model can still go idle and sleep), and is answered 408
    after `--body-timeout`;
  - the operator's long-poll hears work start (in-flight leaving 0), an idle sleep is refused
    while requests run and a forced one drains them, and a drain that runs out reports the
    requests that kept it, not the held ones it then admits;
  - the agent's memory for request bodies is bounded per connection (`--max-body-bytes`) and
    in total (`--max-buffered-bytes`, 503 past it), measured by its budget;
  - a non-ASCII token on the control port is a 401, and client errors log below ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from vllm_sleep.agent import Agent, AgentConfig

from .agent_wait import wait_state

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]

AGENT = "127.0.15.1"
VLLM = "127.0.15.2"
TOKEN = "abuse-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COMPLETION = {"model": "m", "prompt": "hi", "max_tokens": 3}
TIMEOUT = 0.4  # the agent's head and body timeouts here
WAIT = 10.0


class FakeVLLM:
    """Health, version, sleep and wake; `/v1/completions` streams until `release` is set."""

    def __init__(self) -> None:
        self.sleeping = False
        self.release = asyncio.Event()
        self.release.set()
        self.streams = 0  # streams running now
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def completions(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.streams += 1
        try:
            await resp.write(b"data: {}\n\n")
            await self.release.wait()
            await resp.write(b"data: [DONE]\n\n")
        finally:
            self.streams -= 1
        await resp.write_eof()
        return resp

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response()

    async def version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": "0.11.0"})

    async def is_sleeping(self, _request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.sleeping})

    async def sleep(self, _request: web.Request) -> web.Response:
        self.sleeping = True
        return web.Response()

    async def wake(self, _request: web.Request) -> web.Response:
        self.sleeping = False
        return web.Response()

    async def __aenter__(self) -> FakeVLLM:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/is_sleeping", self.is_sleeping)
        app.router.add_post("/sleep", self.sleep)
        app.router.add_post("/wake_up", self.wake)
        app.router.add_post("/v1/completions", self.completions)
        # Heads as large as the agent passes (vLLM's own server has its own limits).
        self._runner = web.AppRunner(
            app, access_log=None, max_field_size=128 << 10, max_line_size=128 << 10
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, VLLM, 0).start()
        self.url = f"http://{VLLM}:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def vllm() -> AsyncIterator[FakeVLLM]:
    async with FakeVLLM() as v:
        yield v


@pytest.fixture
async def agent(vllm: FakeVLLM) -> AsyncIterator[Agent]:
    config = AgentConfig(
        listen_host=AGENT,
        public_port=0,
        control_port=0,
        upstream=vllm.url,
        control_token=TOKEN,
        poll_interval=0.01,
        health_interval=0.05,
        settle_time=0,
        header_timeout=TIMEOUT,
        body_timeout=TIMEOUT,
        max_body_bytes=4 << 20,
        max_buffered_bytes=8 << 20,
    )
    async with Agent(config) as a:
        await wait_state(a, "awake", timeout=WAIT)
        yield a


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as c:
        yield c


async def until(predicate: object, timeout: float = WAIT) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - agent state has no event of its own
            await asyncio.sleep(0.005)


def budget(agent: Agent) -> int:
    server = agent._public
    assert server is not None
    return server.budget.used


async def raw_exchange(port: int, data: bytes, *, then_wait: bool = True) -> tuple[int, bytes]:
    """Send `data` on a fresh connection; the status and body of the one answer."""
    reader, writer = await asyncio.open_connection(AGENT, port)
    try:
        writer.write(data)
        await writer.drain()
        raw = bytearray()
        async with asyncio.timeout(WAIT):
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(1 << 16):
                    raw += chunk
                    head, sep, body = bytes(raw).partition(b"\r\n\r\n")
                    if sep and b"content-length: %d" % len(body) in head.lower():
                        break
        head, _, body = bytes(raw).partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body
    finally:
        writer.close()


def post_head(length: int, *extra: str) -> bytes:
    lines = ["POST /v1/completions HTTP/1.1", "Host: a", f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked_head(coding: str) -> bytes:
    lines = ["POST /v1/completions HTTP/1.1", "Host: a", f"Transfer-Encoding: {coding}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def openai_error(status: int, body: bytes, want: int) -> dict[str, object]:
    assert status == want, body
    err = json.loads(body)["error"]
    assert isinstance(err, dict) and set(err) >= {"message", "type", "code"}
    return err


async def state(http: httpx.AsyncClient, agent: Agent, query: str = "") -> dict[str, object]:
    resp = await http.get(agent.control_url + "/state" + query, headers=AUTH)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert isinstance(doc, dict)
    return doc


# -- pinning through the public port ----------------------------------------------------------


async def test_a_stalled_body_holds_no_slot_and_the_model_can_still_sleep(
    agent: Agent, http: httpx.AsyncClient
) -> None:
    port = agent.public_port
    assert port is not None
    reader, writer = await asyncio.open_connection(AGENT, port)
    try:
        writer.write(post_head(1000) + b'{"model":')  # nine body bytes, then silence
        await writer.drain()
        await until(lambda: budget(agent) == 9)
        assert agent.gate.inflight == 0  # not counted: the engine has nothing to do yet
        resp = await http.post(agent.control_url + "/sleep?level=1&reason=idle", headers=AUTH)
        assert resp.status_code == 200, resp.text
        raw = await asyncio.wait_for(reader.read(), WAIT)  # then answered, and closed
        status = int(raw.split(b" ", 2)[1])
        openai_error(status, raw.partition(b"\r\n\r\n")[2], 408)
        assert budget(agent) == 0
    finally:
        writer.close()


async def test_a_trickled_head_is_408(agent: Agent) -> None:
    port = agent.public_port
    assert port is not None
    reader, writer = await asyncio.open_connection(AGENT, port)
    request = post_head(2)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(len(request)):
                writer.write(request[i : i + 1])
                await writer.drain()
                await asyncio.sleep(TIMEOUT / 10)

    sender = asyncio.create_task(trickle())
    try:
        raw = await asyncio.wait_for(reader.read(1 << 16), WAIT)
    finally:
        sender.cancel()
        writer.close()
    openai_error(int(raw.split(b" ", 2)[1]), raw.partition(b"\r\n\r\n")[2], 408)


async def test_slow_uploads_are_bounded_in_total_and_requests_keep_flowing(
    agent: Agent, http: httpx.AsyncClient
) -> None:
    port = agent.public_port
    assert port is not None
    conns = [await asyncio.open_connection(AGENT, port) for _ in range(4)]
    try:
        for _reader, writer in conns:
            writer.write(post_head(4 << 20) + b"x" * (3 << 20))  # 12 MiB against 8 MiB
        statuses = []
        for _ in range(3):  # meanwhile, ordinary requests are served
            resp = await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
            statuses.append(resp.status_code)
            assert budget(agent) <= 8 << 20
        assert statuses == [200] * 3
        answers = []
        for reader, _writer in conns:
            raw = await asyncio.wait_for(reader.read(1 << 16), WAIT)
            answers.append(int(raw.split(b" ", 2)[1]))
        assert sorted(answers) == [408, 408, 503, 503]
        await until(lambda: budget(agent) == 0)
        assert agent.gate.inflight == 0
    finally:
        for _reader, writer in conns:
            writer.close()


# -- honest idleness -----------------------------------------------------------------------


async def test_the_long_poll_hears_work_start(
    agent: Agent, vllm: FakeVLLM, http: httpx.AsyncClient
) -> None:
    """In-flight leaving 0 bumps the version: an operator that last saw the replica idle
    learns at once that a long request is running."""
    version = (await state(http, agent))["version"]
    vllm.release.clear()
    poll = asyncio.create_task(state(http, agent, f"?wait=30&version={version}"))
    async with http.stream("POST", agent.public_url + "/v1/completions", json=COMPLETION) as r:
        chunks = r.aiter_raw()  # kept: dropping the iterator would close the stream
        await anext(chunks)  # the stream is running
        report = await asyncio.wait_for(poll, WAIT)  # long before the 30 s wait
        assert report["inflight"] == 1 and report["version"] != version
        vllm.release.set()


async def test_an_idle_sleep_is_refused_while_a_request_runs_and_a_forced_one_drains(
    agent: Agent, vllm: FakeVLLM, http: httpx.AsyncClient
) -> None:
    vllm.release.clear()
    async with http.stream("POST", agent.public_url + "/v1/completions", json=COMPLETION) as r:
        chunks = r.aiter_raw()  # kept: dropping the iterator would close the stream
        await anext(chunks)
        resp = await http.post(agent.control_url + "/sleep?level=1&reason=idle", headers=AUTH)
        err = openai_error(resp.status_code, resp.content, 409)
        assert "1 request(s) in flight" in str(err["message"])
        assert resp.json()["state"]["state"] == "awake" and not vllm.sleeping
        forced = asyncio.create_task(http.post(agent.control_url + "/sleep?level=1", headers=AUTH))
        await until(lambda: agent.board.state.value == "draining")
        vllm.release.set()  # the request ends; the forced sleep goes ahead
        async for _ in chunks:
            pass
    assert (await asyncio.wait_for(forced, WAIT)).status_code == 200
    assert vllm.sleeping and vllm.streams == 0


async def test_a_drain_timeout_counts_the_requests_that_kept_it_not_the_held_ones(
    agent: Agent, vllm: FakeVLLM, http: httpx.AsyncClient
) -> None:
    vllm.release.clear()
    async with http.stream("POST", agent.public_url + "/v1/completions", json=COMPLETION) as r:
        chunks = r.aiter_raw()  # kept: dropping the iterator would close the stream
        await anext(chunks)
        sleep = asyncio.create_task(
            http.post(agent.control_url + "/sleep?level=1&drain_timeout=1", headers=AUTH)
        )
        await until(lambda: agent.board.state.value == "draining")
        held = [
            asyncio.create_task(http.post(agent.public_url + "/v1/completions", json=COMPLETION))
            for _ in range(2)
        ]
        await until(lambda: agent.gate.held == 2)
        resp = await asyncio.wait_for(sleep, WAIT)
        err = openai_error(resp.status_code, resp.content, 504)
        assert str(err["message"]).startswith("1 request(s) still in flight")
        vllm.release.set()
        for task in held:
            assert (await asyncio.wait_for(task, WAIT)).status_code == 200
        async for _ in chunks:
            pass


# -- control port and client errors ---------------------------------------------------------


async def test_a_non_ascii_token_on_the_control_port_is_401(agent: Agent) -> None:
    port = agent.control_port
    assert port is not None
    for token in (b"\xff\xfe", "tökén".encode(), b"\x80" + TOKEN.encode()):
        request = b"GET /state HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer %s\r\n\r\n" % token
        status, body = await raw_exchange(port, request)
        openai_error(status, body, 401)


async def test_client_errors_are_answered_in_openai_shape_and_not_logged_as_errors(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    port = agent.public_port
    assert port is not None
    caplog.set_level(logging.INFO)
    cases = [
        (b"\x00\xff garbage\r\n\r\n", 400),
        (chunked_head("x, chunked") + b"2\r\n{}\r\n0\r\n\r\n", 501),
        (post_head(2, "X-Big: " + "h" * (70 << 10)) + b"{}", 431),
        (post_head(64 << 20), 413),
    ]
    for request, want in cases:
        status, body = await raw_exchange(port, request)
        openai_error(status, body, want)
    # A header the gateway forwards (under its 64 KiB head limit) passes the agent too.
    big = post_head(2, "X-Big: " + "h" * (40 << 10), "Connection: close")
    status, _ = await raw_exchange(port, big + b"{}")
    assert status == 200
    # A client that hangs up mid-answer.
    reader, writer = await asyncio.open_connection(AGENT, port)
    body = json.dumps(COMPLETION).encode()
    writer.write(post_head(len(body)) + body)
    await reader.read(10)
    writer.close()
    control = agent.control_port
    assert control is not None
    await raw_exchange(control, b"GET /state HTTP/1.1\r\nHost: a\r\nBad header\r\n\r\n")
    await asyncio.sleep(0.1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
