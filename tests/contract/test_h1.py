"""vllm_sleep.h1 on the wire: the server's framing and limits, the pool's errors, the splice.

Raw sockets on the client side (exact bytes out; responses parsed by llhttp, so chunk framing
is decoded, not assumed) and raw asyncio upstreams (exact bytes back, requests counted per
connection). `Relay` forwards through an UpstreamPool into the client's Reply the way the
gateway's proxy does. A few end-to-end cases run again on uvloop, the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import select
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httptools
import pytest
import uvloop

from vllm_sleep.h1 import (
    ConnectError,
    Exchange,
    Limits,
    Reply,
    Request,
    Response,
    Server,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
)

pytestmark = [pytest.mark.contract, pytest.mark.timeout(30)]

HOST = "127.0.13.1"  # the h1 Server under test
UPSTREAM = "127.0.13.2"  # raw upstreams
NOWHERE = "127.0.13.3"  # nothing listens here
CLIENT = "127.0.13.9"  # raw clients bind here (Request.peer)
WAIT = 5.0  # a bound on every wait, so a hang fails the test instead of stalling the suite

Handler = Callable[[Request, Reply], Awaitable[None]]


# -- the client side: a raw connection, responses parsed by llhttp --------------------------------


@dataclass
class Resp:
    status: int = 0
    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name.encode():
                return v.decode("latin-1")
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class IncompleteResponse(Exception):
    """The server closed the connection in the middle of a response (or before one)."""

    def __init__(self, partial: Resp | None) -> None:
        super().__init__(f"connection closed; partial response: {partial}")
        self.partial = partial


class Wire:
    """One raw client connection: bytes written exactly as given, responses parsed by llhttp."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.raw = bytearray()  # every byte received (through `_fill`)
        self.current: Resp | None = None  # the response being parsed
        self._done: deque[Resp] = deque()
        self._parser = httptools.HttpResponseParser(self)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.current = Resp()

    def on_status(self, reason: bytes) -> None:
        assert self.current is not None
        self.current.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.chunks.append(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self._done.append(self.current)
        self.current = None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _fill(self) -> None:
        try:
            data = await self.reader.read(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            raise IncompleteResponse(self.current)
        self.raw += data
        self._parser.feed_data(data)

    async def until(self, condition: Callable[[], bool], wait: float = WAIT) -> None:
        async def fill() -> None:
            while not condition():
                await self._fill()

        await asyncio.wait_for(fill(), wait)

    async def response(self) -> Resp:
        await self.until(lambda: bool(self._done))
        return self._done.popleft()

    def partial_body(self) -> bytes:
        return self.current.body if self.current is not None else b""

    async def eof(self) -> bytes:
        """The raw bytes until the server closes the connection (b"": it sent nothing more)."""

        async def drain() -> bytes:
            out = bytearray()
            with contextlib.suppress(ConnectionResetError):
                while data := await self.reader.read(1 << 16):
                    out += data
            return bytes(out)

        return await asyncio.wait_for(drain(), WAIT)


@contextlib.asynccontextmanager
async def connect(port: int, *, rcvbuf: int | None = None) -> AsyncIterator[Wire]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((CLIENT, 0))
        if rcvbuf is not None:  # a small fixed receive window: the client really reads slowly
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        yield Wire(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, limits: Limits | None = None, **kwargs: Any
) -> AsyncIterator[tuple[Server, int]]:
    server = Server(handler, limits, **kwargs)
    port = await server.start(HOST, 0)
    try:
        yield server, port
    finally:
        await server.stop(0)


def get(path: str = "/", *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: h1.test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    return get(path, f"Content-Length: {len(body)}", *extra, method="POST") + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def echo(request: Request, reply: Reply) -> None:
    reply.send(Response(200, f"{request.path}:".encode() + request.body, content_type="text/plain"))


async def wait_for(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), WAIT)


# -- the upstream side: raw asyncio servers ---------------------------------------------------


@dataclass
class Seen:
    method: bytes = b""
    path: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


class Requests:
    """Requests arriving on one upstream connection, parsed by llhttp."""

    def __init__(self, upstream: Upstream, reader: asyncio.StreamReader) -> None:
        self._upstream, self._reader = upstream, reader
        self._parser = httptools.HttpRequestParser(self)
        self._current = Seen()
        self._done: deque[Seen] = deque()

    def on_url(self, url: bytes) -> None:
        self._current.path += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self._current.method = self._parser.get_method()
        self._upstream.requests.append(self._current)
        self._done.append(self._current)
        self._current = Seen()

    async def next(self) -> Seen | None:
        """The next request, or None when the pool closed the connection."""
        while not self._done:
            try:
                data = await self._reader.read(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                self._upstream.eofs += 1
                self._upstream.eof.set()
                return None
            self._parser.feed_data(data)
        return self._done.popleft()


Script = Callable[["Upstream", Requests, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """A raw upstream on UPSTREAM: `script` runs once per accepted connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.accepted = 0
        self.eofs = 0  # connections the pool closed (seen as EOF)
        self.eof = asyncio.Event()
        self.gate = asyncio.Event()  # for scripts that wait for the test
        self.requests: list[Seen] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, UPSTREAM, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(self, Requests(self, reader), writer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the pool went away; the test decides what that means
        finally:
            self._tasks.discard(task)
            writer.close()


def http(status: int = 200, body: bytes = b"", *headers: str, reason: str = "") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason or 'Whatever'}", f"content-length: {len(body)}"]
    return ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode() + body


def answering(*responses: bytes) -> Script:
    """Answer the n-th request on each connection with responses[n] (the last one repeats)."""

    async def script(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        n = 0
        while await requests.next() is not None:
            writer.write(responses[min(n, len(responses) - 1)])
            n += 1

    return script


def upstream_head(path: bytes = b"/v1/x", body: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: up\r\ncontent-length: %d\r\n\r\n" % (path, len(body))


@contextlib.asynccontextmanager
async def pooled(**kwargs: Any) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(**{"connect_timeout": 1.0, **kwargs})
    try:
        yield pool
    finally:
        await pool.close()


_FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}


def drop_framing(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The Reply frames the client's response itself (as the gateway's filter leaves it)."""
    return [(n, v) for n, v in headers if n.lower() not in _FRAMING and n.lower() != b"x-secret"]


class Relay:
    """Forward each request through the pool and splice the answer, as the gateway's proxy."""

    def __init__(self, pool: UpstreamPool, port: int, host: str = UPSTREAM) -> None:
        self.pool, self.host, self.port = pool, host, port
        self.errors: list[Exception] = []
        self.exchanges: list[Exchange] = []

    async def __call__(self, request: Request, reply: Reply) -> None:
        head = upstream_head(request.path.encode(), request.body)
        try:
            exchange = await self.pool.request(
                self.host, self.port, head, request.body, sink=reply, header_filter=drop_framing
            )
        except (ConnectError, UpstreamError) as e:
            self.errors.append(e)
            reply.send(Response(502, json.dumps({"error": type(e).__name__}).encode()))
            return
        self.exchanges.append(exchange)
        try:
            if exchange.status == 503:  # buffered, never spliced: the caller decides
                data, complete = await exchange.read(1 << 16)
                reply.send(Response(503, data, (("x-complete", str(complete)),)))
            else:
                await exchange.finished()
        except UpstreamError as e:
            self.errors.append(e)
            reply.abort()  # the status line is out: an incomplete response is the only signal
        finally:
            exchange.release()


# -- server ---------------------------------------------------------------------------------------


async def test_simple_reply_has_status_length_date_and_json_body() -> None:
    seen: list[Request] = []

    async def handler(request: Request, reply: Reply) -> None:
        seen.append(request)
        doc = {"ok": True, "n": 1}
        reply.send(Response(201, json.dumps(doc).encode(), (("x-served-by", "h1"),)))

    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(post("/v1/things?a=1&b=2", b"abcd", "X-Token: T"))
        r = await w.response()
    assert (r.status, r.reason) == (201, b"Created")
    assert r.header("content-type") == "application/json"
    assert r.header("content-length") == str(len(r.body))
    date = r.header("date")
    assert date is not None and parsedate_to_datetime(date).tzinfo is not None
    assert r.header("x-served-by") == "h1"
    assert r.header("connection") is None  # keep-alive is HTTP/1.1's default
    assert r.json() == {"ok": True, "n": 1}
    (req,) = seen
    assert (req.method, req.path, req.query, req.version) == (
        "POST",
        "/v1/things",
        "a=1&b=2",
        "1.1",
    )
    assert req.body == b"abcd" and req.keep_alive and req.peer == CLIENT
    assert req.header("x-token") == req.header("X-TOKEN") == "T"
    assert req.header("missing") is None


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with serving(echo) as (server, port), connect(port) as w:
        for i in range(3):
            await w.send(post(f"/r{i}", b"body%d" % i))
            r = await w.response()
            assert (r.status, r.body) == (200, b"/r%d:body%d" % (i, i))
            assert r.header("connection") is None
            assert len(server.connections) == 1


async def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    events: list[tuple[str, str]] = []

    async def handler(request: Request, reply: Reply) -> None:
        events.append(("start", request.path))
        if request.path == "/slow":
            await asyncio.sleep(0.05)  # answered last if requests were not serialized
        events.append(("end", request.path))
        await echo(request, reply)

    paths = ["/slow", "/a", "/b"]
    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(get("/slow") + post("/a", b"A") + get("/b"))  # one write
        bodies = [(await w.response()).body for _ in paths]
    assert bodies == [b"/slow:", b"/a:A", b"/b:"]
    assert events == [(e, p) for p in paths for e in ("start", "end")]


async def test_pipelined_requests_are_framed_for_their_own_http_version() -> None:
    """A streamed answer to an HTTP/1.1 request is chunked even when the request pipelined
    behind it is HTTP/1.0 (which gets its own `connection: close`)."""

    async def handler(request: Request, reply: Reply) -> None:
        await asyncio.sleep(0)  # the whole pipeline is parsed before the first answer starts
        reply.start(200, None, [(b"content-type", b"text/plain")], None)
        reply.write(request.path.encode())
        reply.end()

    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(get("/eleven") + get("/ten", version="1.0"))
        first = await w.response()
        assert first.header("transfer-encoding") == "chunked" and first.body == b"/eleven"
        assert first.header("connection") is None
        rest = await w.eof()
    assert rest.startswith(b"HTTP/1.1 200 ") and b"connection: close\r\n" in rest
    assert b"transfer-encoding" not in rest and rest.endswith(b"\r\n\r\n/ten")


@pytest.mark.parametrize(
    "request_bytes",
    [get("/", version="1.0"), get("/", "Connection: close")],
    ids=["http10", "connection-close"],
)
async def test_a_closing_request_gets_connection_close_and_the_socket_closes(
    request_bytes: bytes,
) -> None:
    async with serving(echo) as (_, port), connect(port) as w:
        await w.send(request_bytes)
        r = await w.response()
        assert (r.status, r.body) == (200, b"/:")
        assert r.header("connection") == "close"
        assert await w.eof() == b""


async def test_streamed_reply_to_http10_is_delimited_by_the_close() -> None:
    async def handler(_: Request, reply: Reply) -> None:
        reply.start(200, None, [], None)
        reply.write(b"one,")
        await asyncio.sleep(0)
        reply.write(b"two")
        reply.end()

    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(get("/", version="1.0"))
        raw = await w.eof()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head
    assert b"transfer-encoding" not in head and b"content-length" not in head
    assert body == b"one,two"


async def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    seen: list[bytes] = []

    async def handler(request: Request, reply: Reply) -> None:
        seen.append(request.body)
        await echo(request, reply)

    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(get("/up", "Expect: 100-continue", "Content-Length: 5", method="POST"))
        interim = await w.response()
        assert interim.status == 100 and bytes(w.raw) == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert seen == []  # nothing is handled before the body is in
        await w.send(b"hello")
        r = await w.response()
    assert (r.status, r.body) == (200, b"/up:hello") and seen == [b"hello"]


@pytest.mark.parametrize(
    ("parts", "body"),
    [
        ([post("/up", b"hello", "Expect: 100-continue")], b"hello"),
        ([post("/up", b"hello", "Expect: 100-continue")[:-3], b"llo"], b"hello"),
        ([post("/up", b"", "Expect: 100-continue")], b""),
    ],
    ids=["body-with-headers", "some-body-with-headers", "content-length-0"],
)
async def test_no_100_continue_when_the_client_is_not_waiting(
    parts: list[bytes], body: bytes
) -> None:
    async with serving(echo) as (_, port), connect(port) as w:
        for part in parts:
            await w.send(part)
            await asyncio.sleep(0.01)  # separate reads on the server
        r = await w.response()
    assert (r.status, r.body) == (200, b"/up:" + body)
    assert bytes(w.raw).startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in w.raw


@pytest.mark.parametrize("length", [1000, 1001])
async def test_content_length_over_max_body_is_413_before_the_body_is_read(length: int) -> None:
    rejected: list[tuple[str, int]] = []
    async with (
        serving(echo, Limits(max_body=1000), on_reject=lambda p, s: rejected.append((p, s))) as (
            _,
            port,
        ),
        connect(port) as w,
    ):
        await w.send(get("/upload", f"Content-Length: {length}", method="POST"))
        if length == 1000:  # the limit itself is allowed: the server waits for the body
            await w.send(b"x" * length)
            r = await w.response()
            assert (r.status, r.body) == (200, b"/upload:" + b"x" * 1000)
            assert rejected == []
            return
        r = await w.response()  # the body was never sent
        assert r.status == 413 and r.json()["error"]["code"] == 413
        assert r.header("connection") == "close"
        assert await w.eof() == b""
    assert rejected == [("/upload", 413)]


@pytest.mark.parametrize("total", [1000, 1200])
async def test_chunked_request_body_over_max_body_is_413(total: int) -> None:
    rejected: list[tuple[str, int]] = []
    handled: list[bytes] = []

    async def handler(request: Request, reply: Reply) -> None:
        handled.append(request.body)
        await echo(request, reply)

    limits = Limits(max_body=1000)
    async with (
        serving(handler, limits, on_reject=lambda p, s: rejected.append((p, s))) as (_, port),
        connect(port) as w,
    ):
        await w.send(get("/c", "Transfer-Encoding: chunked", method="POST"))
        for piece in (b"a" * 600, b"b" * (total - 600)):
            await w.send(chunk(piece))
            await asyncio.sleep(0.01)
        if total > 1000:
            r = await w.response()
            assert r.status == 413 and r.header("connection") == "close"
            assert await w.eof() == b""
        else:
            await w.send(b"0\r\n\r\n")
            r = await w.response()
            assert r.status == 200 and r.body == b"/c:" + b"a" * 600 + b"b" * 400
    if total > 1000:
        assert handled == [] and rejected == [("/c", 413)]
    else:
        assert handled == [b"a" * 600 + b"b" * 400] and rejected == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        get("/", *(f"X-H{i}: v" for i in range(11))),
        get("/", "X-Big: " + "v" * 2000),
        get("/" + "p" * 2000),
    ],
    ids=["too-many-headers", "large-header", "long-url"],
)
async def test_too_large_request_heads_are_431(request_bytes: bytes) -> None:
    rejected: list[int] = []
    limits = Limits(max_head=1024, max_headers=10)
    async with (
        serving(echo, limits, on_reject=lambda _p, s: rejected.append(s)) as (_, port),
        connect(port) as w,
    ):
        await w.send(request_bytes)
        r = await w.response()
        assert r.status == 431 and r.header("connection") == "close"
        assert await w.eof() == b""
    assert rejected == [431]


async def endless_line_status(prefix: bytes) -> int:
    """Send `prefix`, then a header/trailer value that never ends; the server's answer."""
    async with serving(echo, Limits(max_head=1024)) as (_, port), connect(port) as w:

        async def trickle() -> None:
            await w.send(prefix)
            with contextlib.suppress(ConnectionError):
                for _ in range(400):  # up to 200 KiB, never a line end
                    await w.send(b"v" * 512)
                    await asyncio.sleep(0.002)

        sender = asyncio.create_task(trickle())
        try:
            return (await w.response()).status
        finally:
            sender.cancel()


async def test_a_header_that_never_ends_is_431_not_buffered_forever() -> None:
    """The head is bounded while it arrives, not only once a header line is complete."""
    assert await endless_line_status(b"GET / HTTP/1.1\r\nHost: h1.test\r\nX-Endless: ") == 431


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"GET / HTTP/9.x\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\n\r\n",  # llhttp passes the URL on; parse_url rejects it
        b"GET http://a:99999999/ HTTP/1.1\r\nbad header\r\n\r\n",
        b"GET http://a HTTP/1.1\r\nbad header\r\n\r\n",  # a URL without a path
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ],
    ids=[
        "garbage",
        "bad-header",
        "bad-version",
        "bad-url",
        "bad-url-then-bad-header",
        "no-path-then-bad-header",
        "two-lengths",
        "upgrade",
        "http10-chunked",  # RFC 9112 §6.1: faulty framing in HTTP/1.0, not chunked
    ],
)
async def test_malformed_requests_are_400_and_the_connection_closes(
    request_bytes: bytes,
) -> None:
    rejected: list[int] = []
    handled: list[str] = []

    async def handler(request: Request, reply: Reply) -> None:
        handled.append(request.path)
        await echo(request, reply)

    async with serving(handler, on_reject=lambda _p, s: rejected.append(s)) as (_, port):
        async with connect(port) as w:
            await w.send(request_bytes)
            r = await w.response()
            assert r.status == 400 and r.header("connection") == "close"
            assert r.json()["error"]["code"] == 400
            assert await w.eof() == b""
        async with connect(port) as w:  # and the server still serves
            await w.send(get("/next"))
            assert (await w.response()).body == b"/next:"
    assert rejected == [400] and handled == ["/next"]


async def test_a_handler_that_raises_is_500_and_the_connection_keeps_serving() -> None:
    async def handler(request: Request, reply: Reply) -> None:
        if request.path == "/boom":
            raise RuntimeError("boom")
        await echo(request, reply)

    async with serving(handler) as (server, port), connect(port) as w:
        await w.send(get("/boom"))
        r = await w.response()
        assert r.status == 500 and r.json()["error"]["code"] == 500
        assert r.header("connection") is None
        await w.send(get("/ok"))
        r = await w.response()
        assert (r.status, r.body) == (200, b"/ok:") and len(server.connections) == 1


@pytest.mark.parametrize("how", ["raise", "return"])
async def test_a_started_reply_that_is_not_finished_cuts_the_connection(how: str) -> None:
    async def handler(_: Request, reply: Reply) -> None:
        reply.start(200, None, [], 100)
        reply.write(b"x" * 10)
        if how == "raise":
            raise RuntimeError("broke off")

    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(get("/"))
        with pytest.raises(IncompleteResponse) as info:
            await w.response()
    partial = info.value.partial
    assert partial is not None and partial.status == 200 and partial.body == b"x" * 10


@pytest.mark.parametrize("how", ["close", "half-close"])
async def test_a_client_that_leaves_cancels_its_handler(how: str) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(_: Request, reply: Reply) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        reply.send(Response(200))

    async with serving(handler) as (server, port), connect(port) as w:
        await w.send(get("/held"))
        await wait_for(started)
        if how == "close":
            w.writer.close()
        else:
            w.writer.write_eof()  # like nginx: EOF means the client left
        await wait_for(cancelled)
        assert not server.connections  # forgotten before its handler was cancelled


async def test_a_streamed_reply_is_chunked_and_each_write_goes_out_at_once() -> None:
    gate = asyncio.Event()
    big = bytes(range(256)) * 300  # above the copy limit: written with writelines

    async def handler(_: Request, reply: Reply) -> None:
        reply.start(200, None, [(b"content-type", b"text/event-stream")], None)
        reply.write(b"data: 1\n\n")
        await gate.wait()
        reply.write(b"")  # nothing, not an empty chunk (which would end the body)
        reply.write(b"data: 22\n\n")
        reply.cork()
        reply.write(b"a")
        reply.write(b"b")
        reply.uncork()
        reply.write(big)
        reply.end()
        reply.end()  # idempotent

    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(get("/stream"))
        await w.until(lambda: w.partial_body() == b"data: 1\n\n")
        gate.set()
        r = await w.response()
        await w.send(get("/stream"))  # still keep-alive after a chunked body
        gate.clear()
        await w.until(lambda: w.partial_body() == b"data: 1\n\n")
        gate.set()
        second = await w.response()
    assert r.status == 200 and r.header("transfer-encoding") == "chunked"
    assert r.header("content-length") is None and r.header("date") is not None
    assert r.header("content-type") == "text/event-stream"
    assert r.body == second.body == b"data: 1\n\ndata: 22\n\nab" + big
    raw = bytes(w.raw)
    body = raw[raw.index(b"\r\n\r\n") + 4 :]
    assert body.startswith(chunk(b"data: 1\n\n") + chunk(b"data: 22\n\n") + chunk(b"a"))
    assert b"\r\n0\r\n\r\nHTTP/1.1 200 " in raw and raw.endswith(b"\r\n0\r\n\r\n")


async def test_a_streamed_reply_with_a_length_is_not_chunked() -> None:
    async def handler(request: Request, reply: Reply) -> None:
        if request.path == "/short":
            reply.start(200, b"Fine", [(b"date", b"upstream's")], 10)
            reply.write(b"12345")
            reply.end()  # 5 of 10 bytes: must not look complete
            return
        reply.start(200, b"Fine", [(b"date", b"upstream's")], 10)
        reply.write(b"12345")
        reply.write(b"67890")
        reply.end()

    async with serving(handler) as (_, port), connect(port) as w:
        for _ in range(2):
            await w.send(get("/full"))
            r = await w.response()
            assert (r.status, r.reason, r.body) == (200, b"Fine", b"1234567890")
            assert r.header("content-length") == "10"
            assert r.header("transfer-encoding") is None
            assert [v for n, v in r.headers if n == b"date"] == [b"upstream's"]
        await w.send(get("/short"))
        with pytest.raises(IncompleteResponse):
            await w.response()


async def test_head_gets_the_headers_but_no_body() -> None:
    async def handler(request: Request, reply: Reply) -> None:
        if request.path == "/stream":
            reply.start(200, None, [], 5)
            reply.write(b"hello")
            reply.end()
        else:
            reply.send(Response(200, b'{"a": 1}'))

    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(
            get("/", method="HEAD") + get("/stream", method="HEAD") + get("/", "Connection: close")
        )
        raw = await w.eof()
    heads = raw.split(b"\r\n\r\n")
    assert len(heads) == 4, raw
    assert heads[0].startswith(b"HTTP/1.1 200 ") and b"content-length: 8" in heads[0]
    assert heads[1].startswith(b"HTTP/1.1 200 ") and b"content-length: 5" in heads[1]
    assert heads[2].startswith(b"HTTP/1.1 200 ") and b"connection: close" in heads[2]
    assert heads[3] == b'{"a": 1}'


async def test_stop_lets_an_in_flight_request_finish_and_closes_idle_connections() -> None:
    started, finish = asyncio.Event(), asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        if request.path == "/slow":
            started.set()
            await finish.wait()
        await echo(request, reply)

    server = Server(handler)
    port = await server.start(HOST, 0)
    try:
        async with connect(port) as busy, connect(port) as idle:
            await idle.send(get("/idle"))
            assert (await idle.response()).status == 200
            await busy.send(get("/slow"))
            await wait_for(started)
            stopping = asyncio.create_task(server.stop(WAIT))
            assert await idle.eof() == b""  # an idle keep-alive connection is closed at once
            assert not stopping.done()  # ... the busy one is waited for
            finish.set()
            r = await busy.response()
            assert (r.status, r.body) == (200, b"/slow:")
            await asyncio.wait_for(stopping, WAIT)
            assert await busy.eof() == b""
        with pytest.raises(OSError):
            await asyncio.open_connection(HOST, port)
    finally:
        await server.stop(0)


class Stuck:
    """A handler that never finishes (optionally after flooding its client) until cancelled."""

    def __init__(self, flood: bool = False) -> None:
        self.flood = flood
        self.started, self.cancelled = asyncio.Event(), asyncio.Event()

    async def __call__(self, _: Request, reply: Reply) -> None:
        if self.flood:
            reply.start(200, None, [], None)
            reply.write(b"x" * (32 << 20))  # far more than the socket buffers take
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_stop_cancels_a_handler_still_running_after_the_grace() -> None:
    handler = Stuck()
    server = Server(handler)
    port = await server.start(HOST, 0)
    async with connect(port) as w:
        await w.send(get("/stuck"))
        await wait_for(handler.started)
        await server.stop(0.1)
        await wait_for(handler.cancelled)
        assert await w.eof() == b""


async def test_idle_keep_alive_connections_are_closed_after_the_timeout() -> None:
    async def handler(request: Request, reply: Reply) -> None:
        if request.path == "/slow":
            await asyncio.sleep(0.8)  # busy for longer than the keep-alive timeout
        await echo(request, reply)

    async with (
        serving(handler, Limits(keepalive_timeout=0.3)) as (_, port),
        connect(port) as idle,
        connect(port) as silent,
        connect(port) as busy,
    ):
        await idle.send(get("/"))
        assert (await idle.response()).status == 200
        await busy.send(get("/slow"))
        assert await idle.eof() == b""
        assert await silent.eof() == b""  # connected, never sent a byte
        r = await busy.response()  # a connection with a request running is not idle
        assert (r.status, r.body) == (200, b"/slow:")


# -- client ---------------------------------------------------------------------------------------


async def test_pool_reuses_a_released_connection_and_not_a_closed_one() -> None:
    async with Upstream(answering(http(200, b"ok", reason="OK"))) as up, pooled() as pool:
        for i in range(3):
            body = b"req%d" % i
            ex = await pool.request(UPSTREAM, up.port, upstream_head(b"/r%d" % i, body), body)
            assert (ex.status, ex.reason) == (200, b"OK")
            assert await ex.read(1 << 16) == (b"ok", True)
            ex.release()
            ex.release()  # idempotent
        assert up.accepted == 1
        assert [(r.path, r.body) for r in up.requests] == [
            (b"/r%d" % i, b"req%d" % i) for i in range(3)
        ]
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        ex.close()  # abort: not back to the pool
        await wait_for(up.eof)
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        assert await ex.read(1 << 16) == (b"ok", True)
        ex.release()
        assert up.accepted == 2


async def test_connect_error_when_nothing_listens_and_the_reply_is_untouched() -> None:
    probe = socket.socket()
    probe.bind((NOWHERE, 0))
    port = probe.getsockname()[1]
    probe.close()  # bound, never listening: the port is closed
    async with pooled() as pool:
        with pytest.raises(ConnectError) as info:
            await pool.request(NOWHERE, port, upstream_head(), b"")
        assert not isinstance(info.value, UpstreamError)  # "not sent" is its own type
        relay = Relay(pool, port, host=NOWHERE)
        async with serving(relay) as (_, server_port), connect(server_port) as w:
            await w.send(post("/v1/x", b"{}"))
            r = await w.response()
        assert r.status == 502 and r.json() == {"error": "ConnectError"}  # not started
        assert [type(e) for e in relay.errors] == [ConnectError]


async def test_connect_timeout_is_a_connect_error_and_nothing_was_sent() -> None:
    """A listener whose accept queue is full drops the SYN: the connect times out."""
    listener = socket.socket()
    listener.bind((NOWHERE, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection((NOWHERE, port))  # fills the queue; never accepted
    try:
        async with pooled(connect_timeout=0.2) as pool:
            with pytest.raises(ConnectError):
                await pool.request(NOWHERE, port, upstream_head(b"/x", b"body"), b"body")
        listener.setblocking(False)
        accepted, _ = listener.accept()  # only the filler ever got in
        with accepted:
            accepted.setblocking(False)
            with pytest.raises(BlockingIOError):
                accepted.recv(1)  # and it holds no request bytes
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        filler.close()
        listener.close()


async def test_upstream_error_when_the_upstream_closes_without_answering() -> None:
    async def hang_up(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.close()

    async with Upstream(hang_up) as up, pooled() as pool:
        with pytest.raises(UpstreamError) as info:
            await pool.request(UPSTREAM, up.port, upstream_head(b"/x", b"payload"), b"payload")
        assert not isinstance(info.value, UpstreamTimeout)
        assert [r.body for r in up.requests] == [b"payload"]  # the request was written


async def test_malformed_upstream_response_is_an_upstream_error() -> None:
    async with (
        Upstream(answering(b"HTTP/1.1 2x0 Nope\r\n\r\n")) as up,
        pooled() as pool,
    ):
        with pytest.raises(UpstreamError):
            await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        await wait_for(up.eof)  # the connection is closed, not reused


async def test_upstream_timeout_when_the_upstream_never_answers() -> None:
    async def silent(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        await requests.next()  # until the pool closes the connection

    async with Upstream(silent) as up, pooled(read_timeout=0.2) as pool:
        with pytest.raises(UpstreamTimeout):
            await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        await wait_for(up.eof)  # the pool closed it (vLLM aborts the request)
        assert len(up.requests) == 1


async def test_read_timeout_is_between_reads_not_for_the_whole_body() -> None:
    async def slow(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(6):
            await asyncio.sleep(0.1)
            writer.write(chunk(b"%d" % i))
        writer.write(b"0\r\n\r\n")
        await requests.next()

    async with (
        Upstream(slow) as up,
        pooled(read_timeout=0.35) as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        r = await w.response()
    assert (r.status, r.body) == (200, b"012345")


async def test_cancelling_a_request_before_the_head_closes_the_upstream_connection() -> None:
    async def silent(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        up.gate.set()
        await requests.next()

    async with Upstream(silent) as up, pooled() as pool:
        sending = asyncio.create_task(pool.request(UPSTREAM, up.port, upstream_head(), b""))
        await wait_for(up.gate)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        await wait_for(up.eof)


async def test_a_503_is_buffered_for_read_and_never_spliced() -> None:
    refusal = json.dumps({"error": {"code": "queue_full", "message": "full"}}).encode()
    seen: list[tuple[int, bool, tuple[bytes, bool], tuple[bytes, bool]]] = []

    async def handler(request: Request, reply: Reply) -> None:
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"", sink=reply)
        seen.append((ex.status, reply.started, await ex.read(4), await ex.read(1 << 16)))
        ex.release()
        reply.send(Response(200, b"retried elsewhere", content_type="text/plain"))

    async with (
        Upstream(answering(http(503, refusal, "content-type: application/json"))) as up,
        pooled() as pool,
        serving(handler) as (_, port),
        connect(port) as w,
    ):
        for _ in range(2):
            await w.send(get("/"))
            r = await w.response()
            assert (r.status, r.body) == (200, b"retried elsewhere")  # no 503 reached the client
        assert up.accepted == 1  # a fully read 503 leaves a reusable connection
    assert seen == [(503, False, (refusal[:4], False), (refusal, True))] * 2


async def test_a_streamed_upstream_is_spliced_intact_and_as_it_comes() -> None:
    parts = [b"data: first\n\n", b"data: second\n\n", b"data: third\n\n", b"data: [DONE]\n\n"]
    sent_last: list[bool] = []

    async def stream(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        while await requests.next() is not None:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-upstream: yes\r\n"
                b"x-secret: s\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(parts[0])
            )
            await up.gate.wait()
            for part in parts[1:]:
                await asyncio.sleep(0.02)
                if part == parts[-1]:
                    sent_last.append(True)
                writer.write(chunk(part) + (b"0\r\n\r\n" if part == parts[-1] else b""))

    async with (
        Upstream(stream) as up,
        pooled() as pool,
        serving(relay := Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        for n in range(2):
            up.gate.clear()
            await w.send(post("/v1/chat/completions", b'{"stream": true}'))
            await w.until(lambda: w.partial_body() == parts[0])
            assert len(sent_last) == n  # the first chunk came before the last was sent
            up.gate.set()
            r = await w.response()
            assert r.status == 200 and r.body == b"".join(parts)
            assert r.chunks[0] == parts[0]
            assert r.header("transfer-encoding") == "chunked"
            assert r.header("x-upstream") == "yes" and r.header("x-secret") is None
        assert up.accepted == 1 and relay.errors == []  # the finished exchange was reused
    assert [r.body for r in up.requests] == [b'{"stream": true}'] * 2


async def test_a_head_without_body_bytes_reaches_the_client_at_once() -> None:
    async def head_first(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await up.gate.wait()  # e.g. vLLM's prefill before the first token
        writer.write(chunk(b"token") + b"0\r\n\r\n")
        await requests.next()

    async with (
        Upstream(head_first) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        await w.until(lambda: w.current is not None and w.current.status == 200, wait=2.0)
        up.gate.set()
        r = await w.response()
    assert r.body == b"token"


@pytest.mark.parametrize(
    "cut",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"a" * 40,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"a" * 40),
    ],
    ids=["content-length", "chunked"],
)
async def test_an_upstream_body_cut_short_cuts_the_client_connection(cut: bytes) -> None:
    async def cut_short(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(cut)
        await writer.drain()
        writer.close()

    async with (
        Upstream(cut_short) as up,
        pooled() as pool,
        serving(relay := Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        with pytest.raises(IncompleteResponse) as info:
            await w.response()
    partial = info.value.partial
    assert partial is not None and partial.status == 200 and partial.body == b"a" * 40
    assert [type(e) for e in relay.errors] == [UpstreamError]


async def test_a_close_delimited_upstream_body_is_complete_at_the_close() -> None:
    async def until_close(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of ")
        await asyncio.sleep(0.01)
        writer.write(b"it")
        await writer.drain()
        writer.close()

    async with (
        Upstream(until_close) as up,
        pooled() as pool,
        serving(relay := Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        for _ in range(2):
            await w.send(post("/v1/x", b"{}"))
            r = await w.response()
            assert (r.status, r.body) == (200, b"all of it")
            assert r.header("transfer-encoding") == "chunked"
        assert up.accepted == 2 and relay.errors == []  # a closed connection is not reused


@pytest.mark.parametrize(
    ("status_line", "length"),
    [(b"204 No Content", None), (b"304 Not Modified", b"123")],
)
async def test_a_spliced_204_or_304_has_no_body_and_the_connection_keeps_serving(
    status_line: bytes, length: bytes | None
) -> None:
    head = b"HTTP/1.1 " + status_line + b"\r\n"
    if length is not None:  # a 304 may state the representation's length; no body follows
        head += b"content-length: " + length + b"\r\n"
    head += b"\r\n"

    async def empty(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        while await requests.next() is not None:
            writer.write(head)
            await writer.drain()

    async with (
        Upstream(empty) as up,
        pooled() as pool,
        serving(relay := Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        for _ in range(2):
            await w.send(post("/v1/x", b"{}"))
            r = await w.response()
            assert r.status == int(status_line[:3]) and r.body == b""
            assert r.header("transfer-encoding") is None
        assert up.accepted == 1 and relay.errors == []


@pytest.mark.parametrize("split", [False, True])
async def test_interim_103_early_hints_is_skipped(split: bool) -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
    final = http(200, b"final", "x-final: 1", reason="OK")

    async def hints(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        while await requests.next() is not None:
            writer.write(interim)
            if split:
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(final)

    async with Upstream(hints) as up, pooled() as pool:
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        assert (ex.status, ex.reason) == (200, b"OK")
        assert [n.lower() for n, _ in ex.headers] == [b"content-length", b"x-final"]
        assert await ex.read(1 << 16) == (b"final", True)
        ex.release()
        async with serving(Relay(pool, up.port)) as (_, port), connect(port) as w:
            await w.send(post("/v1/x", b"{}"))
            r = await w.response()
        assert (r.status, r.body, r.header("x-final")) == (200, b"final", "1")
        assert r.header("link") is None and b"103" not in w.raw
        assert up.accepted == 1  # the interim response left the connection reusable


async def test_a_connection_idle_past_idle_timeout_is_not_reused() -> None:
    async with (
        Upstream(answering(http(200, b"ok"))) as up,
        pooled(idle_timeout=0.2) as pool,
    ):

        async def once() -> None:
            ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
            assert await ex.read(100) == (b"ok", True)
            ex.release()

        await once()
        await once()
        assert up.accepted == 1  # reused while fresh
        await asyncio.sleep(0.5)  # past the idle timeout
        await once()
        assert up.accepted == 2
        await wait_for(up.eof)  # and the pool closed the stale one


async def test_bytes_on_an_idle_connection_make_the_pool_drop_it() -> None:
    async def chatty(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(http(200, b"ok"))
        await up.gate.wait()
        writer.write(b"HTTP/1.1 200 unsolicited\r\n\r\n")
        await requests.next()

    async with Upstream(chatty) as up, pooled() as pool:
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        assert await ex.read(100) == (b"ok", True)
        ex.release()
        up.gate.set()
        await wait_for(up.eof)
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        assert await ex.read(100) == (b"ok", True)
        ex.release()
        assert up.accepted == 2


class RawUpstream:
    """An upstream on plain sockets: the test decides the instant a connection closes (a
    socket's close() is synchronous; an asyncio transport's is not)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind((UPSTREAM, 0))
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []

    async def accept(self) -> socket.socket:
        conn, _ = await asyncio.get_running_loop().sock_accept(self.listener)
        return conn

    async def answer(self, conn: socket.socket, response: bytes) -> None:
        """Read one whole request (a head without a body, as `keep_alive_race` sends) and answer."""
        loop = asyncio.get_running_loop()
        data = b""
        while not data.endswith(b"\r\n\r\n"):
            chunk = await loop.sock_recv(conn, 1 << 16)
            assert chunk, "the pool closed the connection"
            data += chunk
        self.requests.append(data)
        await loop.sock_sendall(conn, response)

    async def serve_one(self, response: bytes) -> None:
        conn = await self.accept()
        with conn:
            await self.answer(conn, response)
            await asyncio.sleep(WAIT)  # keep it open while the pool reads

    def close(self) -> None:
        self.listener.close()


async def keep_alive_race(
    pool: UpstreamPool, up: RawUpstream, close: Callable[[socket.socket], Awaitable[None]]
) -> Exchange:
    """One request answered on a connection the pool keeps; `close` closes the upstream's end
    of it; the second request (which `close` may find pending) meets that close."""
    first = asyncio.ensure_future(pool.request(UPSTREAM, up.port, upstream_head(b"/1"), b""))
    conn = await up.accept()
    await up.answer(conn, http(200, b"one"))
    ex = await first
    assert await ex.read(100) == (b"one", True)
    ex.release()
    fresh = asyncio.ensure_future(up.serve_one(http(200, b"two")))
    try:
        return await close(conn)  # type: ignore[func-returns-value]
    finally:
        fresh.cancel()
        conn.close()


async def test_a_pooled_connection_its_upstream_closed_is_not_written_to() -> None:
    """The upstream's FIN is in the pool's socket, not yet read by the event loop, when the
    next request takes that connection: it goes out on a fresh one, and the closed one got
    not one byte."""
    up = RawUpstream()
    try:
        async with pooled() as pool:

            async def close_then_send(conn: socket.socket) -> Exchange:  # type: ignore[return]
                conn.shutdown(socket.SHUT_WR)  # the idle close, as the upstream sees it
                (idle,) = pool._idle[(UPSTREAM, up.port)]
                client_end = idle.transport.get_extra_info("socket")  # type: ignore[union-attr]
                # Blocking on purpose: the FIN is in, and the event loop has not run since.
                assert select.select([client_end.fileno()], [], [], WAIT)[0]
                ex = await pool.request(UPSTREAM, up.port, upstream_head(b"/2"), b"")
                assert select.select([conn], [], [], WAIT)[0]
                assert conn.recv(1) == b""  # dropped by the pool: not one byte written on it
                return ex

            ex = await keep_alive_race(pool, up, close_then_send)
            assert await ex.read(100) == (b"two", True)
            ex.release()
        assert [r.split(b" ")[1] for r in up.requests] == [b"/1", b"/2"]
    finally:
        up.close()


async def test_a_pooled_connection_reset_under_an_unread_request_sends_it_again() -> None:
    """The upstream closes the connection with the request in its socket, unread: the reset
    says no byte was taken, so the request goes out once more, on a fresh connection."""
    up = RawUpstream()
    try:
        async with pooled() as pool:

            async def close_under_request(conn: socket.socket) -> Exchange:
                second = asyncio.ensure_future(
                    pool.request(UPSTREAM, up.port, upstream_head(b"/2"), b"")
                )
                async with asyncio.timeout(WAIT):
                    while not select.select([conn], [], [], 0)[0]:  # noqa: ASYNC110 - a socket has no event
                        await asyncio.sleep(0.001)
                conn.close()  # unread bytes in it: the kernel answers with a reset
                return await second

            ex = await keep_alive_race(pool, up, close_under_request)
            assert await ex.read(100) == (b"two", True)
            ex.release()
        assert [r.split(b" ")[1] for r in up.requests] == [b"/1", b"/2"]  # read once
    finally:
        up.close()


async def test_a_pooled_connection_closed_after_its_request_was_read_is_final() -> None:
    """A clean close after the upstream read the request (it may be running): an
    UpstreamError, never a second copy."""
    up = RawUpstream()
    try:
        async with pooled() as pool:

            async def read_then_close(conn: socket.socket) -> Exchange:
                second = asyncio.ensure_future(
                    pool.request(UPSTREAM, up.port, upstream_head(b"/2"), b"")
                )
                loop = asyncio.get_running_loop()
                data = b""
                while not data.endswith(b"\r\n\r\n"):
                    data += await loop.sock_recv(conn, 1 << 16)
                conn.close()  # everything read: a FIN
                with pytest.raises(UpstreamError) as info:
                    await second
                assert not isinstance(info.value, UpstreamTimeout)
                raise _Final()

            with pytest.raises(_Final):
                await keep_alive_race(pool, up, read_then_close)
        assert [r.split(b" ")[1] for r in up.requests] == [b"/1"]  # the second never again
    finally:
        up.close()


class _Final(Exception):
    pass


async def test_pool_close_closes_idle_connections_and_refuses_new_requests() -> None:
    async with Upstream(answering(http(200, b"ok"))) as up:
        pool = UpstreamPool(connect_timeout=1.0)
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        assert await ex.read(100) == (b"ok", True)
        ex.release()
        await pool.close()
        await wait_for(up.eof)
        with pytest.raises(ConnectError):
            await pool.request(UPSTREAM, up.port, upstream_head(), b"")


BIG = 16 << 20


def _big_body() -> bytes:
    return random.Random(13).randbytes(BIG)


def _bulk(payload: bytes) -> Script:
    async def script(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload))
        writer.write(payload)  # what the kernel does not take waits in this transport
        await writer.drain()
        up.gate.set()  # everything left this process
        await requests.next()

    return script


@pytest.mark.parametrize("read_timeout", [None, 0.2], ids=["no-read-timeout", "read-timeout"])
async def test_backpressure_a_large_body_to_a_slow_client_arrives_intact(
    read_timeout: float | None,
) -> None:
    """The client stalls: the relay stops reading the upstream (so the upstream cannot finish
    sending), which is not an upstream timeout either; then the body arrives complete."""
    payload = _big_body()
    async with (
        Upstream(_bulk(payload)) as up,
        pooled(read_timeout=read_timeout) as pool,
        serving(relay := Relay(pool, up.port)) as (_, port),
        connect(port, rcvbuf=1 << 16) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        await w.until(lambda: w.current is not None and w.current.status == 200)
        await asyncio.sleep(0.5)  # a stalled client (and longer than the read timeout)
        assert not up.gate.is_set()  # the relay did not buffer the body for it
        r = await w.response()
        await wait_for(up.gate)
    assert r.header("content-length") == str(BIG)
    assert hashlib.sha256(r.body).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert relay.errors == []


# -- review fixes: framing, pipelining and the pool's edge cases ---------------------------------


async def test_trailer_fields_are_not_merged_into_the_request_headers() -> None:
    """A trailer after a chunked body must not pass for a header (auth, forwarding)."""
    seen: list[Request] = []

    async def handler(request: Request, reply: Reply) -> None:
        seen.append(request)
        await echo(request, reply)

    trailers = b"0\r\nAuthorization: Bearer smuggled\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(get("/t", "Transfer-Encoding: chunked", method="POST") + chunk(b"abc"))
        await w.send(trailers)
        r = await w.response()
        assert (r.status, r.body) == (200, b"/t:abc")
        await w.send(get("/next"))  # and the connection is still in step
        assert (await w.response()).body == b"/next:"
    assert seen[0].header("authorization") is None
    assert seen[0].header("x-forwarded-for") is None


async def test_http10_keep_alive_is_confirmed_and_the_connection_kept() -> None:
    async with serving(echo) as (server, port), connect(port) as w:
        for i in range(2):
            await w.send(get(f"/k{i}", "Connection: keep-alive", version="1.0"))
            r = await w.response()
            assert (r.status, r.body) == (200, b"/k%d:" % i)
            assert r.header("connection") == "keep-alive"  # else the client closes
        assert len(server.connections) == 1


async def test_bad_bytes_pipelined_behind_requests_get_400_after_their_answers() -> None:
    """The requests before the bad bytes are answered in order, then the 400, then the close."""
    refused, release = asyncio.Event(), asyncio.Event()
    rejected: list[int] = []

    def on_reject(_path: str, status: int) -> None:
        rejected.append(status)
        refused.set()

    async def handler(request: Request, reply: Reply) -> None:
        if request.path == "/a":
            await wait_for(release)  # still answering /a when the bad bytes are parsed
        await echo(request, reply)

    async with serving(handler, on_reject=on_reject) as (_, port), connect(port) as w:
        await w.send(get("/a") + post("/b", b"B") + b"GARBAGE\r\n\r\n")
        await wait_for(refused)
        release.set()
        answers = [await w.response() for _ in range(3)]
        assert [(r.status, r.body) for r in answers[:2]] == [(200, b"/a:"), (200, b"/b:B")]
        assert answers[2].status == 400 and answers[2].header("connection") == "close"
        assert await w.eof() == b""
    assert rejected == [400]


async def test_100_continue_for_a_request_that_waited_behind_another() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        if request.path == "/slow":
            started.set()
            await wait_for(release)
        await echo(request, reply)

    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(get("/slow"))
        await wait_for(started)
        await w.send(get("/up", "Expect: 100-continue", "Content-Length: 5", method="POST"))
        await asyncio.sleep(0.05)  # its head is read while /slow is still being answered
        release.set()
        assert (await w.response()).body == b"/slow:"
        interim = await w.response()  # the client waits for this before sending the body
        assert interim.status == 100
        await w.send(b"hello")
        r = await w.response()
    assert (r.status, r.body) == (200, b"/up:hello")


async def test_a_close_delimited_body_cut_by_a_reset_is_not_complete() -> None:
    async def reset(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart")
        await writer.drain()
        await up.gate.wait()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST: the body was cut, not ended

    async with (
        Upstream(reset) as up,
        pooled() as pool,
        serving(relay := Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        await w.until(lambda: w.partial_body() == b"part")
        up.gate.set()
        with pytest.raises(IncompleteResponse):  # no last-chunk marker: visibly incomplete
            await w.response()
    assert [type(e) for e in relay.errors] == [UpstreamError]


async def test_a_timed_out_close_delimited_body_is_not_completed_by_the_close() -> None:
    async def stall(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npart")
        await requests.next()  # until the pool closes the connection

    async with Upstream(stall) as up, pooled(read_timeout=0.5) as pool:
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        await wait_for(up.eof)  # the read timeout closed it while nobody was reading
        with pytest.raises(UpstreamTimeout):
            await ex.read(1 << 16)
        ex.release()


async def test_a_second_response_to_one_request_is_not_body_and_drops_the_connection() -> None:
    async with (
        Upstream(answering(http(200, b"ok") + http(200, b"EXTRA"))) as up,
        pooled() as pool,
    ):
        for _ in range(2):
            ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
            assert await ex.read(1 << 16) == (b"ok", True)
            assert [n for n, _ in ex.headers] == [b"content-length"]
            ex.release()
        assert up.accepted == 2  # the out-of-step connection was not reused


async def test_upstream_trailers_are_not_response_headers() -> None:
    answer = b"HTTP/1.1 503 Busy\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"busy")
    answer += b"0\r\nx-trailer: 1\r\n\r\n"
    async with Upstream(answering(answer)) as up, pooled() as pool:
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        assert await ex.read(1 << 16) == (b"busy", True)
        assert [n for n, _ in ex.headers] == [b"transfer-encoding"]
        ex.release()


async def test_the_answer_to_a_head_request_has_no_body() -> None:
    """llhttp would wait for the Content-Length bytes a HEAD answer never has."""
    head = b"HEAD /x HTTP/1.1\r\nhost: up\r\n\r\n"
    async with (
        Upstream(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")) as up,
        pooled() as pool,
    ):
        for _ in range(2):
            ex = await asyncio.wait_for(pool.request(UPSTREAM, up.port, head, b""), WAIT)
            assert (ex.status, ex.content_length) == (200, 5)
            assert await asyncio.wait_for(ex.read(1 << 16), WAIT) == (b"", True)
            ex.release()
        assert [r.method for r in up.requests] == [b"HEAD", b"HEAD"]


async def test_a_101_from_upstream_is_an_upstream_error_not_a_loop_error() -> None:
    contexts: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: contexts.append(ctx))
    switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
    async with Upstream(answering(switch)) as up, pooled() as pool:
        with pytest.raises(UpstreamError):
            await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        await wait_for(up.eof)
    assert contexts == []


async def test_an_early_answer_does_not_return_the_connection_to_the_pool() -> None:
    """Answered before the body was written: the rest is still queued on the connection."""
    big = b"x" * (32 << 20)  # more than the socket buffers hold

    async def early(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        if up.accepted > 1:
            await answering(http(200, b"ok"))(up, requests, writer)
            return
        await requests._reader.readuntil(b"\r\n\r\n")  # the head only, never the body
        writer.write(http(200, b"early"))
        await writer.drain()
        await asyncio.Event().wait()  # open, not reading

    async with Upstream(early) as up, pooled() as pool:
        ex = await pool.request(UPSTREAM, up.port, upstream_head(b"/big", big), big)
        assert await ex.read(1 << 16) == (b"early", True)
        ex.release()
        ex = await asyncio.wait_for(pool.request(UPSTREAM, up.port, upstream_head(), b""), WAIT)
        assert await ex.read(1 << 16) == (b"ok", True)
        ex.release()
        assert up.accepted == 2


async def test_a_finished_exchange_is_not_closed_by_the_read_timeout_before_release() -> None:
    async with Upstream(answering(http(200, b"ok"))) as up, pooled(read_timeout=0.5) as pool:
        for slow in (True, False):
            ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
            assert await ex.read(1 << 16) == (b"ok", True)
            if slow:
                await asyncio.sleep(1.0)  # the caller is slow to release a complete exchange
            ex.release()
        assert up.accepted == 1


async def test_cancelled_just_as_the_connect_completes_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client leaves in the loop iteration where the connect completes."""
    loop = asyncio.get_running_loop()
    real = loop.create_connection
    sending: asyncio.Task[Exchange] | None = None

    async def connect_then_cancelled(*args: Any, **kwargs: Any) -> Any:
        transport, protocol = await real(*args, **kwargs)
        assert sending is not None
        loop.call_soon(sending.cancel)
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            transport.close()
            raise
        return transport, protocol

    async with Upstream(answering(http(200, b"ok"))) as up, pooled() as pool:
        monkeypatch.setattr(loop, "create_connection", connect_then_cancelled)
        sending = asyncio.create_task(pool.request(UPSTREAM, up.port, upstream_head(), b""))
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(sending, WAIT)
        await wait_for(up.eof)
        assert up.requests == []  # never sent


async def test_stop_cuts_a_busy_connection_whose_client_reads_nothing() -> None:
    """close() would wait for the write buffer to drain: the handler was never cancelled."""
    handler = Stuck(flood=True)
    server = Server(handler)
    port = await server.start(HOST, 0)
    try:
        async with connect(port, rcvbuf=4096) as w:
            await w.send(get("/stuck"))
            await wait_for(handler.started)
            await server.stop(0.1)
            await wait_for(handler.cancelled)
    finally:
        await server.stop(0)


async def test_an_idle_connection_whose_client_reads_nothing_is_cut_by_the_sweep() -> None:
    async def handler(_: Request, reply: Reply) -> None:
        reply.send(Response(200, b"x" * (32 << 20)))  # answered; the body waits in the buffer

    async with (
        serving(handler, Limits(keepalive_timeout=0.2)) as (server, port),
        connect(port, rcvbuf=4096) as w,
    ):
        await w.send(get("/"))

        async def gone() -> None:
            while True:  # polled: the sweep has no event to wait for
                if not server.connections:
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(gone(), WAIT)  # not kept open (and its buffer) forever


@pytest.mark.parametrize("size", [100, 300 << 10], ids=["peeked-whole", "larger-than-the-peek"])
async def test_a_peeked_503_can_be_spliced_whole(size: int) -> None:
    """A 503 larger than the caller's peek is relayed in full, not cut at the peek."""
    payload = random.Random(5).randbytes(size)
    peek = 1000
    first = payload[: peek + 1]  # all of a small one; one byte more than the peek of a large one

    async def busy(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        while await requests.next() is not None:
            writer.write(b"HTTP/1.1 503 Busy\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(chunk(first))
            if len(first) < size:
                await writer.drain()
                await up.gate.wait()  # the rest only once the caller has peeked
                writer.write(chunk(payload[len(first) :]))
            writer.write(b"0\r\n\r\n")

    async def handler(request: Request, reply: Reply) -> None:
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"", sink=reply)
        try:
            peeked.append(await ex.read(peek))
            up.gate.set()
            ex.splice()
            await ex.finished()
        finally:
            ex.release()

    peeked: list[tuple[bytes, bool]] = []
    async with (
        Upstream(busy) as up,
        pooled() as pool,
        serving(handler) as (_, port),
        connect(port) as w,
    ):
        for _ in range(2):
            await w.send(get("/"))
            r = await w.response()
            assert (r.status, r.reason, r.body) == (503, b"Busy", payload)
        assert up.accepted == 1  # completed and reusable
    assert peeked[0] == (payload[:peek], size <= peek)


async def test_a_trailer_that_never_ends_is_431_not_buffered_forever() -> None:
    head = get("/", "Transfer-Encoding: chunked", method="POST")
    assert await endless_line_status(head + chunk(b"abc") + b"0\r\nX-Endless: ") == 431


async def test_a_slowly_trickled_body_is_not_mistaken_for_trailers() -> None:
    body = b"".join(chunk(b"%d" % (i % 10)) for i in range(400))
    async with serving(echo, Limits(max_head=1024)) as (_, port), connect(port) as w:
        await w.send(get("/", "Transfer-Encoding: chunked", method="POST"))
        for i in range(0, len(body), 7):  # many small reads, some without body bytes
            await w.send(body[i : i + 7])
            await asyncio.sleep(0.001)
        await w.send(b"0\r\nX-T: 1\r\n\r\n")
        r = await w.response()
    assert (r.status, r.body) == (200, b"/:" + b"".join(b"%d" % (i % 10) for i in range(400)))


async def test_a_response_whose_head_cannot_be_built_is_500_not_a_cut() -> None:
    async def handler(request: Request, reply: Reply) -> None:
        if request.path == "/bad":
            reply.send(Response(200, b"{}", (("x-echo", "a\r\nx-injected: 1"),)))
        await echo(request, reply)

    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(get("/bad"))
        r = await w.response()
        assert r.status == 500 and r.header("x-injected") is None
        await w.send(get("/ok"))  # and the connection keeps serving
        assert (await w.response()).body == b"/ok:"


async def test_a_pooled_connection_the_upstream_closed_is_never_a_connect_error() -> None:
    """The retry rule's premise: ConnectError only when not one byte was written. A pooled
    connection the upstream closed while idle is skipped (a new one is opened); one it closes
    after our request was written is an UpstreamError (final), never a ConnectError."""

    async def once(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(http(200, b"ok"))  # keep-alive promised...
        await writer.drain()
        if up.accepted == 1:
            return  # ...and closed while idle
        await requests.next()  # the reused connection: read the request, close unanswered

    async with Upstream(once) as up, pooled() as pool:
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        assert await ex.read(100) == (b"ok", True)
        ex.release()

        async def dropped() -> None:  # the FIN reached the pool (polled: no event for it)
            while True:
                if not any(pool._idle.values()):
                    return
                await asyncio.sleep(0.01)

        await asyncio.wait_for(dropped(), WAIT)
        ex = await pool.request(UPSTREAM, up.port, upstream_head(), b"")
        assert await ex.read(100) == (b"ok", True)
        ex.release()
        assert up.accepted == 2  # the closed one was not reused
        with pytest.raises(UpstreamError) as info:
            await pool.request(UPSTREAM, up.port, upstream_head(b"/second", b"x"), b"x")
        assert not isinstance(info.value, ConnectError)
        assert up.accepted == 2 and up.requests[-1].path == b"/second"  # it was written


# -- request-path bounds: time, chunk count, the buffering budget, transfer codings ------------


async def budget_at(server: Server, used: int) -> None:
    """Wait (bounded) until the server's buffering budget shows `used` bytes."""

    async def poll() -> None:
        while server.budget.used != used:  # noqa: ASYNC110 - the budget has no event
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), WAIT)


async def test_a_head_that_does_not_arrive_in_time_is_408_even_if_it_trickles() -> None:
    """The whole head has `header_timeout` (nginx's client_header_timeout): a byte now and then
    does not keep a request head open (slowloris)."""
    rejected: list[int] = []
    limits = Limits(header_timeout=0.3)
    async with (
        serving(echo, limits, on_reject=lambda _p, s: rejected.append(s)) as (_, port),
        connect(port) as w,
    ):

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in b"GET / HTTP/1.1\r\nHost: h1.test\r\nX-Slow: " + b"v" * 200:
                    await w.send(bytes([byte]))
                    await asyncio.sleep(0.02)

        sender = asyncio.create_task(trickle())
        try:
            r = await w.response()
        finally:
            sender.cancel()
        assert r.status == 408 and r.header("connection") == "close"
        assert r.json()["error"]["code"] == 408
        assert await w.eof() == b""
    assert rejected == [408]


async def test_a_body_that_stops_arriving_is_408_and_its_bytes_are_released() -> None:
    handled: list[bytes] = []

    async def handler(request: Request, reply: Reply) -> None:
        handled.append(request.body)
        await echo(request, reply)

    async with (
        serving(handler, Limits(body_timeout=0.3)) as (server, port),
        connect(port) as w,
    ):
        await w.send(get("/up", "Content-Length: 100", method="POST") + b"x" * 9)
        await budget_at(server, 9)
        r = await w.response()  # then silence
        assert r.status == 408 and r.header("connection") == "close"
        assert await w.eof() == b""
        assert server.budget.used == 0
    assert handled == []


async def test_a_slow_body_that_keeps_progressing_is_not_timed_out() -> None:
    """The body timeout is for no progress (nginx's client_body_timeout), not the whole body."""
    async with serving(echo, Limits(body_timeout=0.3)) as (_, port), connect(port) as w:
        await w.send(get("/up", "Content-Length: 12", method="POST"))
        for _ in range(12):  # 12 x 0.1 s: four timeouts' worth in total
            await w.send(b"x")
            await asyncio.sleep(0.1)
        r = await w.response()
        assert (r.status, r.body) == (200, b"/up:" + b"x" * 12)


async def test_too_many_chunks_is_413() -> None:
    rejected: list[int] = []
    async with (
        serving(echo, Limits(max_chunks=10), on_reject=lambda _p, s: rejected.append(s)) as (
            _,
            port,
        ),
        connect(port) as w,
    ):
        await w.send(get("/c", "Transfer-Encoding: chunked", method="POST"))
        with contextlib.suppress(ConnectionError):
            await w.send(b"".join(chunk(b"a") for _ in range(11)))
        r = await w.response()
        assert r.status == 413 and r.header("connection") == "close"
    assert rejected == [413]


async def test_one_byte_chunks_are_buffered_compactly() -> None:
    """A body sent in one-byte chunks costs about its size, not a Python object per byte."""
    import tracemalloc

    size = 40_000
    payload = get("/c", "Transfer-Encoding: chunked", method="POST")
    payload += b"".join(chunk(b"%d" % (i % 10)) for i in range(size)) + b"0\r\n\r\n"
    growth: list[int] = []

    async def handler(request: Request, reply: Reply) -> None:
        growth.append(tracemalloc.get_traced_memory()[0] - baseline)
        assert len(request.body) == size and request.charged == size
        await echo(request, reply)

    async with (
        serving(handler, Limits(max_chunks=size + 1)) as (server, port),  # + the last chunk
        connect(port) as w,
    ):
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            await w.send(payload)
            r = await w.response()
        finally:
            tracemalloc.stop()
        assert r.status == 200 and len(r.body) == len(b"/c:") + size
        assert server.budget.used == 0  # released when the handler ended
    # Old code: a list of 40k one-byte bytes objects, ~40 bytes of heap per body byte.
    assert growth and growth[0] < 4 * size, growth


async def test_the_buffering_budget_is_shared_by_all_connections_and_released() -> None:
    gate = asyncio.Event()

    async def handler(request: Request, reply: Reply) -> None:
        await gate.wait()
        await echo(request, reply)

    rejected: list[int] = []
    limits = Limits(max_buffered=1000)
    async with (
        serving(handler, limits, on_reject=lambda _p, s: rejected.append(s)) as (server, port),
        connect(port) as first,
        connect(port) as second,
    ):
        await first.send(post("/a", b"a" * 600))  # complete; held by its handler
        await budget_at(server, 600)
        await second.send(get("/b", "Content-Length: 600", method="POST") + b"b" * 300)
        await budget_at(server, 900)
        with contextlib.suppress(ConnectionError):
            await second.send(b"b" * 300)  # past the budget
        r = await second.response()
        assert r.status == 503 and r.header("retry-after") == "1"
        assert r.header("connection") == "close"
        assert server.budget.used == 600  # the refused body's bytes were given back
        gate.set()
        assert (await first.response()).body == b"/a:" + b"a" * 600
        await budget_at(server, 0)
    assert rejected == [503]


@pytest.mark.parametrize(
    ("codings", "status"),
    [
        (["x, chunked"], 501),
        (["gzip, chunked"], 501),
        (["x", "chunked"], 501),  # the same list over two header lines
        (["chunked, chunked"], 400),
    ],
)
async def test_transfer_codings_other_than_chunked_are_refused(
    codings: list[str], status: int
) -> None:
    """RFC 9112 §6.1: a coding the server does not understand is 501, never read as chunked
    (an intermediary that disagrees about where the body ends is how requests get smuggled)."""
    handled: list[bytes] = []

    async def handler(request: Request, reply: Reply) -> None:
        handled.append(request.body)
        await echo(request, reply)

    async with serving(handler) as (_, port), connect(port) as w:
        extra = [f"Transfer-Encoding: {c}" for c in codings]
        await w.send(get("/c", *extra, method="POST") + chunk(b"abc") + b"0\r\n\r\n")
        r = await w.response()
        assert r.status == status and r.header("connection") == "close"
        assert await w.eof() == b""
    assert handled == []


async def test_a_head_refused_by_on_head_is_answered_before_the_body_is_read() -> None:
    seen: list[tuple[str, bytes]] = []
    handled: list[str] = []

    def on_head(request: Request) -> Response | None:
        seen.append((request.path, request.body))
        if request.header("Authorization") != "Bearer ok":
            return Response(401, b'{"error": "no"}')
        return None

    async def handler(request: Request, reply: Reply) -> None:
        handled.append(request.path)
        await echo(request, reply)

    async with serving(handler, on_head=on_head) as (server, port):
        async with connect(port) as w:
            # 16 MiB announced, none sent: the answer comes from the head alone.
            await w.send(get("/denied", f"Content-Length: {16 << 20}", method="POST"))
            r = await w.response()
            assert (r.status, r.body) == (401, b'{"error": "no"}')
            assert r.header("connection") == "close"
            with contextlib.suppress(ConnectionError):
                await w.send(b"x" * 100_000)  # what it sends anyway is dropped
            assert await w.eof() == b""
            assert server.budget.used == 0
        async with connect(port) as w:
            await w.send(post("/ok", b"body", "Authorization: Bearer ok"))
            assert (await w.response()).body == b"/ok:body"
            await w.send(get("/no-body"))  # no body to protect: the handler decides
            assert (await w.response()).body == b"/no-body:"
    assert seen == [("/denied", b""), ("/ok", b"")]
    assert handled == ["/ok", "/no-body"]


async def test_reserve_charges_the_budget_until_the_handler_ends() -> None:
    answers: list[bool] = []

    async def handler(request: Request, reply: Reply) -> None:
        answers.append(request.reserve(500))
        answers.append(request.reserve(500))  # 4 + 500 + 500 > 1000
        assert server.budget.used == 504
        await echo(request, reply)

    async with serving(handler, Limits(max_buffered=1000)) as (server, port), connect(port) as w:
        await w.send(post("/r", b"body"))
        assert (await w.response()).status == 200
        await budget_at(server, 0)
    assert answers == [True, False]


# -- the same on uvloop (the gateway's event loop) ------------------------------------------------


async def _uvloop_backpressure() -> None:
    await test_backpressure_a_large_body_to_a_slow_client_arrives_intact(0.2)


async def _uvloop_cut_short() -> None:
    await test_an_upstream_body_cut_short_cuts_the_client_connection(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"a" * 40
    )


async def _uvloop_leave() -> None:
    await test_a_client_that_leaves_cancels_its_handler("close")


async def _uvloop_splice_503() -> None:
    await test_a_peeked_503_can_be_spliced_whole(300 << 10)


@pytest.mark.parametrize(
    "case",
    [
        test_simple_reply_has_status_length_date_and_json_body,
        test_pipelined_requests_are_answered_in_order_one_at_a_time,
        test_expect_100_continue_is_answered_before_the_body_is_sent,
        test_a_streamed_reply_is_chunked_and_each_write_goes_out_at_once,
        test_a_header_that_never_ends_is_431_not_buffered_forever,
        test_a_503_is_buffered_for_read_and_never_spliced,
        test_a_streamed_upstream_is_spliced_intact_and_as_it_comes,
        test_a_head_without_body_bytes_reaches_the_client_at_once,
        test_upstream_timeout_when_the_upstream_never_answers,
        _uvloop_leave,
        _uvloop_cut_short,
        _uvloop_backpressure,
        test_bad_bytes_pipelined_behind_requests_get_400_after_their_answers,
        test_a_trailer_that_never_ends_is_431_not_buffered_forever,
        test_a_close_delimited_body_cut_by_a_reset_is_not_complete,
        test_a_101_from_upstream_is_an_upstream_error_not_a_loop_error,
        test_the_answer_to_a_head_request_has_no_body,
        test_an_early_answer_does_not_return_the_connection_to_the_pool,
        test_stop_cuts_a_busy_connection_whose_client_reads_nothing,
        test_an_idle_connection_whose_client_reads_nothing_is_cut_by_the_sweep,
        _uvloop_splice_503,
        test_a_head_that_does_not_arrive_in_time_is_408_even_if_it_trickles,
        test_a_body_that_stops_arriving_is_408_and_its_bytes_are_released,
        test_the_buffering_budget_is_shared_by_all_connections_and_released,
        test_a_head_refused_by_on_head_is_answered_before_the_body_is_read,
        test_a_pooled_connection_reset_under_an_unread_request_sends_it_again,
        test_a_pooled_connection_closed_after_its_request_was_read_is_final,
    ],
    ids=lambda case: case.__name__.removeprefix("test_").removeprefix("_uvloop_"),
)
def test_on_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await case()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


# -- the send timeout: a client that stops reading is cut ---------------------------------------


async def test_a_client_that_stops_reading_is_cut_after_the_send_timeout() -> None:
    """The stall pauses the upstream and its read timeout; the send timeout is what ends it."""
    handler = Stuck(flood=True)
    async with (
        serving(handler, Limits(send_timeout=0.3)) as (server, port),
        connect(port, rcvbuf=4096) as w,
    ):
        await w.send(get("/stuck"))
        await wait_for(handler.cancelled)  # the handler stops (its upstream with it)
        assert not server.connections


async def test_a_stalled_client_mid_stream_closes_the_upstream_connection() -> None:
    """Through the splice: the engine's request is not kept open for a client that left."""

    async def endless(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(chunk(b"data: tok\n\n" * 1024))
                await writer.drain()
        except ConnectionError:
            up.eof.set()  # the relay closed the upstream connection
            raise

    async with (
        Upstream(endless) as up,
        pooled() as pool,
        serving(Relay(pool, up.port), Limits(send_timeout=0.3)) as (server, port),
        connect(port, rcvbuf=4096) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        await wait_for(up.eof)
        assert not server.connections


async def test_a_slow_client_that_keeps_reading_is_not_cut() -> None:
    """Paused and resumed again and again, each pause shorter than the send timeout."""
    payload = _big_body()
    async with (
        Upstream(_bulk(payload)) as up,
        pooled() as pool,
        serving(relay := Relay(pool, up.port), Limits(send_timeout=0.5)) as (_, port),
        connect(port, rcvbuf=1 << 16) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        r = await w.response()
    assert hashlib.sha256(r.body).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert relay.errors == []


async def test_a_sent_204_has_no_content_length_and_no_body() -> None:
    """RFC 9110 §8.6: a 204 carries no Content-Length; the connection stays in step."""

    async def handler(request: Request, reply: Reply) -> None:
        reply.send(Response(204, b"") if request.path == "/none" else Response(200, b"ok"))

    async with serving(handler) as (_, port), connect(port) as w:
        await w.send(get("/none"))
        r = await w.response()
        assert (r.status, r.body, r.header("content-length")) == (204, b"", None)
        await w.send(get("/next"))
        assert (await w.response()).body == b"ok"


async def test_failing_error_factory_and_reject_hook_still_answer() -> None:
    """The embedder's hooks are its code: their bugs fall back to a plain answer, not a cut."""

    def make_error(_status: int, _message: str) -> Response:
        raise RuntimeError("bug in the embedder's error body")

    def on_reject(_path: str, _status: int) -> None:
        raise RuntimeError("bug in the embedder's reject hook")

    async def handler(_: Request, __: Reply) -> None:
        raise RuntimeError("handler bug")

    async with serving(handler, make_error=make_error, on_reject=on_reject) as (_, port):
        async with connect(port) as w:
            await w.send(get("/boom"))
            r = await w.response()
            assert r.status == 500
            await w.send(get("/again"))  # and the connection still serves
            assert (await w.response()).status == 500
        async with connect(port) as w:
            await w.send(b"GARBAGE\r\n\r\n")
            assert (await w.response()).status == 400


async def test_a_client_draining_slowly_for_longer_than_the_send_timeout_is_not_cut() -> None:
    """The timeout is for no progress at all, not for the whole drain (nginx's send_timeout):
    8 MiB taken 256 KiB at a time takes well over the timeout, with progress all along."""
    size = 8 << 20

    async def handler(_: Request, reply: Reply) -> None:
        reply.send(Response(200, b"y" * size))  # all buffered at once: paused until drained

    async with (
        serving(handler, Limits(send_timeout=1.0)) as (server, port),
        connect(port, rcvbuf=1 << 16) as w,
    ):
        await w.send(get("/slow"))
        got = 0
        while got < size:
            data = await asyncio.wait_for(w.reader.read(256 << 10), WAIT)
            assert data, f"cut after {got} bytes"
            got += len(data)
            await asyncio.sleep(0.05)
        assert server.connections  # still open, ready for the next request


# -- whole: the caller wakes once, when the spliced answer is complete ---------------------------

FRAMED: dict[str, Any] = {"header_filter": drop_framing}


async def test_whole_returns_once_the_spliced_answer_is_complete_and_streams_meanwhile() -> None:
    returned: list[tuple[bool, bool]] = []

    async def handler(request: Request, reply: Reply) -> None:
        head = upstream_head(request.path.encode(), request.body)
        ex = await pool.request(
            UPSTREAM, up.port, head, request.body, sink=reply, whole=True, **FRAMED
        )
        returned.append((ex.complete, ex.head_at > 0))
        await ex.finished()  # at once: nothing left to wait for
        ex.release()

    async def stream(up: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        while await requests.next() is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"one"))
            await up.gate.wait()
            writer.write(chunk(b"two") + b"0\r\n\r\n")

    async with (
        Upstream(stream) as up,
        pooled() as pool,
        serving(handler) as (_, port),
        connect(port) as w,
    ):
        for n in range(2):
            up.gate.clear()
            await w.send(post("/v1/x", b"{}"))
            await w.until(lambda: w.partial_body() == b"one")  # spliced as it comes
            assert len(returned) == n  # ...while the request has not returned
            up.gate.set()
            r = await w.response()
            assert r.body == b"onetwo"
        assert up.accepted == 1  # complete, so pooled again
    assert returned == [(True, True)] * 2


@pytest.mark.parametrize(
    "cut",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"a" * 40,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"a" * 40),
    ],
    ids=["content-length", "chunked"],
)
async def test_whole_returns_an_answer_cut_short_and_finished_raises(cut: bytes) -> None:
    # The head went out: the caller must get the exchange (its reply started), not an error
    # it would answer with a second response.
    outcome: list[str] = []

    async def handler(request: Request, reply: Reply) -> None:
        ex = await pool.request(
            UPSTREAM, up.port, upstream_head(), b"", sink=reply, whole=True, **FRAMED
        )
        try:
            await ex.finished()
            outcome.append("finished")
        except UpstreamError:
            outcome.append(f"raised, started={reply.started}")
            reply.abort()
        finally:
            ex.release()

    async def cut_short(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        await requests.next()
        writer.write(cut)
        await writer.drain()
        writer.close()

    async with (
        Upstream(cut_short) as up,
        pooled() as pool,
        serving(handler) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        with pytest.raises(IncompleteResponse) as info:
            await w.response()
    partial = info.value.partial
    assert partial is not None and partial.status == 200 and partial.body == b"a" * 40
    assert outcome == ["raised, started=True"]


async def test_whole_still_returns_a_buffered_status_at_its_head() -> None:
    refusal = json.dumps({"error": {"code": "queue_full", "message": "full"}}).encode()
    seen: list[tuple[int, bool, tuple[bytes, bool]]] = []

    async def handler(request: Request, reply: Reply) -> None:
        ex = await pool.request(
            UPSTREAM, up.port, upstream_head(), b"", sink=reply, whole=True, **FRAMED
        )
        seen.append((ex.status, reply.started, await ex.read(1 << 16)))
        ex.release()
        reply.send(Response(200, b"retried elsewhere", content_type="text/plain"))

    async with (
        Upstream(answering(http(503, refusal, "content-type: application/json"))) as up,
        pooled() as pool,
        serving(handler) as (_, port),
        connect(port) as w,
    ):
        await w.send(get("/"))
        r = await w.response()
        assert (r.status, r.body) == (200, b"retried elsewhere")
    assert seen == [(503, False, (refusal, True))]
