"""Adversarial probes of the request path from the other side and of its bounds: what a
hostile pod (or vLLM) answers reaches clients only as a clean answer or a visible cut, head
bounds hold across the two hops, and a client that pipelines without reading costs a bounded
amount. Raw sockets on 127.0.52.x; the rig is request_path_rig.py, the client-side probes
test_probe_request_path.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from vllm_sleep.agent import Agent
from vllm_sleep.gateway import Gateway
from vllm_sleep.http_common import MAX_HEAD_BYTES, MAX_HEADERS

from .request_path_rig import (
    AGENT,
    CHAT,
    OK_ANSWER,
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
    fake = FakePod(fake_vllm(OK_ANSWER))
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


# -- clients that pipeline and do not read ----------------------------------------------------


def _connections(hop: str, agent: Agent, gw: Gateway) -> list[Any]:
    server = agent._public if hop == "agent" else gw._server
    assert server is not None
    return list(server.connections)


@pytest.mark.parametrize("hop", ["agent", "gateway"])
async def test_a_client_that_pipelines_and_reads_nothing_costs_a_bounded_amount(hop: str) -> None:
    """Requests answered from the proxy itself (a 404 at the agent, /healthz at the gateway),
    pipelined without end by a client that reads no answer: the proxy stops taking the next
    request while the client's socket buffer is full, so what it holds stays a socket
    buffer's worth, not every answer made as fast as it can make them."""
    async with two_hops(FakePod(fake_vllm(OK_ANSWER))) as (agent, gw):
        addr = (AGENT, agent.public_port or 0) if hop == "agent" else gw_addr(gw)
        one = get("/nope" if hop == "agent" else "/healthz")
        batch = one * 64  # below the pipelining bound: every batch is answered
        conn = await Conn.open(*addr)
        sent = 0
        with contextlib.suppress(TimeoutError):
            while sent < (8 << 20):  # until the proxy stops reading (or 8 MiB)
                conn.writer.write(batch)
                await asyncio.wait_for(conn.writer.drain(), 1.0)
                sent += len(batch)
                await asyncio.sleep(0)  # a read each, at most: the batches stay batches
        [server_side] = _connections(hop, agent, gw)
        held = server_side._transport.get_write_buffer_size()
        assert held < (1 << 20), (held, sent)
        assert len(server_side._pending) <= 128
        conn.close()


@pytest.mark.parametrize("hop", ["agent", "gateway"])
async def test_a_pipeline_deeper_than_the_bound_is_answered_then_refused(hop: str) -> None:
    async with two_hops(FakePod(fake_vllm(OK_ANSWER))) as (agent, gw):
        addr = (AGENT, agent.public_port or 0) if hop == "agent" else gw_addr(gw)
        one = get("/nope" if hop == "agent" else "/healthz")
        conn = await Conn.open(*addr)
        await conn.send(one * 300)
        answers = await conn.answers(300)
        assert await conn.is_closed()
        assert len(answers) < 300 and answers[-1].status == 400, len(answers)
        assert "pipelined" in str(answers[-1].error()["message"])
        assert {a.status for a in answers[:-1]} == {404 if hop == "agent" else 200}
        # Whoever pipelines within the bound is served whole.
        conn = await Conn.open(*addr)
        await conn.send(one * 100)
        assert len(await conn.answers(100)) == 100
        conn.close()
