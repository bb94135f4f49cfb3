"""The rig of the request-path probes (test_probe_request_path*.py): raw HTTP over sockets,
a tap in front of vLLM, a scripted fake pod, and agent/gateway set-ups on 127.0.52.x."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

AGENT = "127.0.52.1"
ENGINE = "127.0.52.2"
GATEWAY = "127.0.52.100"
TOKEN = "probe-token"
CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2}'


# -- raw HTTP ---------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, object]:
        """The OpenAI error object this answer must carry."""
        err = json.loads(self.body)["error"]
        assert isinstance(err, dict) and err.get("message"), self.body[:300]
        return err


@dataclass
class _Reader:
    answers: list[Answer] = field(default_factory=list)
    _headers: dict[str, str] = field(default_factory=dict)
    _body: bytearray = field(default_factory=bytearray)
    _name: bytes = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    _open: bool = False  # a head is in, its body not ended

    def on_headers_complete(self) -> None:
        self._open = True

    def on_message_complete(self) -> None:
        self._open = False
        if self.parser.get_status_code() < 200:  # an interim answer (100 Continue)
            self._headers, self._body = {}, bytearray()
            return
        self.answers.append(Answer(self.parser.get_status_code(), self._headers, bytes(self._body)))
        self._headers, self._body = {}, bytearray()

    def closed(self) -> None:
        """The connection closed: a body without a length or chunks ends here (httptools
        cannot be told about the EOF)."""
        framed = "content-length" in self._headers or "transfer-encoding" in self._headers
        if self._open and not framed:
            self.on_message_complete()

    parser: httptools.HttpResponseParser = field(init=False)

    def __post_init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)


class Conn:
    """One raw client connection: send exact bytes, read whole answers (pipelined ones too)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._parsed = _Reader()
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answers(self, n: int, timeout: float = 10.0) -> list[Answer]:
        """The first `n` answers on this connection (fewer if it closed first)."""
        async with asyncio.timeout(timeout):
            while len(self._parsed.answers) < n and not self.closed:
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    self._parsed.closed()
                    break
                self._parsed.parser.feed_data(data)
        return self._parsed.answers[:n]

    async def answer(self, timeout: float = 10.0) -> Answer:
        got = await self.answers(len(self._parsed.answers) + 1, timeout)
        assert got, "the connection closed without an answer"
        return got[-1]

    async def is_closed(self, timeout: float = 5.0) -> bool:
        """Whether the server closes this connection (after what it has answered)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        self.closed = True
        return True

    def close(self) -> None:
        self.writer.close()


def post(path: str, body: bytes = CHAT, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: x", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/{version}", "Host: x", *headers]) + "\r\n\r\n").encode()


async def roundtrip(addr: tuple[str, int], raw: bytes) -> Answer:
    conn = await Conn.open(*addr)
    try:
        await conn.send(raw)
        return await conn.answer()
    finally:
        conn.close()


# -- what reaches vLLM, byte for byte (a tap in front of it) ---------------------------------


@dataclass
class Seen:
    """One request as a hop sent it: its line, every header (in order, repeats kept), body."""

    line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]


class _SeenParser:
    def __init__(self, out: list[Seen]) -> None:
        self.out = out
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        line = b"%s %s HTTP/%s" % (
            self.parser.get_method(),
            self._url,
            self.parser.get_http_version().encode(),
        )
        self.out.append(Seen(line, self._headers, self._body))
        self._url, self._headers, self._body = b"", [], b""


class Tap:
    """A TCP pipe in front of vLLM that parses what the agent sends it (every connection)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.seen: list[Seen] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self, host: str) -> str:
        self._server = await asyncio.start_server(self._pipe, host, 0)
        self.url = f"http://{host}:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    def client_requests(self) -> list[Seen]:
        """What the agent forwarded for clients (it adds X-Forwarded-For; its own polls do not)."""
        return [s for s in self.seen if s.all(b"x-forwarded-for")]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        parsed = _SeenParser(self.seen)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, tap: bool) -> None:
            with contextlib.suppress(ConnectionError, httptools.HttpParserError):
                while data := await src.read(65536):
                    if tap:
                        parsed.parser.feed_data(data)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer, True), copy(up_reader, writer, False))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)


# -- the rig ----------------------------------------------------------------------------------


@dataclass
class Pod:
    agent: Agent
    engine: SimEngine
    tap: Tap

    @property
    def public(self) -> tuple[str, int]:
        assert self.agent.public_port is not None
        return AGENT, self.agent.public_port

    @property
    def control(self) -> tuple[str, int]:
        assert self.agent.control_port is not None
        return AGENT, self.agent.control_port

    def budget(self) -> int:
        """Request-body bytes the public port holds (received, queued or held)."""
        server = self.agent._public
        assert server is not None
        return server.budget.used

    def forwarded(self) -> list[str]:
        """What the agent forwarded to vLLM for clients, as `METHOD /path?query`."""
        return [seen.line.rsplit(b" ", 1)[0].decode() for seen in self.tap.client_requests()]

    async def control_call(self, target: str) -> Answer:
        raw = post(target, b"", f"Authorization: Bearer {TOKEN}", "Connection: close")
        return await roundtrip(self.control, raw)

    async def control_call_json(self, target: str) -> dict[str, Any]:
        raw = get(target, f"Authorization: Bearer {TOKEN}", "Connection: close")
        answer = await roundtrip(self.control, raw)
        assert answer.status == 200, answer
        doc = json.loads(answer.body)
        assert isinstance(doc, dict)
        return doc

    async def sleep(self) -> None:
        answer = await self.control_call("/sleep?level=1")
        assert answer.status == 200, answer
        await wait_state(self.agent, "asleep")

    async def wake(self) -> None:
        answer = await self.control_call("/wake")
        assert answer.status == 200, answer
        await wait_state(self.agent, "awake")

    def assert_engine_safe(self) -> None:
        """No request reached the engine asleep (on <=0.16 it would have died)."""
        assert not self.engine.violations, self.engine.violations
        assert not self.engine.dead.is_set()


async def wait_state(agent: Agent, *states: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while agent.board.state.value not in states:
            await agent.board.wait_change(agent.board.version, 1.0)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def make_pod(**overrides: object) -> AsyncIterator[Pod]:
    """Agent -> Tap -> legacy vLLM; `overrides` are AgentConfig fields."""
    host = EngineHost(time_scale=0.002)
    engine = await start(
        host,
        "m",
        "--enable-sleep-mode",
        "--host",
        ENGINE,
        "--itl-seconds",
        "25",  # 50 ms a token at this time scale: a long stream is a running request
        env={"VLLM_SIM_PROFILE": "legacy"},
    )
    tap = Tap((ENGINE, int(engine.url.rsplit(":", 1)[1])))
    values: dict[str, object] = {
        "listen_host": AGENT,
        "public_port": 0,
        "control_port": 0,
        "upstream": await tap.start("127.0.52.3"),
        "control_token": TOKEN,
        "poll_interval": 0.01,
        "health_interval": 3600,
        "hold_timeout": 5.0,
        "header_timeout": 2.0,
        "body_timeout": 2.0,
    }
    agent = Agent(AgentConfig.model_validate(values | overrides))
    await agent.start()
    try:
        await wait_state(agent, "awake")
        yield Pod(agent, engine, tap)
    finally:
        await agent.stop()
        await tap.stop()
        await host.stop_all()


@contextlib.asynccontextmanager
async def gateway_for(pod: Pod) -> AsyncIterator[Gateway]:
    source = StaticSource("team")
    source.add_model("m", [pod.agent.public_url])
    async with Gateway(GatewayConfig(listen_host=GATEWAY, port=0), source, MemoryDemand()) as gw:
        yield gw


def gw_addr(gw: Gateway) -> tuple[str, int]:
    return GATEWAY, gw.port


def gateway_idle(gw: Gateway) -> bool:
    """Nothing in flight to any pod and nothing held, as the gateway counts."""
    table = gw.router.table
    return all(
        table.queued(spec.key) == 0
        and all(table.inflight(r.pod) == 0 for r in table.awake_replicas(spec.key))
        for spec in table.specs()
    )


# -- a scripted pod --------------------------------------------------------------------------


class FakePod:
    """A raw server standing where an agent (or vLLM) should: reads each request, answers
    with what `script(n, request)` returns (n counts requests across connections), then
    keeps the connection as the script left it. Records when a peer closed a connection."""

    def __init__(self, script: object) -> None:
        self.script = script
        self.requests = 0
        self.closed_by_peer = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.52.4", 0)
        self.url = f"http://127.0.52.4:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen: list[Seen] = []
        parser = _SeenParser(seen)
        try:
            while data := await reader.read(65536):
                parser.parser.feed_data(data)
                while seen:
                    request = seen.pop(0)
                    self.requests += 1
                    answer = self.script(self.requests, request)  # type: ignore[operator]
                    if isinstance(answer, bytes):
                        writer.write(answer)
                    else:  # an async generator: a stream that lasts as long as it likes
                        async for piece in answer:
                            writer.write(piece)
                            await writer.drain()
                    await writer.drain()
            self.closed_by_peer += 1
        except ConnectionError:
            self.closed_by_peer += 1
        except asyncio.CancelledError:
            pass  # the test's loop is closing
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@contextlib.asynccontextmanager
async def gateway_before(fake: FakePod) -> AsyncIterator[Gateway]:
    source = StaticSource("team")
    source.add_model("m", [await fake.start()])
    config = GatewayConfig(listen_host=GATEWAY, port=0, read_timeout=5.0)
    try:
        async with Gateway(config, source, MemoryDemand()) as gw:
            yield gw
    finally:
        await fake.stop()


OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def fake_vllm(answer: bytes) -> Callable[[int, Seen], bytes]:
    """A FakePod script: enough of vLLM for an agent to find it awake, `answer` to the rest."""

    def script(n: int, request: Seen) -> bytes:
        path = request.line.split(b" ")[1]
        if path == b"/is_sleeping":
            body = b'{"is_sleeping":false}'
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        if path in (b"/health", b"/version", b"/metrics"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        return answer

    return script


@contextlib.asynccontextmanager
async def two_hops(fake: FakePod) -> AsyncIterator[tuple[Agent, Gateway]]:
    """Gateway -> agent -> a fake vLLM that accepts any head (the simulator's aiohttp has
    bounds of its own, and vLLM's are vLLM's)."""
    config = AgentConfig(
        listen_host=AGENT,
        public_port=0,
        control_port=0,
        upstream=await fake.start(),
        control_token=TOKEN,
        poll_interval=0.01,
        health_interval=3600,
    )
    try:
        async with Agent(config) as agent:
            await wait_state(agent, "awake")
            source = StaticSource("team")
            source.add_model("m", [agent.public_url])
            config_gw = GatewayConfig(listen_host=GATEWAY, port=0)
            async with Gateway(config_gw, source, MemoryDemand()) as gw:
                yield agent, gw
    finally:
        await fake.stop()


# The probe files' fixtures (imported there by name): a pod (agent + simulator) and a gateway
# in front of it.
@pytest.fixture
async def pod() -> AsyncIterator[Pod]:
    async with make_pod() as p:
        yield p


@pytest.fixture
async def gateway(pod: Pod) -> AsyncIterator[Gateway]:
    async with gateway_for(pod) as gw:
        yield gw
