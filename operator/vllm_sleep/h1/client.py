"""The upstream side: a keep-alive connection pool and one request/response exchange at a time.

The errors say exactly how far a request got, which is what the gateway's never-send-twice
rule is built on:
  - ConnectError: the connection could not be opened; not one byte of the request was written;
  - UpstreamTimeout / UpstreamError: the request was written (it may have reached the engine).
An idle pooled connection is closed after `idle_timeout` (below the agents' 75 s keep-alive).

An upstream may still close an idle connection at any moment (it stops, it restarts), and a
request written onto it at that instant is the keep-alive race. The pool sends such a request
again, once, on a fresh connection, exactly when no byte of it can have been taken:
  - before writing onto a pooled connection, the pool asks the kernel whether it is readable:
    an idle HTTP/1.1 connection has nothing to read, so readable means the upstream's close
    (FIN or reset), or stray bytes, is already there; the connection is dropped unwritten
    (urllib3's `is_connection_dropped`, done here because the event loop may not have read
    that close yet);
  - after writing onto a pooled connection: a reset (ECONNRESET/EPIPE) before the first
    response byte means the upstream's kernel discarded bytes its process never read (a
    socket closed with unread data answers with a reset; one that read everything closes with
    a FIN, also when asyncio or libuv abort it: only SO_LINGER 0 resets regardless). Whoever upstream acts on a request only once it has all of it, as the agent does,
    never acted on this one.
A clean close (FIN) after the request was written is final: it looks the same as an upstream
that read the request and then died. Go's net/http resends that case for idempotent methods
only; every request here is a POST. A fresh connection is never retried (Go's rule too: a
server that resets a new connection is not racing a keep-alive timeout).
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable
from types import EllipsisType
from typing import cast

import httptools

from .server import Reply
from .wire import RawHeaders, find_header

_HIGH_WATER = 1 << 20  # buffered upstream body (nobody reading yet) before reading pauses
# A response's head (interim ones included), and its trailer section, may not pass this:
# httptools keeps a header line that has not ended in memory (copied again at every read), so
# an upstream that never ends one would otherwise grow the proxy's memory for as long as it
# sends. Counted over consecutive reads that bring neither the final head nor body bytes.
MAX_RESPONSE_HEAD = 64 << 10
_TOO_LARGE = "the response head or trailers are too large"


class ConnectError(Exception):
    """The connection was not opened: the request was not sent."""


class UpstreamError(Exception):
    """The exchange broke after the request was written."""


class UpstreamTimeout(UpstreamError):
    """No byte from the upstream within the read timeout."""


class _Unread(UpstreamError):
    """A pooled connection was reset before any response byte: the request was not read."""


class _Conn(asyncio.Protocol):
    """One upstream connection; llhttp callbacks drive one exchange at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool, self.key = pool, key
        # Kept: asyncio.get_running_loop() costs a getpid(2) per call on 3.11.
        self.loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.read_timeout = pool.read_timeout  # the current exchange's (UpstreamPool.request)
        self._progress = 0.0  # loop time of the last read (or write) the read timeout counts from
        self._first = False  # the exchange's first byte has a bound of its own (send)
        self.idle_since = 0.0
        self.exchange: Exchange | None = None
        self.poller: select.poll | None = None  # asks the kernel if an idle one was closed
        self._data = b""  # the read being parsed (where a head ends, for a raw relay)
        self._fresh = False  # a response began in the read being parsed
        self._bodied = False  # the read being parsed brought body bytes

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        self._cancel_timers()
        ex = self.exchange
        if ex is not None:
            ex.lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # bytes on an idle connection: not HTTP we can use
            self.close()
            return
        ex = self.exchange
        if not ex.answered:
            ex.answered = True
            if self._first:  # the first byte's own bound is over: the read timeout from here
                self._first = False
                self._cancel_timers()
        ended = ex.complete
        if not ended:  # a finished exchange waits for nothing (see on_message_complete)
            self._rearm()
        self._bodied = False
        if ex.raw:
            # A chunked body relayed as it came: llhttp parses it only for its end.
            try:
                self._parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
                self._malformed(ex, e, ended)
                return
            if not ended:  # after the end: nothing (llhttp skips CR/LF between responses)
                # A read with no body bytes that did not end it: a trailer section, most likely.
                if self._held_too_long(ex, self._bodied or ex.complete, len(data)):
                    self._malformed(ex, httptools.HttpParserError(_TOO_LARGE), ended)
                    return
                self._relay_raw(ex, data, 0)
            return
        if ex.sink is not None:
            ex.sink.cork()  # what this read produces reaches the client in one write
        self._data, self._fresh = data, False
        status = ex.status
        try:
            self._parser.feed_data(data)
            if ex.raw:  # the head ended in this read: the body bytes after it go as they came
                self._relay_raw(ex, data, ex.raw_from)
            elif self._held_too_long(
                ex, self._bodied or ex.complete or ex.status != status, len(data)
            ):
                raise httptools.HttpParserError(_TOO_LARGE)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            # HttpParserUpgrade (a 101) is not an HttpParserError: uncaught, it escaped
            # data_received and the loop logged a fatal protocol error.
            self._malformed(ex, e, ended)
        finally:
            self._data = b""
            if ex.sink is not None:
                ex.sink.flush_head()  # a head with no body bytes yet goes out on its own
                ex.sink.uncork()

    def _held_too_long(self, ex: Exchange, handed_over: bool, size: int) -> bool:
        """Whether the reads since something was last handed over (a final head, body bytes,
        the end), which httptools holds as a head or trailers still arriving, passed
        MAX_RESPONSE_HEAD; this read's `size` counted unless it `handed_over`."""
        if handed_over:
            ex.held = 0
            return False
        ex.held += size
        return ex.held > MAX_RESPONSE_HEAD

    def _malformed(self, ex: Exchange, error: Exception, ended: bool) -> None:
        ex.fail(UpstreamError(f"malformed response: {error!r}"))
        if ex.raw and ex.complete and not ended and ex.sink is not None:
            # Bytes after the end in the read that ended a raw body: where its end lies in
            # that read is unknown, so the client's answer cannot be completed exactly.
            ex.sink.abort()
        self.close()

    def _relay_raw(self, ex: Exchange, data: bytes, start: int) -> None:
        """Relay the chunked body bytes of this read, from `start`, as the upstream framed
        them: one write, no re-chunking. The read that ends the body is cut at its end."""
        piece = data[start:] if start else data
        sink = ex.sink
        assert sink is not None
        if not ex.complete:
            ex.tail = piece if len(piece) >= 8 else (ex.tail + piece)[-8:]
            sink.relay(piece, False)
            return
        size = len(piece)
        if not (size >= 5 and piece[-5] not in _CRLF and piece.endswith(b"\r\n\r\n")):
            # llhttp skips CR/LF after a message: the body ends at the CRLF CRLF after its
            # last byte that is neither (the last-chunk line's or a trailer's).
            both = ex.tail + piece
            last = len(both.rstrip(b"\r\n"))
            if both[last : last + 4] != b"\r\n\r\n" or len(both) - last - 4 >= size:
                sink.abort()  # cannot be: llhttp ended the body in this read
                return
            piece = piece[: size - (len(both) - last - 4)]
        sink.relay(piece, True)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:  # request bodies are written whole; nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # -- llhttp callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._fresh = True
        ex = self.exchange
        if ex is not None and ex.complete:
            # A second response to one request (or garbage after the first): the
            # connection is out of step. Without this the next head overwrote `status`, its
            # body joined a buffered one, and the connection went back to the pool with an
            # unasked-for response queued for the next request.
            ex.desync()
            raise UpstreamError("bytes after the end of the response")

    def on_status(self, reason: bytes) -> None:
        if self.exchange is not None:
            self.exchange.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.exchange
        if ex is not None and not ex.status:  # after the final head: a trailer, not a header
            ex.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.head_complete(self._parser.get_status_code())
            if ex.complete:  # the answer to a HEAD: see Exchange.head_complete
                self._cancel_timers()
            elif (
                self._fresh  # the head began in this read: it ends at the first CRLF CRLF
                and not ex.interim
                and ex.sink is not None
                and ex.sink.chunked
                and _chunked(ex.headers)
            ):
                # Both sides chunked: the upstream's chunks are already the client's framing.
                # llhttp requires CRLF line ends (no bare LF), so the head's end is exact.
                # Before it only CR/LF can come (llhttp skips them between responses).
                data = self._data
                ex.raw_from = data.find(b"\r\n\r\n", data.find(b"HTTP/")) + 4
                ex.raw = True

    def on_body(self, body: bytes) -> None:
        self._bodied = True  # (see data_received: reads that bring none are bounded)
        ex = self.exchange
        if ex is not None and not ex.raw:  # a raw relay writes whole reads (_relay_raw)
            sink = ex.sink
            if sink is not None:
                # Spliced (set only once the final head is in): straight to the client, one
                # call per chunk fewer. A second response never gets here (on_message_begin).
                sink.write(body)
            else:
                ex.body(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            if ex.status:  # the final response (not a 1xx) is in: nothing more to wait for
                self._cancel_timers()  # else the timer closed a finished, unreleased one
            ex.message_complete(self._parser.should_keep_alive())

    # -- used by the pool and Exchange ----------------------------------------------------------

    def send(
        self,
        exchange: Exchange,
        data: bytes,
        body: bytes,
        read_timeout: float | None,
        first_read_timeout: float | None = None,
    ) -> None:
        assert self.transport is not None
        self.exchange = exchange
        self.read_timeout = read_timeout
        if len(body) > 1 << 16:
            self.transport.writelines((data, body))
        else:
            self.transport.write(data + body)
        if first_read_timeout is None:
            self._rearm()
            return
        # Its own timer until the first byte (data_received); when due, _timed_out finds no
        # read since the write, and the read timeout (shorter, or none) has passed too.
        self._first = True
        self._cancel_timers()
        self._progress = self.loop.time()
        self._timer = self.loop.call_later(first_read_timeout, self._timed_out)

    def _rearm(self) -> None:
        """Restart the read timeout's clock. One timer per period, not one per read: a read
        only notes the time, and the timer, when due, re-arms itself for what is left."""
        timeout = self.read_timeout
        if timeout is None:
            return
        self._progress = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_later(timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        timeout = self.read_timeout
        if timeout is not None:
            left = self._progress + timeout - self.loop.time()
            if left > 0:  # a byte came since the timer was armed
                self._timer = self.loop.call_later(left, self._timed_out)
                return
        if self.exchange is not None:
            self.exchange.fail(UpstreamTimeout("the model server did not answer in time"))
        self.close()

    def idle(self) -> None:
        self.exchange = None
        self._cancel_timers()
        self.idle_since = time.monotonic()

    def _cancel_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()
        self._cancel_timers()  # not reading is our choice (a slow client), not the upstream's

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            if self.exchange is not None and not self.exchange.complete:
                self._rearm()

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size():
                # close() would first wait for the upstream to read the rest of the request,
                # forever if it stopped reading (an early answer): the socket leaked, and an
                # aborted request went on reaching the engine. Cut it now.
                transport.abort()
            else:
                transport.close()


class Exchange:
    """One request on one connection.

    With a `sink`, a response whose status is not in `buffered` is spliced into it from the
    protocol callbacks the moment its head arrives (no coroutine switch between the upstream's
    bytes and the client's); `finished()` resolves when the body is complete. A status in
    `buffered` (one the caller may want to inspect, e.g. a refusal it retries elsewhere) and
    sink-less exchanges are buffered for `read`.
    """

    __slots__ = (
        "_buffered",
        "_buffered_statuses",
        "_conn",
        "_done",
        "_error",
        "_filter",
        "_finished",
        "_head_only",
        "_reusable",
        "_reused",
        "_size",
        "_target",
        "_whole",
        "answered",
        "complete",
        "head",
        "head_at",
        "headers",
        "held",
        "interim",
        "raw",
        "raw_from",
        "reason",
        "sink",
        "status",
        "tail",
    )

    def __init__(
        self,
        conn: _Conn,
        sink: Reply | None = None,
        header_filter: Callable[[RawHeaders], RawHeaders] = lambda h: h,
        head_only: bool = False,
        buffered: frozenset[int] = frozenset({503}),
        reused: bool = False,
        whole: bool = False,
    ) -> None:
        self._conn = conn
        # A spliced response resolves `head` only once complete (or broken off): the caller,
        # who would only wait for the end next, wakes once per request, not twice.
        self._whole = whole
        self.head_at = 0.0  # time.monotonic() when the final head arrived
        self._reused = reused  # the connection came from the pool (it carried requests before)
        self.answered = False  # a byte of the response arrived
        self._buffered_statuses = buffered
        self._head_only = head_only  # the request was HEAD: the response has no body
        self.head: asyncio.Future[None] = conn.loop.create_future()  # resolved by the head
        self._done: asyncio.Future[None] | None = None
        self._target = sink
        self._filter = header_filter
        self.sink: Reply | None = None  # set once the body is being spliced
        self.status = 0
        self.reason = b""
        self.headers: RawHeaders = []
        self._buffered: list[bytes] = []
        self._size = 0
        self.complete = False
        self._reusable = False
        self._error: BaseException | None = None
        self._finished = False
        self.interim = False  # a 1xx came first
        self.held = 0  # bytes of consecutive reads that handed nothing over (MAX_RESPONSE_HEAD)
        # A spliced chunked body relayed as the upstream framed it (both sides chunked):
        # from `raw_from` in the read its head ended in; `tail`, its last bytes relayed.
        self.raw = False
        self.raw_from = 0
        self.tail = b""

    # -- driven by _Conn ---------------------------------------------------------------------

    def head_complete(self, status: int) -> None:
        if status < 200:
            if status < 100:
                # llhttp takes any three digits; below 100 is no HTTP status, and 0 here
                # means "no final head yet": such an answer could never end.
                raise UpstreamError(f"malformed response: status {status:03d}")
            self.headers, self.reason = [], b""  # interim (103 Early Hints...): wait for more
            self.interim = True
            return
        self.status = status
        self.head_at = time.monotonic()
        if self._target is not None and status not in self._buffered_statuses:
            self._attach(self._target)
            if self._whole:
                if self._head_only:
                    self.message_complete(False)  # see below
                return  # `head` resolves when the body is complete (message_complete, fail)
        if not self.head.done():
            self.head.set_result(None)
        if self._head_only:
            # llhttp cannot be told a response answers a HEAD (httptools has no way to skip
            # the body), so it would wait for Content-Length bytes that never come: the
            # exchange hung until the read timeout. It is complete here; the parser is left
            # expecting a body, so the connection is not reused.
            self.message_complete(False)

    def _attach(self, sink: Reply) -> None:
        sink.cork()  # _Conn.data_received uncorks after this read: head + first bytes together
        sink.start(
            self.status, self.reason or None, self._filter(self.headers), self.content_length
        )
        conn = self._conn
        self.sink = sink
        sink.on_flow(conn.pause, conn.resume)

    def body(self, chunk: bytes) -> None:
        if self.status == 0 or self.complete:
            return
        sink = self.sink
        if sink is not None:
            sink.write(chunk)
            return
        self._buffered.append(chunk)
        self._size += len(chunk)
        if self._size > _HIGH_WATER:
            self._conn.pause()
        if self._done is not None:
            self._wake()  # a `read` is waiting for more

    def message_complete(self, keep_alive: bool) -> None:
        if self.status == 0:
            return  # the end of an interim response
        if self.complete or self._error is not None:
            return  # already ended, or failed (a failed exchange never becomes complete)
        self.complete = True
        self._reusable = keep_alive
        if self.sink is not None and not self.raw:  # a raw body's end is in its bytes
            self.sink.end()
        if not self.head.done():  # a `whole` exchange
            self.head.set_result(None)
        self._wake()

    def desync(self) -> None:
        """Bytes arrived after the response ended: never reuse this connection."""
        self._reusable = False

    def lost(self, exc: Exception | None) -> None:
        if self.complete or self._error is not None:
            # Already failed (read timeout, malformed): our own close must not turn it into
            # a complete close-delimited body (the client would see a clean end).
            return
        if self.status and exc is None and _close_delimited(self.headers):
            # The close is the end of this body, but only a clean EOF: a reset (exc set)
            # cut it short, and ending it would hand the client a truncated body as whole.
            self.message_complete(False)
            return
        if self._reused and not self.answered and isinstance(exc, _RESETS):
            self.fail(_Unread(f"the pooled connection was reset: {exc}"))
            return
        self.fail(UpstreamError(f"the model server closed the connection: {exc or 'EOF'}"))

    def fail(self, error: BaseException) -> None:
        if self.complete or self._error is not None:
            return
        self._error = error
        if not self.head.done() and self.sink is not None:
            # A `whole` exchange whose head went out: it is returned (the caller must
            # know the reply started), and `finished` raises the error.
            self.head.set_result(None)
        elif not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: nobody may be awaiting it any more
        self._wake()

    def _wake(self) -> None:
        done = self._done
        if done is not None and not done.done():
            if self._error is not None and not self.complete:
                done.set_exception(self._error)
                done.exception()
            else:
                done.set_result(None)

    # -- used by the caller ------------------------------------------------------------------

    async def wait_head(self) -> None:
        await self.head

    @property
    def content_length(self) -> int | None:
        value = find_header(self.headers, b"content-length")
        return int(value) if value is not None else None  # llhttp validated it

    async def read(self, limit: int) -> tuple[bytes, bool]:
        """Up to `limit` bytes of a buffered body, and whether that is all of it."""
        while not self.complete and self._error is None and self._size <= limit:
            self._conn.resume()
            await self._wait()
        if self._error is not None and not self.complete:
            raise self._error
        data = b"".join(self._buffered)
        return data[:limit], self.complete and len(data) <= limit

    def splice(self) -> None:
        """Relay a buffered response into the `sink` given to `request` after all: what was
        buffered, then the rest as it comes, like a response spliced from its head on.

        For a buffered response the caller peeked at with `read` and passes on as is: one
        larger than the peek (`read` returned `complete=False`) cannot be answered from the
        peeked bytes without truncating it. Then `finished()` and `release()` as usual.
        """
        sink = self._target
        if sink is None or self.sink is not None or not self.status:
            raise RuntimeError("no buffered response to splice")
        if self._error is not None and not self.complete:
            raise self._error
        buffered, self._buffered, self._size = self._buffered, [], 0
        self._conn.resume()  # read() may have paused it; _attach pauses again for a full client
        sink.cork()
        self._attach(sink)
        for chunk in buffered:
            sink.write(chunk)
        if self.complete:
            sink.end()
        sink.flush_head()
        sink.uncork()

    async def finished(self) -> None:
        """Wait until a spliced body is complete; UpstreamError when the upstream broke off."""
        if not self.complete and self._error is None:
            self._done = done = self._conn.loop.create_future()  # _wait, inlined: per request
            try:
                await done
            finally:
                self._done = None
        if self._error is not None and not self.complete:
            raise self._error

    async def _wait(self) -> None:
        self._done = self._conn.loop.create_future()
        try:
            await self._done
        finally:
            self._done = None

    def release(self) -> None:
        """Back to the pool if the exchange ended cleanly, else close the connection."""
        if self._finished:
            return
        self._finished = True
        if self.sink is not None:
            self.sink.clear_flow()
            self.sink = None
        conn = self._conn
        if self.complete and self._reusable and self._error is None:
            conn.resume()
            conn.pool.put(conn)
        else:
            conn.exchange = None
            conn.close()

    def close(self) -> None:
        """Abort: the upstream sees the connection close (vLLM aborts the request)."""
        self._reusable = False
        self.release()


_CRLF = b"\r\n"


def _chunked(headers: RawHeaders) -> bool:
    """Whether llhttp reads this response's body as chunked: `chunked` is the final transfer
    coding of the last Transfer-Encoding field (RFC 9112 §6.3)."""
    last = None
    for name, value in headers:
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            last = value
    return last is not None and last.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


# A reset, reported by a read (ECONNRESET) or by a write after it (EPIPE).
_RESETS = (ConnectionResetError, BrokenPipeError)


def _close_delimited(headers: RawHeaders) -> bool:
    if find_header(headers, b"content-length") is not None:
        return False
    te = find_header(headers, b"transfer-encoding")
    return te is None or b"chunked" not in te.lower()


def _readable(conn: _Conn) -> bool:
    """Whether an idle connection has something to read now: the upstream's close (or bytes
    nobody asked for), arrived but maybe not yet seen by the event loop."""
    transport = conn.transport
    if transport is None:
        return True
    poller = conn.poller
    if poller is None:  # one per connection, registered once: a check is one poll(2)
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        poller = conn.poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))  # POLLHUP and POLLERR are reported whatever was asked


class UpstreamPool:
    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float | None = None,
        idle_timeout: float = 30.0,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._all: set[_Conn] = set()
        self._closed = False
        self._sweeper: asyncio.Task[None] | None = None

    async def request(
        self,
        host: str,
        port: int,
        head: bytes,
        body: bytes,
        *,
        sink: Reply | None = None,
        header_filter: Callable[[RawHeaders], RawHeaders] = lambda h: h,
        buffered: frozenset[int] = frozenset({503}),
        whole: bool = False,
        read_timeout: float | EllipsisType | None = ...,
        first_read_timeout: float | None = None,
    ) -> Exchange:
        """Send one request; returns once the response head is in (see Exchange for `sink`
        and `buffered`), or with `whole`, for a response spliced into `sink`, once it is
        complete or broke off (then `finished()` raises at once): for a caller that only
        waits for the end, one wake-up per request instead of two. Sent a second time only
        when the first copy provably was not read (the module's docstring). `read_timeout`,
        when given, replaces the pool's for this request (None: no read timeout).
        `first_read_timeout` bounds the wait for the response's first byte instead, when that
        may take longer than the reads after it (a request an upstream may hold before it
        works on it); from that byte on, the read timeout."""
        timeout = self.read_timeout if read_timeout is ... else read_timeout
        conn = self._take(host, port)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(host, port)
        head_only = head.startswith(b"HEAD ")
        exchange = Exchange(conn, sink, header_filter, head_only, buffered, reused, whole)
        conn.send(exchange, head, body, timeout, first_read_timeout)
        try:
            await exchange.head  # awaited here, not in a coroutine of its own: one per request
        except _Unread:
            exchange.close()
            conn = await self._connect(host, port)
            exchange = Exchange(conn, sink, header_filter, head_only, buffered, False, whole)
            conn.send(exchange, head, body, timeout, first_read_timeout)
            try:
                await exchange.head
            except BaseException:
                exchange.release()  # see below
                raise
        except BaseException:
            # Closed (the upstream aborts the request), unless the answer was whole: a
            # `whole` exchange's caller can be cancelled (its client left) in the turn that
            # completed it, and the connection is as clean as after any answer.
            exchange.release()
            raise
        return exchange

    def _take(self, host: str, port: int) -> _Conn | None:
        idle = self._idle.get((host, port))
        if not idle:
            return None
        # Never reuse a connection idle past the limit: the upstream may close it any moment.
        cutoff = time.monotonic() - self.idle_timeout
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest to be alive
            if conn.idle_since < cutoff or _readable(conn):
                conn.close()
            elif conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, host: str, port: int) -> _Conn:
        if self._closed:
            raise ConnectError("the pool is closed")
        loop = asyncio.get_running_loop()
        factory: Callable[[], _Conn] = lambda: _Conn(self, (host, port))  # noqa: E731
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for runs the connect in a task of its
            # own and, when the caller is cancelled (the client left) just as the connect
            # completes, returns the connection and drops the cancellation: the request would
            # be sent after all and its handler run on to the end.
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(factory, host, port)
        except (OSError, TimeoutError) as e:
            raise ConnectError(f"cannot connect to {host}:{port}: {e or type(e).__name__}") from e
        self._all.add(conn)
        return conn

    def put(self, conn: _Conn) -> None:
        transport = conn.transport
        if (
            self._closed
            or transport is None
            or transport.is_closing()
            # The answer came before the whole request was written (an early 4xx, say):
            # the upstream stopped reading it and will likely close, so the next request
            # would be written behind the rest of this body and fail as an UpstreamError
            # (a final 502) though it never reached an engine.
            or transport.get_write_buffer_size() > 0
        ):
            conn.close()
            return
        conn.idle()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close connections idle past the limit (one timer for the pool, not one per request)."""
        while not self._closed:
            await asyncio.sleep(self.idle_timeout / 2)
            cutoff = time.monotonic() - self.idle_timeout
            for idle in self._idle.values():
                for conn in [c for c in idle if c.idle_since < cutoff]:
                    idle.remove(conn)
                    conn.close()

    def forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)
