"""Adversarial probes of the request path from the other side: what a hostile pod (or vLLM)
answers reaches clients only as a clean answer or a visible cut, and head bounds hold across
the two hops. Raw sockets on 127.0.52.x; the rig is request_path_rig.py, the client-side
probes test_probe_request_path.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from vllm_sleep.http_common import MAX_HEAD_BYTES, MAX_HEADERS

from .request_path_rig import (
    AGENT,
    CHAT,
    Conn,
    FakePod,
    Seen,
    fake_vllm,
    gateway_before,
    gateway_idle,
    get,
    gw_addr,
    post,
    roundtrip,
    two_hops,
    until,
)

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]


OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
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
        assert gateway_idle(gw)
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
        assert not gateway_idle(gw)
        conn.close()
        await until(lambda: fake.closed_by_peer == 1)
        await until(lambda: gateway_idle(gw))


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


async def test_hop_by_hop_fields_of_vllms_answer_stop_at_the_agent() -> None:
    async with two_hops(FakePod(fake_vllm(_HOP_ANSWER))) as (agent, _):
        raw = post("/v1/chat/completions", CHAT, "Connection: close")
        got = await roundtrip((AGENT, agent.public_port or 0), raw)
    assert got.status == 200 and got.body == b"{}"
    assert _HOP_FIELDS.isdisjoint(got.headers), got.headers


# -- head bounds across the two hops ----------------------------------------------------------


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
    fake = FakePod(fake_vllm(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
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
