"""The HTTP/1.1 server side: one protocol per connection, one handler task per request.

Semantics a proxy needs:
  - requests on a connection are answered in order: at most `max_pipelined` wait parsed
    behind the one answered, the next is taken only once the client's socket buffer has
    room (a client that reads no answers costs a buffer's worth), and what comes meanwhile
    is read ahead unparsed, up to a head's worth, so that a client that leaves is seen;
  - a client that disconnects (or half-closes: like nginx, EOF means the client left) cancels
    its handler, so a held request leaves its queue and an upstream request is aborted, also
    with more requests pipelined behind it;
  - the body is bounded while it arrives (413 from Content-Length alone, before reading it),
    the request line and headers too (431), malformed framing is a 400 and the connection is
    closed, `Expect: 100-continue` is answered;
  - time and memory are bounded per request and in total: a head must arrive within
    `header_timeout` and a body may not stall for `body_timeout` (408, nginx's
    client_header_timeout / client_body_timeout); chunk data is kept in one buffer and the
    number of chunks is bounded; the bytes of bodies held across all connections have one
    budget (503 past it); a request the embedder refuses from its head (`on_head`) is answered
    before its body is read, and the body is never buffered;
  - only the `chunked` transfer coding is understood; any other is refused (501, RFC 9112
    §6.1), so no intermediary can disagree with us about where a body ends;
  - a response head is written together with the first body bytes when they are already
    there (one syscall), else on its own so clients see it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import cast

import httptools

from .wire import (
    DateHeader,
    ErrorFactory,
    RawHeaders,
    Response,
    find_header,
    header_lines,
    plain_error,
    raw_header_lines,
    status_line,
)

log = logging.getLogger(__name__)

Handler = Callable[["Request", "Reply"], Awaitable[None]]
# (path, status) of a request the server refused before any handler saw it.
RejectHook = Callable[[str, int], None]
# Asked once a request with a body has its head (its `body` still empty): an answer given here
# is sent at once and the body is never read (the connection then closes). None = read on.
HeadCheck = Callable[["Request"], "Response | None"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_NO_BODY = frozenset({204, 304})
_VERSIONS = frozenset({"1.0", "1.1"})  # what a request line may name (llhttp takes more)
_COPY_LIMIT = 1 << 16  # larger chunks go out by writelines, not copied into one buffer


@dataclass(frozen=True)
class Limits:
    max_body: int = 32 << 20
    max_head: int = 64 << 10  # request line + headers, bytes
    max_headers: int = 128
    keepalive_timeout: float = 75.0  # idle client connections (aiohttp's and nginx's default)
    # The whole request head must arrive within this (nginx's client_header_timeout), and a
    # body may go this long without a byte (client_body_timeout): 408, then close. None = none.
    header_timeout: float | None = 60.0
    body_timeout: float | None = 60.0
    max_chunks: int = 1 << 17  # chunks of one body, the last (empty) one included
    # Requests parsed and waiting behind the one being answered (llhttp parses a whole read:
    # one read of tiny pipelined requests would otherwise be thousands of Request objects).
    # Past it: 400 after the answers to those before, then close.
    max_pipelined: int = 128
    # Bytes of request bodies held at once across every connection (received, queued or being
    # handled); a body that would pass it is refused 503. None = no budget.
    max_buffered: int | None = 256 << 20
    # After a refusal, the rest of an upload is read and dropped for up to this long before
    # the connection closes, so the client reads the answer instead of a reset.
    linger: float = 2.0
    # A client that takes nothing from a full buffer this long is cut (nginx's
    # send_timeout). While the buffer is full the upstream is paused, and its read timeout
    # with it: this bound is what frees the handler, the upstream connection and the
    # engine's request of a client that keeps TCP open but never reads. None = no bound.
    send_timeout: float | None = 60.0


class Budget:
    """Bytes of request bodies held in memory across all connections, against one cap."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.limit is not None and self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class Request:
    __slots__ = (
        "_budget",
        "body",
        "charged",
        "headers",
        "keep_alive",
        "method",
        "path",
        "peer",
        "query",
        "version",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        version: str,
        headers: RawHeaders,
        body: bytes,
        peer: str | None,
        keep_alive: bool,
        budget: Budget | None = None,
    ) -> None:
        self.method, self.path, self.query, self.version = method, path, query, version
        self.headers, self.body, self.peer, self.keep_alive = headers, body, peer, keep_alive
        self._budget = budget
        self.charged = 0  # bytes this request holds against the server's budget

    def reserve(self, n: int) -> bool:
        """Charge `n` more bytes (a decoded copy of the body, say) to the server's budget for
        as long as this request is handled; False when the budget cannot take them."""
        if self._budget is None:
            return True
        if not self._budget.take(n):
            return False
        self.charged += n
        return True

    def release(self) -> None:
        if self._budget is not None and self.charged:
            self._budget.give(self.charged)
        self.charged = 0

    def header(self, name: str) -> str | None:
        value = find_header(self.headers, name.lower().encode())
        return None if value is None else value.decode("latin-1")


class Reply:
    """The answer to one request: either `send` a complete Response, or `start` + `write`* + `end`.

    `write` and `end` are plain calls (no await) so an upstream protocol can splice into them
    from its callbacks; `on_flow` tells it when the client's socket buffer is full, and
    `cork`/`uncork` around one upstream read make everything that read produced (head, chunks,
    the last-chunk marker) one write to the client.
    """

    __slots__ = (
        "_chunked",
        "_conn",
        "_corked",
        "_head",
        "_head_only",
        "_http11",
        "_keep_alive_10",
        "_remaining",
        "aborted",
        "close_after",
        "done",
        "status",
    )

    def __init__(self, conn: _Connection, request: Request) -> None:
        self._conn = conn
        self._head_only = request.method == "HEAD"
        self._http11 = request.version == "1.1"  # not the connection's: pipelined ones differ
        # An HTTP/1.0 client that asked for keep-alive only keeps the connection when the
        # answer says so (RFC 9112 §9.3 / RFC 2068 §19.7.1); without it the client closes
        # while we wait for its next request.
        self._keep_alive_10 = request.version == "1.0" and request.keep_alive
        self._head: bytes | None = None  # a started response's head, until it is written
        self._chunked = False
        self._remaining: int | None = None
        self._corked: list[bytes] | None = None
        self.status: int | None = None
        self.close_after = not request.keep_alive
        self.done = False
        self.aborted = False

    @property
    def started(self) -> bool:
        return self.status is not None

    @property
    def chunked(self) -> bool:
        """The started body goes out in the chunked coding (see `relay`)."""
        return self._chunked

    def send(self, resp: Response) -> None:
        assert self.status is None, "response already started"
        head = status_line(resp.status) + self._conn.date()
        if resp.content_type is not None:
            head += b"content-type: " + resp.content_type.encode("latin-1") + b"\r\n"
        head += header_lines(resp.headers)
        no_body = resp.status in _NO_BODY
        if not no_body:  # a 204 may not carry one (RFC 9110 §8.6); neither has a body
            head += b"content-length: %d\r\n" % len(resp.body)
        head += self._connection_header()
        head += b"\r\n"
        # Started only once the head is built: a header the head cannot carry (header_lines
        # raises on a line break) leaves the reply unstarted, so the server can answer 500.
        self.status = resp.status
        self._out(head if self._head_only or no_body else head + resp.body)
        self.done = True

    def start(
        self, status: int, reason: bytes | None, headers: RawHeaders, length: int | None
    ) -> None:
        """Begin a streamed answer; `headers` carry no framing (Content-Length, T-E)."""
        assert self.status is None, "response already started"
        self.status = status
        head = status_line(status, reason) + raw_header_lines(headers)
        if find_header(headers, b"date") is None:
            head += self._conn.date()
        if status in _NO_BODY:
            # No body whatever the headers say (RFC 9110 §15.3.5, §15.4.5); a 304 keeps the
            # representation's length, a 204 may not have one.
            self._head_only = True
            if length is not None and status == 304:
                head += b"content-length: %d\r\n" % length
        elif length is not None:
            head += b"content-length: %d\r\n" % length
            self._remaining = length
        elif self._head_only:
            pass  # HEAD: no body, and no framing for one
        elif self._http11:
            head += b"transfer-encoding: chunked\r\n"
            self._chunked = True
        else:  # an HTTP/1.0 client: the end of the body is the end of the connection
            self.close_after = True
        head += self._connection_header()
        self._head = head + b"\r\n"

    def _connection_header(self) -> bytes:
        if self.close_after:
            return b"connection: close\r\n"
        return b"connection: keep-alive\r\n" if self._keep_alive_10 else b""

    def flush_head(self) -> None:
        """Send a started head now, without waiting for body bytes to go with it."""
        if self._head is not None:
            head, self._head = self._head, None
            self._out(head)

    def write(self, chunk: bytes) -> None:
        # Called once per upstream chunk, usually from inside a cork (the upstream's read):
        # one piece appended per chunk, no further calls.
        if not chunk or self.done or self._head_only:
            return
        size = len(chunk)
        if self._chunked:
            if size > _COPY_LIMIT:  # not copied: size line, chunk and CRLF go by writelines
                outer = self._corked is not None
                self.cork()
                self.flush_head()
                self._out(b"%x\r\n" % size)
                self._out(chunk)
                self._out(b"\r\n")
                if not outer:
                    self.uncork()
                return
            data = b"%x\r\n%b\r\n" % (size, chunk)
        else:
            if self._remaining is not None:
                self._remaining -= size
            data = chunk
        corked = self._corked
        if corked is None:
            if self._head is None:
                self._conn.write(data)
                return
            corked = self._corked = []  # the head and these bytes in one write
            outer = False
        else:
            outer = True
        head = self._head
        if head is not None:
            self._head = None
            corked.append(head)
        corked.append(data)
        if not outer:
            self.uncork()

    def relay(self, data: bytes, last: bool) -> None:
        """Body bytes already in this reply's framing, passed on as they are: a `chunked`
        reply's chunks as an upstream framed them (llhttp checked them), the last chunk
        with `last` (which ends the reply, as `end` would). One piece per upstream read."""
        if self.done:
            return
        self.done = last
        if self._head is not None:
            self.flush_head()  # corked (the upstream's read): the head and these bytes together
        if data:
            self._out(data)

    def end(self) -> None:
        if self.done:
            return
        self.cork()
        self.flush_head()
        if self._chunked:
            self._out(_LAST_CHUNK)
        self.done = True
        self.uncork()
        if self._remaining is not None and self._remaining != 0 and not self._head_only:
            self.abort()  # the upstream's body did not match its Content-Length
        elif self.close_after and not self._chunked and self._remaining is None:
            self._conn.close()  # close-delimited body: the close is the end

    def abort(self) -> None:
        """Cut the connection: a started response that cannot be completed must look incomplete."""
        self._corked = None
        self._head = None
        self.aborted = True
        self.done = True
        self._conn.close()

    def cork(self) -> None:
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked:
            if len(corked) == 1:
                self._conn.write(corked[0])
            elif sum(map(len, corked)) > _COPY_LIMIT:
                self._conn.writelines(tuple(corked))
            else:
                self._conn.write(b"".join(corked))

    def _out(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        else:
            self._conn.write(data)

    def on_flow(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._conn.flow = (pause, resume)
        if self._conn.write_paused:
            pause()

    def clear_flow(self) -> None:
        self._conn.flow = None


class _Reject(Exception):
    def __init__(self, status: int, message: str, response: Response | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.response = status, message, response


class _Connection(asyncio.Protocol):
    def __init__(
        self,
        server: Server,
        handler: Handler,
        limits: Limits,
        on_reject: RejectHook,
        on_head: HeadCheck | None,
    ) -> None:
        self._server, self._handler, self._limits, self._on_reject = (
            server,
            handler,
            limits,
            on_reject,
        )
        self._on_head = on_head
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._pending: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self.last_active = self._loop.time()
        # A request is being answered and others wait behind it: what the client sends meanwhile
        # is read but not parsed (_read_ahead); `_reading` is False once reading has stopped.
        self._paused_reading = False
        self._reading = True
        self._backlog = bytearray()
        self.write_paused = False
        self._write_blocked = False  # answered, the next step waits for resume_writing
        self._stall: asyncio.TimerHandle | None = None  # the send_timeout while paused
        self._stall_left = 0  # bytes buffered when that timer was armed
        self.flow: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._in_head = False  # between a request's first byte and the end of its headers
        self._heads = 0  # request heads completed on this connection
        self._raw_head = 0
        self._in_body = False  # between a request's head and its end
        self._ends = 0  # requests completed on this connection
        self._raw_tail = 0  # bytes of consecutive reads after a head that brought no body
        # A framing error behind a request still being answered: sent once that is done.
        self._refused: _Reject | None = None
        self._head_started = 0.0  # loop time of the current head's first byte
        self._timer: asyncio.TimerHandle | None = None  # header/body timeout, re-armed lazily
        self._discard = False  # refused: what the client still sends is read and dropped
        self._request: Request | None = None  # the request whose head is in, body arriving
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: RawHeaders = []
        self._head_size = 0
        # One piece kept as is; more are joined into one bytearray as they come (a list of
        # small bytes objects cost ~77 bytes per byte of a body sent in one-byte chunks).
        self._body: bytes | bytearray = b""
        self._body_size = 0
        self._charged = 0  # body bytes taken from the budget, not yet handed to a Request
        self._chunks = 0
        self._expect = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else None
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._cancel_stall()
        self._cancel_timer()
        self._transport = None
        self._server.budget.give(self._charged)
        self._charged = 0
        for request in self._pending:
            request.release()
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()  # the client left: its handler stops (queue slot, upstream)

    def eof_received(self) -> bool:
        return False  # close: a half-closed client is treated as gone (as nginx does)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._stall is None:
            self._arm_stall()
        if self.flow is not None:
            self.flow[0]()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._cancel_stall()
        if self.flow is not None:
            self.flow[1]()
        if self._write_blocked:
            self._write_blocked = False
            self._proceed()

    def _arm_stall(self) -> None:
        timeout = self._limits.send_timeout
        if timeout is not None and self._transport is not None:
            self._stall_left = self._transport.get_write_buffer_size()
            self._stall = self._loop.call_later(timeout, self._stalled)

    def _stalled(self) -> None:
        self._stall = None
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size() < self._stall_left:
            # The client took something since: slow, not stalled (nginx's send_timeout is
            # also between two successful writes, not for the whole drain).
            self._arm_stall()
            return
        # Cut, not closed: close() would wait for the very buffer that is not draining.
        # connection_lost then cancels the handler, which closes its upstream exchange.
        self.close(abort=True)

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        if self._discard:
            return  # refused: the rest of the upload is dropped until the connection closes
        if self._paused_reading:
            self._read_ahead(data)
            return
        in_head, heads = self._in_head, self._heads
        in_body, ends, body_size = self._in_body, self._ends, self._body_size
        try:
            self._parser.feed_data(data)
            if in_head and self._heads == heads:
                # All of this read was one request's head: bound it as it arrives (llhttp
                # hands a header over only once its line is complete).
                self._raw_head += len(data)
                if self._raw_head > self._limits.max_head:
                    raise _Reject(431, "The request line and headers are too large.")
            elif in_body and self._ends == ends and self._body_size == body_size:
                # The same for trailer fields (after the last chunk), which httptools also
                # buffers until their line ends, so they are bounded the same way. A read
                # that brings body bytes or ends the request resets the count.
                self._raw_tail += len(data)
                if self._raw_tail > self._limits.max_head:
                    raise _Reject(431, "The request trailers are too large.")
            else:
                self._raw_tail = 0
            if self._timer is None and (self._in_head or self._in_body):
                # Armed only when a read leaves a request unfinished: a request that arrives
                # in one read costs no timer.
                limits = self._limits
                self._arm_timer(limits.header_timeout if self._in_head else limits.body_timeout)
            if self._expect and not self._body_size and self._task is None:
                self._expect = False
                self.write(_CONTINUE)  # headers in, no body bytes yet: the client is waiting
        except _Reject as refused:
            self._refuse(refused)
        except httptools.HttpParserUpgrade:
            self._refuse(_Reject(400, "Protocol upgrades are not supported."))
        except httptools.HttpParserError as e:
            reject = e.__context__ if isinstance(e.__context__, _Reject) else None
            self._refuse(reject or _Reject(400, "Malformed HTTP request."))

    # -- llhttp callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._raw_head = 0
        self._head_started = self.last_active

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # _count_head, inlined: called for every header of every request.
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._limits.max_head:
            raise _Reject(431, "The request line and headers are too large.")
        if not self._in_head:
            # A trailer field (llhttp reports them after a chunked body with the same
            # callback). Never merge it into the header block the handler checks and
            # forwards: a trailer `Authorization` or `X-Forwarded-For` would otherwise pass
            # for a header (RFC 9110 §6.5.1). Counted above, so still bounded.
            return
        self._headers.append((name, value))
        if len(self._headers) > self._limits.max_headers:
            raise _Reject(431, "Too many request headers.")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._heads += 1
        parser = self._parser
        if parser.should_upgrade():  # else the request would run, then the close cut it
            raise _Reject(400, "Protocol upgrades are not supported.")
        # The framing headers in one pass (the first of each, as find_header; every
        # Transfer-Encoding): a length test first, since lower() allocates.
        codings: list[bytes] | None = None
        length = expect = None
        for name, value in self._headers:
            size = len(name)
            if size == 17:
                if name.lower() == b"transfer-encoding":
                    if codings is None:
                        codings = []
                    codings.append(value)
            elif size == 14:
                if length is None and name.lower() == b"content-length":
                    length = value
            elif size == 6 and expect is None and name.lower() == b"expect":
                expect = value
        version = parser.get_http_version()
        if version not in _VERSIONS:
            # llhttp takes a request line without a version as HTTP/0.9 (whose answer is a
            # bare body, no status line) and "HTTP/2.0" as text: neither client could read
            # an HTTP/1.1 answer, and neither request would pass on to the next hop as sent.
            raise _Reject(400, f"HTTP/{version} is not supported; send HTTP/1.1.")
        if version == "1.0" and codings is not None:
            # RFC 9112 §6.1: HTTP/1.0 has no chunked framing; such a message's framing is
            # faulty (a classic smuggling vector between hops that disagree). llhttp would
            # decode it as chunked.
            raise _Reject(400, "Transfer-Encoding is not allowed in HTTP/1.0.")
        chunked = codings is not None and _check_codings(codings)
        url = httptools.parse_url(self._url)
        query = url.query
        request = self._request = Request(
            parser.get_method().decode("latin-1"),
            (url.path or b"/").decode("latin-1"),
            query.decode("latin-1") if query else "",
            version,
            self._headers,
            b"",
            self._peer,
            parser.should_keep_alive(),
            self._server.budget,
        )
        self._cancel_timer()  # the head's; the body's is armed if this read leaves it short
        if self._on_head is not None and (chunked or (length is not None and int(length) > 0)):
            # Before the body's own bound: a request refused for its head (a wrong key, a path
            # not served) is told so whatever its size, as the origin would tell it.
            answer = self._on_head(request)
            if answer is not None:
                self._expect = False  # the body is not wanted
                raise _Reject(answer.status, "", answer)
        if length is not None and int(length) > self._limits.max_body:  # llhttp checked digits
            raise _Reject(413, "The request body is too large.")
        # Decided after this read (data_received): only a client still waiting needs it.
        self._expect = expect is not None and expect.lower() == b"100-continue"

    def on_chunk_header(self) -> None:
        self._chunks += 1
        if self._chunks > self._limits.max_chunks:
            raise _Reject(413, "The request body has too many chunks.")

    def on_body(self, body: bytes) -> None:
        size = len(body)
        self._body_size += size
        if self._body_size > self._limits.max_body:
            raise _Reject(413, "The request body is too large.")
        if not self._server.budget.take(size):
            raise _Reject(503, "The server holds too many request bodies right now; retry.")
        self._charged += size
        if not self._body:
            self._body = body
        elif isinstance(self._body, bytearray):
            self._body += body
        else:
            self._body = bytearray(self._body) + body

    def on_message_complete(self) -> None:
        self._in_body = False
        self._ends += 1
        self._cancel_timer()
        request = self._request
        assert request is not None
        self._request = None
        body = self._body
        request.body = body if isinstance(body, bytes) else bytes(body)
        request.charged, self._charged = self._charged, 0
        self._reset()
        if self._task is None:
            self._pending.append(request)
            self._next()
            return
        self._paused_reading = True  # pipelined: parse no further until it is answered
        if len(self._pending) >= self._limits.max_pipelined:
            request.release()  # refused in its turn (after those before it), never run
            raise _Reject(400, "Too many pipelined requests.")
        self._pending.append(request)

    def _read_ahead(self, data: bytes) -> None:
        """Bytes that came while a request is answered with more behind it: kept, unparsed,
        until it is answered. The connection is still read so that a client that leaves is
        seen at once (eof_received) and its handler cancelled: a held request of a client
        that is gone must stop counting as demand at once, not at its hold timeout, and
        never run. Past a head's worth, reading stops (the kernel holds the rest)."""
        self._backlog += data
        if self._reading and len(self._backlog) > self._limits.max_head:
            self._reading = False
            if self._transport is not None:
                self._transport.pause_reading()

    # -- requests ----------------------------------------------------------------------------

    def _count_head(self, n: int) -> None:
        self._head_size += n
        if self._head_size > self._limits.max_head:
            raise _Reject(431, "The request line and headers are too large.")

    def _refuse(self, reject: _Reject) -> None:
        transport = self._transport
        if transport is None or self._refused is not None:
            return
        try:
            self._on_reject(_path_of(self._url), reject.status)
        except Exception:  # a hook's bug must not cost the client its 4xx
            log.exception("on_reject hook failed")
        if self._task is not None:
            # Bad bytes pipelined behind a request still being answered: closing now would
            # cut that response (and drop the good requests queued before the bad one).
            # Parse nothing more (the parser is dead; what still comes is only read, to see
            # the client leave), answer those in order, then this error, then close
            # (_answered).
            self._refused = reject
            self._paused_reading = True
            return
        self._send_refusal(reject)

    def _send_refusal(self, reject: _Reject) -> None:
        reply = Reply(self, _closing_request(self._peer))
        resp = reject.response or self._server.error(reject.status, reject.message)
        if reject.status == 503 and not any(n.lower() == "retry-after" for n, _ in resp.headers):
            resp = replace(resp, headers=(*resp.headers, ("Retry-After", "1")))
        reply.send(resp)
        self._linger()

    def _linger(self) -> None:
        """Close after a refusal without losing the answer: our side is shut (the client reads
        the answer, then EOF), what the client still sends is dropped, and the connection is
        cut after `linger` seconds. Closing with unread bytes would make the kernel send a
        reset, which can destroy the answer before the client reads it."""
        transport = self._transport
        self._cancel_timer()
        self._server.budget.give(self._charged)
        self._charged = 0
        self._body = b""
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self._discard = True
        transport.write_eof()
        self._paused_reading = False
        self._backlog = bytearray()
        if not self._reading:
            self._reading = True
            transport.resume_reading()
        self._timer = self._loop.call_later(self._limits.linger, self.close, True)

    # -- read timeouts -----------------------------------------------------------------------

    def _arm_timer(self, delay: float | None) -> None:
        self._cancel_timer()
        if delay is not None:
            self._timer = self._loop.call_later(delay, self._read_due)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _read_due(self) -> None:
        """The head or body timer: re-armed for what is left when the client made progress
        (one timer per period, not one per read), else 408."""
        self._timer = None
        if self._transport is None or self._discard:
            return
        now = self._loop.time()
        if self._paused_reading:
            # We stopped reading (a pipelined request is being answered): not the client's
            # stall. The clock restarts when reading resumes.
            self._head_started = self.last_active = now
            limits = self._limits
            self._arm_timer(limits.header_timeout if self._in_head else limits.body_timeout)
            return
        # The head is bounded from its first byte, the body from its last progress.
        if self._in_head:
            since, bound = self._head_started, self._limits.header_timeout
            late = "The request head did not arrive in time."
        elif self._in_body:
            since, bound = self.last_active, self._limits.body_timeout
            late = "The request body stopped arriving."
        else:
            return
        if bound is None:
            return
        left = since + bound - now
        if left > 0:
            self._arm_timer(left)
        else:
            self._refuse(_Reject(408, late))

    def _next(self) -> None:
        request = self._pending.popleft()
        reply = Reply(self, request)
        self._task = self._loop.create_task(self._run(request, reply))

    async def _run(self, request: Request, reply: Reply) -> None:
        try:
            await self._handler(request, reply)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path[:200])
            if not reply.started:
                reply.send(self._server.error(500, "Internal error."))
            else:
                reply.abort()
        finally:
            self._task = None
            self.flow = None
            request.release()
        if not reply.done:  # a handler that returned without answering completely
            reply.abort()
        self._answered(reply)

    def _answered(self, reply: Reply) -> None:
        # From the end of this answer (also before a close: its tail may still be draining
        # to a slow client, and the sweep must not count the whole exchange as idle time).
        self.last_active = self._loop.time()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if reply.close_after or reply.aborted:
            transport.close()
            return
        self._proceed()

    def _proceed(self) -> None:
        """After an answer: the next pipelined request, a refusal queued behind, or reading
        on. Not while the client's socket buffer is full (resume_writing proceeds): a client
        that pipelines requests and reads no answers would otherwise have every answer to
        them buffered here, as fast as they are made, until the send timeout."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self.write_paused:
            self._write_blocked = True
            self._paused_reading = True  # meanwhile read ahead, unparsed (_read_ahead)
            return
        if self._pending:
            self._next()
            return
        if self._refused is not None:
            self._send_refusal(self._refused)
            return
        if self._expect and not self._body_size:
            # A request that arrived behind this one is waiting for `100 Continue` before it
            # sends its body (it was not sent then: a response was in flight). Without this
            # the client stalls until its own expect timeout.
            self._expect = False
            transport.write(_CONTINUE)
        if self._paused_reading:
            self._paused_reading = False
            self._head_started = self._loop.time()  # a head that waited on us starts now
            backlog, self._backlog = self._backlog, bytearray()
            if backlog:
                self.data_received(bytes(backlog))  # may pause again, or refuse and close
            if (
                not self._reading
                and len(self._backlog) <= self._limits.max_head
                and not transport.is_closing()
            ):
                self._reading = True
                transport.resume_reading()

    # -- used by Reply -----------------------------------------------------------------------

    def date(self) -> bytes:
        return self._server.date.line()

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def writelines(self, data: tuple[bytes, ...]) -> None:
        if self._transport is not None:
            self._transport.writelines(data)

    def close(self, abort: bool = False) -> None:
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()

    @property
    def closing(self) -> bool:
        return self._transport is not None and self._transport.is_closing()

    @property
    def busy(self) -> bool:
        return self._task is not None


def _path_of(url: bytes) -> str:
    """The path of a refused request's URL, for the reject hook ("" when there is none)."""
    try:
        return (httptools.parse_url(url).path or b"").decode("latin-1") if url else ""
    except httptools.HttpParserInvalidURLError:
        return ""


def _closing_request(peer: str | None) -> Request:
    return Request("GET", "/", "", "1.1", [], b"", peer, keep_alive=False)


def _check_codings(values: list[bytes]) -> bool:
    """True for a chunked body (`values`: every Transfer-Encoding field's). `chunked` is the
    only transfer coding understood: any other (`gzip, chunked`, `x, chunked`) is 501
    (RFC 9112 §6.1), and `chunked` must come once."""
    codings = [c.strip().lower() for value in values for c in value.split(b",")]
    if not codings:
        return False
    for coding in codings:
        if coding != b"chunked":
            shown = coding[:40].decode("latin-1")
            raise _Reject(501, f"Transfer-Encoding {shown!r} is not implemented.")
    if len(codings) > 1:
        raise _Reject(400, "Transfer-Encoding: chunked may be applied only once.")
    return True


class Server:
    """Serve `handler` on host:port; `stop` drains in-flight requests for up to `grace` seconds."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits | None = None,
        *,
        on_reject: RejectHook = lambda _path, _status: None,
        make_error: ErrorFactory = plain_error,
        on_head: HeadCheck | None = None,
    ) -> None:
        self._handler = handler
        self._make_error = make_error
        self._limits = limits or Limits()
        self._on_reject = on_reject
        self._on_head = on_head
        self.budget = Budget(self._limits.max_buffered)
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.connections: set[_Connection] = set()
        self.date = DateHeader()

    def error(self, status: int, message: str) -> Response:
        """The embedder's error body, or a plain one if its factory fails: an error answer
        must never be what takes a connection down."""
        try:
            return self._make_error(status, message)
        except Exception:
            log.exception("make_error(%d) failed", status)
            return plain_error(status, message)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on host:port; `reuse_port`: SO_REUSEPORT, so several processes can each
        listen on the same port and the kernel spreads new connections over them."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, self._handler, self._limits, self._on_reject, self._on_head),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        self._sweeper = loop.create_task(self._sweep_idle())
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep_idle(self) -> None:
        """Close keep-alive connections idle past the limit (one timer, not one per request)."""
        loop = asyncio.get_running_loop()
        limit = self._limits.keepalive_timeout
        while True:
            await asyncio.sleep(min(5.0, limit / 2))
            cutoff = loop.time() - limit
            for conn in list(self.connections):
                if not conn.busy and conn.last_active < cutoff:
                    # close() waits for the write buffer to drain: a client that stopped
                    # reading keeps it open forever (socket and buffer leaked). Still here a
                    # sweep after that close: cut it.
                    conn.close(abort=conn.closing)

    async def stop(self, grace: float) -> None:
        if self._server is None:
            return
        self._server.close()  # no new connections
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        deadline = asyncio.get_running_loop().time() + grace
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
        while any(c.busy for c in self.connections):
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            # Past the grace a busy connection is cut, not closed: close() waits for its
            # write buffer to drain, and with a client that is not reading its handler was
            # never cancelled (connection_lost never came).
            conn.close(abort=conn.busy)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None
