"""h1's raw relay: a chunked upstream body reaches a chunked client as the upstream framed it.

When both sides are HTTP/1.1 chunked, the pool relays each upstream read's body bytes in one
write instead of decoding and re-chunking them; llhttp still parses them, for the body's end.
What the client receives is therefore the upstream's chunk framing byte for byte (sizes,
extensions, trailers), cut exactly at the body's end. The helpers are test_h1's.
"""

from __future__ import annotations

import asyncio

import pytest

from .test_h1 import (
    IncompleteResponse,
    Relay,
    Requests,
    Script,
    Upstream,
    Wire,
    connect,
    get,
    pooled,
    post,
    serving,
)

pytestmark = [pytest.mark.contract, pytest.mark.timeout(30)]

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def reads(*parts: bytes) -> Script:
    """An upstream that answers every request with `parts`, one write each, a pause between
    them so each is its own read at the pool."""

    async def script(_: Upstream, requests: Requests, writer: asyncio.StreamWriter) -> None:
        while await requests.next() is not None:
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.02)

    return script


def body_bytes(w: Wire) -> bytes:
    """Everything the client received after the first response's head."""
    raw = bytes(w.raw)
    return raw[raw.index(b"\r\n\r\n") + 4 :]


async def test_chunk_framing_reaches_the_client_as_the_upstream_sent_it() -> None:
    # Zero-padded sizes, an extension, and reads that split chunks in their middle: a
    # re-chunking relay would send each read's payload as chunks of its own.
    body = b"0005;ext=1\r\nhello\r\n00000006\r\n world\r\n0\r\n\r\n"
    parts = (HEAD + body[:15], body[15:30], body[30:])
    async with (
        Upstream(reads(*parts)) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        r = await w.response()
        assert (r.status, r.body) == (200, b"hello world")
        assert body_bytes(w) == body
        assert r.header("transfer-encoding") == "chunked"


async def test_upstream_trailers_pass_through_to_the_client() -> None:
    body = b"5\r\nhello\r\n0\r\nx-trailer: done\r\n\r\n"
    async with (
        Upstream(reads(HEAD + body)) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        r = await w.response()
        assert r.body == b"hello"
        assert (b"x-trailer", b"done") in r.headers  # llhttp reports trailers as headers
        assert body_bytes(w) == body


async def test_a_split_last_chunk_and_stray_line_ends_after_it_end_the_body_exactly() -> None:
    """The last-chunk marker split over reads, then CR/LF the upstream sent after its end
    (llhttp skips them between responses): the client gets the body up to its end only, and
    the connections on both sides serve the next request."""
    parts = (HEAD + b"5\r\nhello\r\n0\r", b"\n\r\n\r\n\r\n")
    async with (
        Upstream(reads(*parts)) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        for _ in range(2):
            await w.send(post("/v1/x", b"{}"))
            r = await w.response()
            assert (r.status, r.body) == (200, b"hello")
        assert bytes(w.raw).count(b"hello\r\n0\r\n\r\n") == 2
        assert bytes(w.raw).endswith(b"hello\r\n0\r\n\r\n")  # nothing stray relayed
        assert up.accepted == 1


async def test_bytes_after_the_end_in_the_same_read_cut_the_answer_and_the_connection() -> None:
    """A second response after the first's end, in the read that ended it: where the first
    ends in that read is not known, so its answer is cut (visibly incomplete), never completed
    with stray bytes, and the upstream connection is not reused."""
    parts = (HEAD + b"5\r\nhello\r\n", b"0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    async with (
        Upstream(reads(*parts)) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
    ):
        for _ in range(2):
            async with connect(port) as w:
                await w.send(post("/v1/x", b"{}"))
                with pytest.raises(IncompleteResponse) as info:
                    await w.response()
                assert info.value.partial is not None and info.value.partial.body == b"hello"
        assert up.accepted == 2


async def test_an_http_1_0_client_still_gets_the_body_decoded() -> None:
    body = b"0005\r\nhello\r\n0\r\n\r\n"
    async with (
        Upstream(reads(HEAD + body)) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(get("/v1/x", version="1.0"))
        assert (await w.eof()).endswith(b"\r\n\r\nhello")  # close-delimited, not chunked


async def test_after_an_interim_response_the_body_is_relayed_re_chunked() -> None:
    """A 1xx before the final head: that head's end is not looked for in the read, so the
    body goes the decoding way (still whole and in order)."""
    early = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    async with (
        Upstream(reads(early + HEAD + b"0005\r\nhello\r\n0\r\n\r\n")) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        r = await w.response()
        assert (r.status, r.body) == (200, b"hello")
        assert body_bytes(w) == b"5\r\nhello\r\n0\r\n\r\n"
