"""Adversarial probes of the request path, beyond the abuse and fuzz suites: smuggling and
framing between the gateway, the pod agent and vLLM, pipelining behind a held request,
upgrades, path tricks at the gateway, hop-by-hop headers and clients that leave mid-hold.

The oracle is the engine: a legacy (<=0.16) simulated vLLM, which records a violation (and
dies) when a request reaches it asleep, behind a recording proxy that lists every request the
agent forwarded for a client (`Tap`, a raw pipe that parses what passes: the agent's own calls
are left out). Every attack is sent as exact bytes over a raw socket, on 127.0.52.x. A probe
that finds the product holding is a regression test; docs/security.md lists what is covered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.http_common import MAX_HEAD_BYTES, MAX_HEADERS
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]

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


# -- what reaches vLLM, byte for byte (a tap in front of it) ---------------------------------------------------------


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

    async def control_call_json(self, target: str) -> dict[str, object]:
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


async def until(predicate: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 - no event to wait on
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


@pytest.fixture
async def pod() -> AsyncIterator[Pod]:
    async with make_pod() as p:
        yield p


@contextlib.asynccontextmanager
async def gateway_for(pod: Pod) -> AsyncIterator[Gateway]:
    source = StaticSource("team")
    source.add_model("m", [pod.agent.public_url])
    async with Gateway(GatewayConfig(listen_host=GATEWAY, port=0), source, MemoryDemand()) as gw:
        yield gw


@pytest.fixture
async def gateway(pod: Pod) -> AsyncIterator[Gateway]:
    async with gateway_for(pod) as gw:
        yield gw


def gw_addr(gw: Gateway) -> tuple[str, int]:
    return GATEWAY, gw.port


def _gateway_idle(gw: Gateway) -> bool:
    """Nothing in flight to any pod and nothing held, as the gateway counts."""
    table = gw.router.table
    return all(
        table.queued(spec.key) == 0
        and all(table.inflight(r.pod) == 0 for r in table.awake_replicas(spec.key))
        for spec in table.specs()
    )


# -- pipelining -------------------------------------------------------------------------------


async def test_a_request_pipelined_behind_a_held_one_waits_its_turn_and_never_meets_the_sleep(
    pod: Pod,
) -> None:
    """Two inference requests and a dev route on one connection while the engine sleeps: the
    second is not even read until the first is answered (one held, not two), the dev route
    is 404 in its turn, and after the wake both inference requests run on the awake engine."""
    await pod.sleep()
    conn = await Conn.open(*pod.public)
    await conn.send(
        post("/v1/chat/completions")
        + post("/v1/completions", b'{"model":"m","prompt":"a","max_tokens":2}')
        + post("/wake_up", b"")
        + post("/v1/chat/completions")
    )
    await until(lambda: pod.agent.gate.held == 1)
    await asyncio.sleep(0.2)  # room for a wrongly concurrent second request to be held too
    assert pod.agent.gate.held == 1 and pod.forwarded() == []
    await pod.wake()
    answers = await conn.answers(4)
    conn.close()
    assert [a.status for a in answers] == [200, 200, 404, 200], answers
    assert answers[2].error()["code"] == "not_found"
    assert [c.split("?")[0] for c in pod.forwarded()] == [
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/chat/completions",
    ]
    pod.assert_engine_safe()


async def test_a_pipeline_longer_than_a_head_behind_a_held_request_is_answered_whole(
    pod: Pod,
) -> None:
    """What a client pipelines behind a held request is read ahead only up to a head's
    worth; the rest waits in the kernel. All of it is answered, in order, after the wake."""
    await pod.sleep()
    padding = "X-Pad: " + "p" * 2048
    n = (MAX_HEAD_BYTES // 2048) + 8
    conn = await Conn.open(*pod.public)
    await conn.send(post("/v1/chat/completions"))
    await until(lambda: pod.agent.gate.held == 1)
    for i in range(n):  # one read each, mostly: read ahead, unparsed, past the bound
        await conn.send(get(f"/health?n={i}", padding))
        await asyncio.sleep(0.001)
    await conn.send(post("/v1/chat/completions"))
    await pod.wake()
    answers = await conn.answers(n + 2)
    conn.close()
    assert [a.status for a in answers] == [200] * (n + 2)
    health = [f"GET /health?n={i}" for i in range(n)]
    assert pod.forwarded() == ["POST /v1/chat/completions", *health, "POST /v1/chat/completions"]
    pod.assert_engine_safe()


async def test_dev_routes_pipelined_after_allowed_requests_are_refused_in_turn(pod: Pod) -> None:
    conn = await Conn.open(*pod.public)
    await conn.send(
        get("/health")
        + post("/sleep?level=1", b"")
        + post("/v1/chat/completions")
        + post("/collective_rpc", b'{"method":"sleep"}')
        + get("/is_sleeping")
        + post("/v1/chat/completions")
    )
    answers = await conn.answers(6)
    conn.close()
    assert [a.status for a in answers] == [200, 404, 200, 404, 404, 200], answers
    assert pod.forwarded() == [
        "GET /health",
        "POST /v1/chat/completions",
        "POST /v1/chat/completions",
    ]
    assert pod.engine.state == "awake"
    pod.assert_engine_safe()


# -- framing: one reading at every hop --------------------------------------------------------

_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
_SMUGGLED = post("/v1/chat/completions")  # what a desynchronised hop would run as a second request


def _chunked(body: bytes, size_line: bytes | None = None) -> bytes:
    return (size_line or b"%x" % len(body)) + b"\r\n" + body + b"\r\n0\r\n\r\n"


# Requests whose framing two parsers could read differently (RFC 9112 §6.3, §11.2): each is
# refused whole, with the connection, so the bytes after it never pass for a request.
AMBIGUOUS = {
    "cl-and-te": _HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": _HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "te-obs-fold": _HEAD + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "obs-fold-hiding-te": _HEAD
    + b"X: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    "te-vertical-tab": _HEAD + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": _HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "cl-space-before-colon": _HEAD + b"Content-Length : 5\r\n\r\n0\r\n\r\n",
    "te-chunked-then-identity": _HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-twice": _HEAD
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-empty-second": _HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n0\r\n\r\n",
    "te-xchunked": _HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-in-http10": b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl-twice-differing": _HEAD + b"Content-Length: 0\r\nContent-Length: 5\r\n\r\n",
    "cl-list": _HEAD + b"Content-Length: 5, 5\r\n\r\n",
    "cl-plus-sign": _HEAD + b"Content-Length: +5\r\n\r\n",
    "cl-overflow": _HEAD + b"Content-Length: 184467440737095516160\r\n\r\n",
    "chunk-size-overflow": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + _chunked(b"{}", b"1" + b"0" * 16 + b"2"),
    "chunk-size-0x": _HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"{}", b"0x2"),
    "chunk-size-space": _HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"{}", b"2 "),
    "chunk-ext-bare-lf": _HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;a\n{}\r\n0\r\n\r\n",
    "chunk-data-overrun": _HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX\r\n0\r\n\r\n",
    "bare-lf-head": b"POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Length: 0\n\n",
    "bare-lf-one-line": _HEAD + b"X: y\nContent-Length: 0\r\n\r\n",
    "bare-cr-in-value": _HEAD + b"X: a\rContent-Length: 0\r\n\r\n",
    "nul-in-value": _HEAD + b"X: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "space-in-target": b"POST /v1/chat/completions /sleep HTTP/1.1\r\nHost: x\r\n\r\n",
    "lower-case-version": b"POST /v1/chat/completions http/1.1\r\nHost: x\r\n\r\n",
    "connect-authority-form": b"CONNECT 127.0.0.1:8001 HTTP/1.1\r\nHost: 127.0.0.1:8001\r\n\r\n",
    "h2c-upgrade": _HEAD + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 0\r\n\r\n",
    "websocket-upgrade": _HEAD + b"Connection: upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Content-Length: 0\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "trailer-claiming-framing": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nContent-Length: 5\r\n\r\n",
}


@pytest.mark.parametrize("hop", ["agent", "gateway"])
@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
async def test_ambiguous_framing_is_refused_and_nothing_behind_it_runs(
    pod: Pod, gateway: Gateway, hop: str, case: str
) -> None:
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    conn = await Conn.open(*addr)
    await conn.send(AMBIGUOUS[case] + _SMUGGLED)
    answers = await conn.answers(2)
    assert await conn.is_closed()
    assert len(answers) == 1, answers
    assert answers[0].status in (400, 501), answers[0]
    answers[0].error()
    assert pod.forwarded() == []
    # ... and the port keeps serving.
    ok = await roundtrip(addr, post("/v1/chat/completions", CHAT, "Connection: close"))
    assert ok.status == 200, ok
    pod.assert_engine_safe()


# Unusual but valid framings of the same body: every hop reads exactly CHAT, and what follows
# is the next request, judged on its own (a dev route: 404).
VALID = {
    "te-capitalised": _HEAD + b"Transfer-Encoding: Chunked\r\n\r\n" + _chunked(CHAT),
    "te-padded": _HEAD + b"Transfer-Encoding:\tchunked  \r\n\r\n" + _chunked(CHAT),
    "chunk-extensions": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + b'%x;a=b;q="x y"\r\n' % len(CHAT)
    + CHAT
    + b"\r\n0;end\r\n\r\n",
    "chunk-size-leading-zeros": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + _chunked(CHAT, b"%020x" % len(CHAT)),
    "one-byte-chunks": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"1\r\n%c\r\n" % c for c in CHAT)
    + b"0\r\n\r\n",
    "trailers": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + _chunked(CHAT)[:-2]
    + b"X-Forwarded-For: 6.6.6.6\r\nHost: 127.0.0.1:8001\r\n\r\n",
    "cl-leading-zeros": _HEAD + b"Content-Length: %08d\r\n\r\n" % len(CHAT) + CHAT,
    "duplicate-host": _HEAD
    + b"Host: 127.0.0.1:8001\r\nContent-Length: %d\r\n\r\n" % len(CHAT)
    + CHAT,
    "absolute-form-to-loopback": b"POST http://127.0.0.1:8001/v1/chat/completions HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8001\r\nContent-Length: %d\r\n\r\n" % len(CHAT) + CHAT,
    "upgrade-without-connection-upgrade": _HEAD
    + b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(CHAT)
    + CHAT,
    "expect-100-continue": _HEAD
    + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(CHAT)
    + CHAT,
}


@pytest.mark.parametrize("hop", ["agent", "gateway"])
@pytest.mark.parametrize("case", sorted(VALID))
async def test_valid_but_unusual_framing_is_read_alike_at_every_hop(
    pod: Pod, gateway: Gateway, hop: str, case: str
) -> None:
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    conn = await Conn.open(*addr)
    await conn.send(VALID[case] + post("/sleep?level=1", b"") + post("/wake_up", b""))
    answers = await conn.answers(3)
    conn.close()
    assert [a.status for a in answers[:3]] == [200, 404, 404], answers
    assert json.loads(answers[0].body)["choices"], answers[0]
    assert pod.forwarded() == ["POST /v1/chat/completions"]
    assert pod.engine.state == "awake"
    pod.assert_engine_safe()


HOSTILE_HEADERS = (
    b"Host: evil.example\r\n"
    b"Host: 127.0.0.1:8002\r\n"
    b"Connection: keep-alive, X-Secret, HTTP2-Settings, Content-Type-Override\r\n"
    b"X-Secret: for-this-hop-only\r\n"
    b"Content-Type-Override: x\r\n"
    b"Keep-Alive: timeout=600\r\n"
    b"TE: trailers\r\n"
    b"Trailer: X-Late\r\n"
    b"Proxy-Authorization: Basic c2VjcmV0\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Upgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"Content-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


@pytest.mark.parametrize("hop", ["agent", "gateway"])
async def test_vllm_gets_one_clean_head_whatever_the_client_sent(
    pod: Pod, gateway: Gateway, hop: str
) -> None:
    """Hop-by-hop fields (and those the client named in Connection) stop at the first hop;
    vLLM gets exactly one Host (its own), one Content-Length (the body's), no transfer coding,
    no trailer turned into a header, and X-Forwarded-For extended by each hop."""
    tap = pod.tap
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    body = b"%x;ext=1\r\n%s\r\n0\r\nX-Late: t\r\nAuthorization: Bearer smuggled\r\n\r\n" % (
        len(CHAT),
        CHAT,
    )
    answer = await roundtrip(
        addr, b"POST /v1/chat/completions HTTP/1.1\r\n" + HOSTILE_HEADERS + body
    )
    assert answer.status == 200, answer
    [seen] = tap.client_requests()
    assert seen.line == b"POST /v1/chat/completions HTTP/1.1"
    assert seen.all(b"host") == [tap.url.removeprefix("http://").encode()]
    assert seen.all(b"content-length") == [b"%d" % len(CHAT)] and seen.body == CHAT
    for name in (
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"proxy-authorization",
        b"proxy-connection",
        b"upgrade",
        b"http2-settings",
        b"x-secret",
        b"content-type-override",
        b"x-late",
        b"authorization",
    ):
        assert seen.all(name) == [], (name, seen.headers)
    assert seen.all(b"content-type") == [b"application/json"]
    [xff] = seen.all(b"x-forwarded-for")
    hops = xff.split(b", ")
    assert hops[0] == b"6.6.6.6" and len(hops) == (2 if hop == "agent" else 3), xff


# Request lines llhttp accepts but no HTTP/1.1 client sends: a request line without a version
# (HTTP/0.9, whose answer has no status line), an explicit 0.9, and HTTP/2.0 as text.
OTHER_VERSIONS = {
    "http09-get": b"GET /health\r\n\r\n",
    "http09-with-headers": b"GET /v1/models\r\nHost: x\r\n\r\n",
    "http09-post": b"POST /v1/chat/completions\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT),
    "explicit-0.9": b"GET /health HTTP/0.9\r\nHost: x\r\n\r\n",
    "text-http2": post("/v1/chat/completions", version="2.0"),
}


@pytest.mark.parametrize("hop", ["agent", "gateway"])
@pytest.mark.parametrize("case", sorted(OTHER_VERSIONS))
async def test_requests_in_other_http_versions_are_refused(
    pod: Pod, gateway: Gateway, hop: str, case: str
) -> None:
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    conn = await Conn.open(*addr)
    await conn.send(OTHER_VERSIONS[case])
    answer = await conn.answer()
    assert answer.status == 400, answer
    assert "not supported" in str(answer.error()["message"])
    assert await conn.is_closed()
    assert pod.forwarded() == []


# -- API keys at the gateway ------------------------------------------------------------------

KEY = "probe-key"


def _keyed(*headers: str, body: bytes = CHAT, target: str = "/v1/chat/completions") -> bytes:
    return post(target, body, *headers, "Connection: close")


# (request, status): the key is read from the first Authorization header field of the head,
# never from a trailer, the query or the target; it opens nothing but the routes.
KEY_CASES = {
    "no-key": (_keyed(), 401),
    "key": (_keyed(f"Authorization: Bearer {KEY}"), 200),
    "scheme-in-any-case": (_keyed(f"authorization: bEaReR   {KEY}  "), 200),
    "wrong-key-first": (
        _keyed("Authorization: Bearer nope", f"Authorization: Bearer {KEY}"),
        401,
    ),
    "right-key-first": (
        _keyed(f"Authorization: Bearer {KEY}", "Authorization: Bearer nope"),
        200,
    ),
    "key-named-hop-by-hop": (
        _keyed(f"Authorization: Bearer {KEY}", "Connection: authorization"),
        200,
    ),
    "key-in-trailer": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + _chunked(CHAT)[:-2]
        + f"Authorization: Bearer {KEY}\r\n\r\n".encode(),
        401,
    ),
    "key-in-query": (_keyed(target=f"/v1/chat/completions?api_key={KEY}"), 401),
    "key-in-proxy-authorization": (_keyed(f"Proxy-Authorization: Bearer {KEY}"), 401),
    "key-as-basic": (_keyed(f"Authorization: Basic {KEY}"), 401),
    "absolute-form-no-key": (
        b"POST http://127.0.0.1/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT),
        401,
    ),
    "dev-route-with-key": (_keyed(f"Authorization: Bearer {KEY}", target="/sleep"), 404),
    "encoded-route-no-key": (_keyed(target="/v1%2Fchat%2Fcompletions"), 404),
}


async def test_the_api_key_is_read_from_the_head_only_and_never_reaches_vllm(
    pod: Pod, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    source = StaticSource("team")
    source.add_model("m", [pod.agent.public_url])
    config = GatewayConfig(listen_host=GATEWAY, port=0, api_keys_file=str(keys))
    async with Gateway(config, source, MemoryDemand()) as gw:
        for case, (raw, status) in KEY_CASES.items():
            answer = await roundtrip(gw_addr(gw), raw)
            assert answer.status == status, (case, answer)
            if status != 200:
                answer.error()
    admitted = sum(status == 200 for _, status in KEY_CASES.values())
    assert pod.forwarded() == ["POST /v1/chat/completions"] * admitted
    for seen in pod.tap.client_requests():
        assert seen.all(b"authorization") == [] and seen.all(b"proxy-authorization") == []


# -- clients that leave -----------------------------------------------------------------------


async def test_a_client_that_leaves_while_held_at_the_agent_is_never_run(pod: Pod) -> None:
    await pod.sleep()
    conns = [await Conn.open(*pod.public) for _ in range(3)]
    for conn in conns:
        await conn.send(post("/v1/chat/completions"))
    await until(lambda: pod.agent.gate.held == 3)
    for conn in conns[:2]:
        conn.close()
    await until(lambda: pod.agent.gate.held == 1)
    assert (await pod.control_call_json("/state"))["held"] == 1
    await pod.wake()
    assert (await conns[2].answer()).status == 200
    conns[2].close()
    assert pod.forwarded() == ["POST /v1/chat/completions"]
    assert pod.agent.gate.inflight == 0
    pod.assert_engine_safe()


@pytest.mark.parametrize("hop", ["agent", "gateway"])
@pytest.mark.parametrize("behind", ["request", "garbage"])
async def test_a_client_that_leaves_with_requests_queued_behind_a_held_one_is_seen_at_once(
    behind: str, hop: str
) -> None:
    """A request pipelined behind a held one is not parsed until that one is answered, but
    the connection is still read: the client's leaving drops both at once. Otherwise a gone
    client stays demand (the operator wakes the model for it) until the hold times out, and
    a wake in between runs its requests on the engine for nobody."""
    async with make_pod(hold_timeout=30.0) as pod, gateway_for(pod) as gw:
        await pod.sleep()
        conn = await Conn.open(*(pod.public if hop == "agent" else gw_addr(gw)))
        second = post("/v1/chat/completions") if behind == "request" else b"\x16\x03\x01junk\r\n"
        await conn.send(post("/v1/chat/completions") + second)
        await until(lambda: pod.agent.gate.held == 1)
        conn.close()
        await until(lambda: pod.agent.gate.held == 0 and pod.budget() == 0, timeout=5)
        await pod.wake()
        ok = await roundtrip(pod.public, post("/v1/chat/completions", CHAT, "Connection: close"))
        assert ok.status == 200
        assert pod.forwarded() == ["POST /v1/chat/completions"]  # only the last client's
        pod.assert_engine_safe()


async def test_a_client_that_leaves_with_a_request_queued_behind_one_held_by_the_gateway() -> None:
    """The gateway's own hold queue (no pod awake or able to hold): the same, its slot is
    freed at once, not at the wake timeout."""
    fake = FakePod(lambda n, _: _OK)
    source = StaticSource("team")
    source.add_model("m", [await fake.start()], awake=False)
    try:
        async with Gateway(
            GatewayConfig(listen_host=GATEWAY, port=0), source, MemoryDemand()
        ) as gw:
            table = gw.router.table
            key = table.specs()[0].key
            conn = await Conn.open(*gw_addr(gw))
            await conn.send(post("/v1/chat/completions") + post("/v1/chat/completions"))
            await until(lambda: table.queued(key) == 1)
            conn.close()
            await until(lambda: table.queued(key) == 0, timeout=5)
            assert fake.requests == 0
    finally:
        await fake.stop()


async def test_a_client_that_leaves_while_held_behind_the_gateway_is_never_run(
    pod: Pod, gateway: Gateway
) -> None:
    """The gateway closes its connection to the agent, which drops the held request: nothing
    is left to reach the engine when it wakes, and neither proxy counts it any more."""
    await pod.sleep()
    conn = await Conn.open(*gw_addr(gateway))
    await conn.send(post("/v1/chat/completions"))
    await until(lambda: pod.agent.gate.held == 1)
    conn.close()
    await until(lambda: pod.agent.gate.held == 0)
    await until(lambda: _gateway_idle(gateway))
    await pod.wake()
    ok = await roundtrip(gw_addr(gateway), post("/v1/chat/completions", CHAT, "Connection: close"))
    assert ok.status == 200
    assert pod.forwarded() == ["POST /v1/chat/completions"]  # only the last one
    pod.assert_engine_safe()


async def test_a_client_that_leaves_mid_stream_frees_its_slot_and_the_operator_hears_idle(
    pod: Pod,
) -> None:
    """In-flight returns to 0 at once, the long-poll reports it (the idle edge), and an idle
    sleep right after does not meet the aborted request running (a legacy engine would die)."""
    body = b'{"model":"m","prompt":"a","max_tokens":400,"stream":true}'
    conn = await Conn.open(*pod.public)
    await conn.send(post("/v1/completions", body))
    await asyncio.wait_for(conn.reader.readuntil(b"data: "), 10)
    assert pod.agent.gate.inflight == 1
    busy = await pod.control_call_json("/state")
    assert busy["inflight"] == 1
    conn.close()
    idle = await pod.control_call_json(f"/state?version={busy['version']}&wait=10")
    assert idle["inflight"] == 0 and idle["version"] > busy["version"]
    answer = await pod.control_call("/sleep?level=1&reason=idle")
    assert answer.status == 200, answer
    pod.assert_engine_safe()


# -- path tricks at the gateway ---------------------------------------------------------------

# Each is either refused (404/405/400, OpenAI's shape) or, when it is the chat route itself,
# forwarded to the table's path: nothing else, and nothing to the agent's control port.
GATEWAY_TARGETS = [
    "/v1/chat%2Fcompletions",
    "/v1%2Fchat%2Fcompletions",
    "/%761/chat/completions",
    "/v1/chat/completions;x=1",
    "/v1/chat/completions;/../../sleep",
    "/v1/chat/completions/",
    "//v1/chat/completions",
    "/v1//chat/completions",
    "/v1/./chat/completions",
    "/v1/x/../chat/completions",
    "/v1\\chat\\completions",
    "/V1/CHAT/COMPLETIONS",
    "/v1/chat/completions%00",
    "/v1/chat/completions%20",
    "/v1/chat/completions/..%2f..%2fsleep",
    "/v1/chat/completions/../../sleep",
    "/v1/../sleep",
    "/sleep",
    "/wake_up",
    "/collective_rpc",
    "/state",
    "/wake",
    "/metrics/../sleep",
    "/healthz/../wake_up",
    "/v1/models/../../collective_rpc",
    "/v1/responses/../../sleep",
    "/v1/responses/%2e%2e%2fsleep",
    "*",
    "http://127.0.0.1:{control}/sleep?level=1",
    "http://127.0.0.1:{control}/v1/chat/completions",
    "http://127.0.0.1:8001/sleep",
    "/v1/chat/completions?/../../sleep",
    "/v1/chat/completions?x=1#/../../sleep",
    "/v1/chat/completions#/../../sleep",
    "/v1/chat/completions??level=1",
]


async def test_no_gateway_target_reaches_more_than_the_chat_route(
    pod: Pod, gateway: Gateway
) -> None:
    control = pod.control[1]
    for target in GATEWAY_TARGETS:
        raw = post(target.format(control=control), CHAT, "Connection: close")
        answer = await roundtrip(gw_addr(gateway), raw)
        if answer.status == 200:
            seen = pod.tap.client_requests()[-1].line.split(b" ")[1]
            assert seen.split(b"?")[0] == b"/v1/chat/completions", (target, seen)
        else:
            assert answer.status in (400, 404, 405), (target, answer)
            assert answer.error()["message"], target
    assert {line.split("?")[0] for line in pod.forwarded()} <= {"POST /v1/chat/completions"}
    assert pod.agent.board.state.value == "awake" and pod.engine.state == "awake"
    pod.assert_engine_safe()


# -- a hostile pod behind the gateway ---------------------------------------------------------


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


_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
MALFORMED_ANSWERS = {
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "status-2000": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
    b"Upgrade: h2c\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
    "endless-head": b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * (1 << 20),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_ANSWERS))
async def test_a_malformed_answer_from_a_pod_is_a_clean_502(case: str) -> None:
    async with gateway_before(FakePod(lambda n, _: MALFORMED_ANSWERS[case])) as gw:
        answer = await roundtrip(
            gw_addr(gw), post("/v1/chat/completions", CHAT, "Connection: close")
        )
        assert answer.status == 502, answer
        assert answer.error()["code"] == "upstream_error"
        assert _gateway_idle(gw)
        still = await roundtrip(gw_addr(gw), get("/healthz", "Connection: close"))
        assert still.status == 200


async def test_a_second_response_from_a_pod_never_reaches_another_client() -> None:
    """A pod that answers one request twice (response splitting, or a desynchronised
    connection): the extra bytes are dropped with the connection, and the next request,
    from another client, gets its own answer."""

    def script(n: int, _: Seen) -> bytes:
        own = b'{"n":%d}' % n
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(own), own)
        smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
        return answer + smuggled if n == 1 else answer

    fake = FakePod(script)
    async with gateway_before(fake) as gw:
        first = await roundtrip(
            gw_addr(gw), post("/v1/chat/completions", CHAT, "Connection: close")
        )
        assert first.status == 200 and first.body == b'{"n":1}', first
        await until(lambda: fake.closed_by_peer == 1)
        second = await roundtrip(
            gw_addr(gw), post("/v1/chat/completions", CHAT, "Connection: close")
        )
        assert second.status == 200 and second.body == b'{"n":2}', second


async def test_an_endless_stream_stops_when_its_client_leaves() -> None:
    """A pod that streams forever: the client that leaves closes the gateway's connection
    to the pod (vLLM would abort the request), and the gateway counts nothing in flight."""

    async def forever() -> AsyncIterator[bytes]:
        yield b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        yield b"Transfer-Encoding: chunked\r\n\r\n"
        while True:
            yield b"c\r\ndata: tick\n\n\r\n"
            await asyncio.sleep(0.01)

    fake = FakePod(lambda n, _: forever())
    async with gateway_before(fake) as gw:
        conn = await Conn.open(*gw_addr(gw))
        await conn.send(post("/v1/chat/completions"))
        await asyncio.wait_for(conn.reader.readuntil(b"data: tick"), 10)
        assert not _gateway_idle(gw)
        conn.close()
        await until(lambda: fake.closed_by_peer == 1)
        await until(lambda: _gateway_idle(gw))


async def test_a_pod_that_promises_more_than_it_sends_cuts_the_client() -> None:
    """A Content-Length the pod does not honour before closing: the client's connection is
    cut, so its answer is visibly incomplete, never a short body passed off as whole."""
    lie = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{}"

    async def then_close() -> AsyncIterator[bytes]:
        yield lie
        raise ConnectionResetError  # FakePod closes the connection

    async with gateway_before(FakePod(lambda n, _: then_close())) as gw:
        conn = await Conn.open(*gw_addr(gw))
        await conn.send(post("/v1/chat/completions"))
        got = await conn.answers(1)
        assert got == [] and conn.closed


_HOP_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Connection: keep-alive, X-Pod-Internal\r\nX-Pod-Internal: secret\r\n"
    b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\n"
    b"Trailer: X-T\r\nContent-Length: 2\r\n\r\n{}"
)
_HOP_FIELDS = {"x-pod-internal", "keep-alive", "proxy-authenticate", "upgrade", "trailer"}


async def test_hop_by_hop_fields_of_a_pods_answer_stop_at_the_gateway() -> None:
    """Including those the pod named in its Connection field (RFC 9110 §7.6.1)."""
    async with gateway_before(FakePod(lambda n, _: _HOP_ANSWER)) as gw:
        got = await roundtrip(gw_addr(gw), post("/v1/chat/completions", CHAT, "Connection: close"))
    assert got.status == 200 and got.body == b"{}"
    assert _HOP_FIELDS.isdisjoint(got.headers), got.headers


def _fake_vllm(n: int, request: Seen) -> bytes:
    """Enough of vLLM for the agent to find it awake; anything else gets _HOP_ANSWER."""
    path = request.line.split(b" ")[1]
    if path == b"/is_sleeping":
        body = b'{"is_sleeping":false}'
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    if path in (b"/health", b"/version", b"/metrics"):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    return _HOP_ANSWER


async def test_hop_by_hop_fields_of_vllms_answer_stop_at_the_agent() -> None:
    fake = FakePod(_fake_vllm)
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
            raw = post("/v1/chat/completions", CHAT, "Connection: close")
            got = await roundtrip((AGENT, agent.public_port or 0), raw)
    finally:
        await fake.stop()
    assert got.status == 200 and got.body == b"{}"
    assert _HOP_FIELDS.isdisjoint(got.headers), got.headers


# -- what held requests may cost --------------------------------------------------------------


async def test_held_bodies_are_charged_to_the_budget_and_freed_when_their_clients_leave() -> None:
    """Many held requests from one client cost their bodies, against one budget: past it
    the next is refused (503, Retry-After) before it is held, and the bytes come back when
    the clients leave, or a pipelined request queued behind a held one leaves with it."""
    body = b'{"model":"m","prompt":"%s","max_tokens":2}' % (b"a" * (300 << 10))
    async with make_pod(max_buffered_bytes=1 << 20) as pod:
        await pod.sleep()
        conns = [await Conn.open(*pod.public) for _ in range(3)]
        for conn in conns:
            await conn.send(post("/v1/completions", body))
        await until(lambda: pod.agent.gate.held == 3)
        assert pod.budget() == 3 * len(body)
        refused = await roundtrip(pod.public, post("/v1/completions", body))
        assert refused.status == 503 and refused.headers.get("retry-after"), refused
        refused.error()
        assert pod.agent.gate.held == 3
        # A request pipelined behind a held one is read (and charged) but not held.
        await conns[0].send(post("/v1/completions", b'{"model":"m","prompt":"b"}'))
        await until(lambda: pod.budget() == 3 * len(body) + 26)
        assert pod.agent.gate.held == 3
        for conn in conns:
            conn.close()
        await until(lambda: pod.agent.gate.held == 0 and pod.budget() == 0)
        await pod.wake()
        assert pod.forwarded() == []
        pod.assert_engine_safe()


# -- HTTP/1.0 keep-alive ----------------------------------------------------------------------


@pytest.mark.parametrize("hop", ["agent", "gateway"])
async def test_http10_keep_alive_is_served_and_a_close_delimited_answer_ends_the_connection(
    pod: Pod, gateway: Gateway, hop: str
) -> None:
    """HTTP/1.0 with keep-alive: plain answers keep the connection (they say so); a streamed
    answer has no length for a 1.0 client, so the close ends it, and a request pipelined
    behind it never runs."""
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    conn = await Conn.open(*addr)
    alive = "Connection: keep-alive"
    await conn.send(post("/v1/chat/completions", CHAT, alive, version="1.0"))
    first = await conn.answer()
    assert first.status == 200 and first.headers.get("connection") == "keep-alive", first
    stream = b'{"model":"m","prompt":"a","max_tokens":3,"stream":true}'
    await conn.send(
        post("/v1/completions", stream, alive, version="1.0")
        + post("/v1/chat/completions", CHAT, alive, version="1.0")
    )
    answers = await conn.answers(3)
    assert [a.status for a in answers] == [200, 200], answers
    assert answers[1].body.rstrip().endswith(b"data: [DONE]") and conn.closed
    assert pod.forwarded() == ["POST /v1/chat/completions", "POST /v1/completions"]


# -- head bounds across the two hops ----------------------------------------------------------


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


def _head_of_size(counted: int) -> list[str]:
    """Header lines making a chat request's head `counted` bytes as the server counts it (the
    target, and each field's name and value plus 4), with `post`'s Host and Content-Length."""
    fixed = len("/v1/chat/completions") + (4 + 1 + 4) + (14 + len(str(len(CHAT))) + 4)
    return ["X-Big: " + "a" * (counted - fixed - (len("X-Big") + 4))]


@pytest.mark.parametrize("case", ["fields", "bytes"])
async def test_a_head_the_gateway_accepts_the_agent_accepts_too(case: str) -> None:
    """What the gateway adds (Host, Content-Length, X-Forwarded-For) must not push a head it
    accepted past the agent's bound: the client would get the agent's 431 for a request
    the gateway took."""
    fake = FakePod(_fake_vllm)
    async with two_hops(fake) as (_, gw):
        # At the client bound: every field it allows; every byte but a few (a head that
        # arrives in several reads is also bounded by its raw bytes, a few more).
        if case == "fields":
            headers = [f"X-{i}: v" for i in range(MAX_HEADERS - 2)]
        else:
            headers = _head_of_size(MAX_HEAD_BYTES - 20)
        answer = await roundtrip(gw_addr(gw), post("/v1/chat/completions", CHAT, *headers))
        assert answer.status == 200 and answer.body == b"{}", answer
        served = fake.requests
        # Past it: the gateway's own 431, and nothing is forwarded.
        over = [*headers, "X-1: v"] if case == "fields" else _head_of_size(MAX_HEAD_BYTES + 1)
        answer = await roundtrip(gw_addr(gw), post("/v1/chat/completions", CHAT, *over))
        assert answer.status == 431 and answer.error()["code"] == "headers_too_large", answer
        assert fake.requests == served
