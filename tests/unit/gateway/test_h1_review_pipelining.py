"""h1's server under every split of pipelined requests into reads.

The server's protocol is driven directly (a fake transport that honours pause_reading), so
each generated split is exactly the reads the server sees. Property: whatever the split, and
whatever the framing (Content-Length or chunked with extensions and trailers), each request
reaches the handler with its own body, the answers come back in order, and the budget of
buffered bodies returns to zero.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_sleep.h1 import Reply, Request, Response, Server
from vllm_sleep.h1.server import _Connection

pytestmark = pytest.mark.unit


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.paused = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, data: Any) -> None:
        for piece in data:
            self.out += piece

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


class Answers:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._body = b""

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.bodies.append(self._body)
        self._body = b""


_token = st.text(alphabet="abz09-", min_size=1, max_size=4).map(str.encode)
_ext = st.one_of(st.just(b""), _token.map(lambda t: b";" + t), _token.map(lambda t: b";e=" + t))


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(the request's bytes, its body)."""
    body = draw(st.binary(max_size=40))
    if not draw(st.booleans()):
        head = b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % len(body)
        return head + body, body
    cuts = sorted(draw(st.sets(st.integers(0, len(body)), max_size=3)) | {0, len(body)})
    pieces = [body[a:b] for a, b in itertools.pairwise(cuts) if b > a]  # no empty chunk
    framed = b"".join(b"%x%s\r\n%s\r\n" % (len(p), draw(_ext), p) for p in pieces)
    trailers = draw(st.sampled_from([b"", b"x-t: 1\r\n"]))
    head = b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + framed + b"0" + draw(_ext) + b"\r\n" + trailers + b"\r\n", body


async def echo(request: Request, reply: Reply) -> None:
    await asyncio.sleep(0)  # answered a loop turn later: the next requests wait, reading paused
    reply.send(Response(200, request.body, content_type="text/plain"))


@settings(max_examples=300, deadline=None, print_blob=True)
@given(reqs=st.lists(requests(), min_size=1, max_size=4), cuts=st.lists(st.integers(0), max_size=8))
async def test_any_split_of_pipelined_requests_is_answered_in_order(
    reqs: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    wire = b"".join(r for r, _ in reqs)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    reads = [wire[a:b] for a, b in itertools.pairwise(points) if b > a]
    server = Server(echo)
    conn = _Connection(server, echo, server._limits, lambda _p, _s: None, None)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    answers = Answers()
    parser = httptools.HttpResponseParser(answers)
    async with asyncio.timeout(5):
        for piece in reads:
            while transport.paused:  # noqa: ASYNC110 - the server reads on once it answered
                await asyncio.sleep(0)
            conn.data_received(piece)
        while len(answers.bodies) < len(reqs):
            await asyncio.sleep(0)
            parser.feed_data(bytes(transport.out))
            transport.out.clear()
    assert answers.bodies == [b for _, b in reqs]
    assert not transport.closed and server.budget.used == 0
    conn.connection_lost(None)
