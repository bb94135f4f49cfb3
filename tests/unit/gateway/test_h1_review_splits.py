"""h1's upstream relay under every split of an upstream answer into reads.

The pool's protocol is driven directly (fake transports on both sides), so each generated split
is exactly the reads the pool sees. Properties: whatever the split, the client receives the
upstream's body whole and nothing after its end; a chunked answer whose head arrived in one
read reaches a chunked client byte for byte as the upstream framed it (extensions, trailers);
the upstream connection stays reusable and the next exchange on it is answered correctly.
"""

from __future__ import annotations

import itertools
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_sleep.h1 import Exchange, Reply, Request, UpstreamPool
from vllm_sleep.h1.client import _Conn

pytestmark = pytest.mark.unit

_FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}


def drop_framing(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in headers if n.lower() not in _FRAMING]


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.out += data

    def writelines(self, data: Any) -> None:
        for piece in data:
            self.write(piece)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, _name: str, default: Any = None) -> Any:
        return default


class FakeClient:
    """What h1.Reply needs of the server's connection."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.flow: Any = None
        self.write_paused = False

    def date(self) -> bytes:
        return b"date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after the close"
        self.out += data

    def writelines(self, data: Any) -> None:
        for piece in data:
            self.write(piece)

    def close(self, abort: bool = False) -> None:
        self.closed = True


class Parsed:
    def __init__(self) -> None:
        self.body = bytearray()
        self.trailers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.done = 0

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            self.trailers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done += 1


def parse(data: bytes) -> Parsed:
    p = Parsed()
    httptools.HttpResponseParser(p).feed_data(data)
    return p


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)

_token = st.text(alphabet="abcxyz019-", min_size=1, max_size=5).map(str.encode)
_ext = st.one_of(
    st.just(b""),
    st.builds(
        lambda n, v: b";" + n + (b"=" + v if v else b""), _token, st.one_of(st.just(b""), _token)
    ),
)
_chunk = st.tuples(
    st.binary(min_size=1, max_size=40), st.integers(min_value=0, max_value=3), _ext
).map(lambda t: b"%s%x%s\r\n%s\r\n" % (b"0" * t[1], len(t[0]), t[2], t[0]))
_trailer = st.tuples(_token, st.one_of(st.just(b""), _token)).map(
    lambda t: b"x-" + t[0] + b": " + t[1] + b"\r\n"
)


@st.composite
def chunked_answers(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """(head, body up to its end, CR/LF the upstream sent after the end)."""
    chunks = draw(st.lists(_chunk, max_size=5))
    last = b"0" * draw(st.integers(0, 2)) + b"0" + draw(_ext) + b"\r\n"
    trailers = b"".join(draw(st.lists(_trailer, max_size=2)))
    stray = draw(st.text(alphabet="\r\n", max_size=4)).encode()
    return CHUNKED_HEAD, b"".join(chunks) + last + trailers + b"\r\n", stray


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def exchange_on(conn: _Conn) -> tuple[Exchange, FakeClient, Reply]:
    client = FakeClient()
    reply = Reply(client, Request("POST", "/v1/x", "", "1.1", [], b"", None, True))  # type: ignore[arg-type]
    ex = Exchange(conn, reply, drop_framing, whole=True)
    conn.send(ex, b"POST /v1/x HTTP/1.1\r\ncontent-length: 0\r\n\r\n", b"", None)
    return ex, client, reply


async def relay(reads: list[bytes], conn: _Conn) -> tuple[Exchange, FakeClient, Reply]:
    ex, client, reply = exchange_on(conn)
    for piece in reads:
        conn.data_received(piece)
    return ex, client, reply


def new_conn() -> tuple[_Conn, FakeTransport]:
    conn = _Conn(UpstreamPool(connect_timeout=1.0), ("127.0.0.1", 1))
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=chunked_answers(), cuts=st.lists(st.integers(min_value=0), max_size=6))
async def test_any_split_of_a_chunked_answer_reaches_the_client_exactly(
    answer: tuple[bytes, bytes, bytes], cuts: list[int]
) -> None:
    head, body, stray = answer
    wire = head + body + stray
    reads = splits(wire, cuts)
    conn, transport = new_conn()
    ex, client, reply = await relay(reads, conn)

    assert ex.complete and reply.done and not reply.aborted and not client.closed
    expected = parse(head + body)
    got = parse(bytes(client.out))
    assert got.done == 1 and got.body == expected.body
    out = bytes(client.out)
    sent_body = out[out.index(b"\r\n\r\n") + 4 :]
    if len(reads[0]) >= len(head):  # the head in one read: the framing passes as it came
        assert sent_body == body
        assert got.trailers == expected.trailers
    else:
        assert sent_body.endswith(b"0\r\n\r\n")  # re-chunked: nothing after the end either

    # The connection is reusable and the next exchange is its own, whole.
    assert ex._reusable and not transport.closed
    ex.release()
    ex2, client2, reply2 = await relay(splits(wire, cuts[::-1]), conn)
    assert ex2.complete and reply2.done and not reply2.aborted
    assert parse(bytes(client2.out)).body == expected.body


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=60),
    interim=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=6),
)
async def test_any_split_of_a_content_length_answer_reaches_the_client_exactly(
    body: bytes, interim: bool, cuts: list[int]
) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" if interim else b""
    wire = early + b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    conn, transport = new_conn()
    ex, client, reply = await relay(splits(wire, cuts), conn)
    assert ex.complete and reply.done and not reply.aborted
    got = parse(bytes(client.out))
    assert got.done == 1 and bytes(got.body) == body
    assert b"103" not in bytes(client.out)[:12]
    assert ex._reusable and not transport.closed


@settings(max_examples=200, deadline=None)
@given(answer=chunked_answers(), cuts=st.lists(st.integers(min_value=0), max_size=4))
async def test_a_chunked_answer_after_an_interim_one_is_whole_for_any_split(
    answer: tuple[bytes, bytes, bytes], cuts: list[int]
) -> None:
    head, body, stray = answer
    early = b"HTTP/1.1 100 Continue\r\n\r\n"
    conn, _ = new_conn()
    ex, client, reply = await relay(splits(early + head + body + stray, cuts), conn)
    assert ex.complete and reply.done and not reply.aborted
    got = parse(bytes(client.out))
    assert got.done == 1 and got.body == parse(head + body).body
