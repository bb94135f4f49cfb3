"""Adversarial probes of held requests at the pod agent (and behind the gateway): what a
request costs and signals before it has arrived, while it is held and once its client has
gone, and what still passes to a sleeping engine. The oracle is a legacy (<=0.16) simulated
vLLM, which dies when a request reaches it asleep, behind the rig's tap
(request_path_rig.py); framing and pipelining probes are in test_probe_request_path.py.
"""

from __future__ import annotations

import asyncio

import pytest

from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource

from .request_path_rig import (
    CHAT,
    GATEWAY,
    OK_ANSWER,
    Conn,
    FakePod,
    Pod,
    gateway_for,
    gateway_idle,
    get,
    gw_addr,
    make_pod,
    post,
    roundtrip,
    until,
)
from .request_path_rig import gateway as gateway  # the fixtures
from .request_path_rig import pod as pod

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]


# -- clients that leave -----------------------------------------------------------------------


async def test_a_held_request_dripped_slowly_is_demand_only_once_it_has_arrived(
    pod: Pod,
) -> None:
    """A body dripped a few bytes at a time, each gap within the body timeout: not held (not
    demand, no slot) until its last byte, then held like any other, and run after the wake."""
    await pod.sleep()
    before = await pod.control_call_json("/state")
    conn = await Conn.open(*pod.public)
    raw = post("/v1/chat/completions")
    head, body = raw[: raw.index(b"\r\n\r\n") + 4], raw[raw.index(b"\r\n\r\n") + 4 :]
    await conn.send(head)
    for i in range(0, len(body) - 1, 8):
        await conn.send(body[i : min(i + 8, len(body) - 1)])
        await asyncio.sleep(0.02)
        assert pod.agent.gate.held == 0
    assert (await pod.control_call_json("/state"))["version"] == before["version"]
    await conn.send(body[-1:])
    await until(lambda: pod.agent.gate.held == 1)
    await pod.wake()
    assert (await conn.answer()).status == 200
    conn.close()
    assert pod.forwarded() == ["POST /v1/chat/completions"]
    pod.assert_engine_safe()


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


async def test_the_operator_hears_the_last_held_request_leave(pod: Pod) -> None:
    """Held requests are demand (the operator wakes, or evicts another model, for them): the
    long-poll hears them appear and hears the last one leave, so the operator never acts on
    demand whose clients are gone."""
    await pod.sleep()
    before = await pod.control_call_json("/state")
    conns = [await Conn.open(*pod.public) for _ in range(2)]
    for conn in conns:
        await conn.send(post("/v1/chat/completions"))
    demand = await pod.control_call_json(f"/state?version={before['version']}&wait=10")
    assert demand["version"] > before["version"]
    await until(lambda: pod.agent.gate.held == 2)
    conns[0].close()
    await until(lambda: pod.agent.gate.held == 1)
    one_left = await pod.control_call_json("/state")
    conns[1].close()
    gone = await pod.control_call_json(f"/state?version={one_left['version']}&wait=10")
    assert gone["held"] == 0 and gone["version"] > one_left["version"], gone
    assert gone["state"] == "asleep"


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
    fake = FakePod(lambda n, _: OK_ANSWER)
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
    await until(lambda: gateway_idle(gateway))
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


# -- what passes while the engine sleeps ------------------------------------------------------

PASSTHROUGH = [
    get("/health"),
    get("/metrics?name=vllm"),
    get("/version"),
    get("/v1/models"),
    get("/v1/responses/resp_0123?stream=true"),
    post("/v1/responses/resp_0123/cancel", b""),
    post("/tokenize", b'{"model":"m","prompt":"hello"}'),
    post("/tokenize", b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'),
    post("/detokenize", b'{"model":"m","tokens":[1,2,3]}'),
    post("/v1/messages/count_tokens", b'{"model":"m","messages":[{"role":"user","content":"a"}]}'),
]


async def test_what_the_agent_forwards_while_the_engine_sleeps_never_touches_it(pod: Pod) -> None:
    """The passthrough routes are forwarded asleep (vLLM's frontend answers them): pipelined
    on one connection, with a held inference request among them, none reaches the engine
    as work, and the engine is still asleep and alive afterwards."""
    await pod.sleep()
    conn = await Conn.open(*pod.public)
    await conn.send(b"".join(PASSTHROUGH))
    answers = await conn.answers(len(PASSTHROUGH))
    assert len(answers) == len(PASSTHROUGH)
    assert all(a.status < 500 for a in answers), [(a.status, a.body[:100]) for a in answers]
    assert pod.agent.gate.held == 0 and pod.agent.gate.inflight == 0
    assert pod.engine.state == "sleeping"
    pod.assert_engine_safe()
    await conn.send(post("/v1/chat/completions") + get("/health"))
    await until(lambda: pod.agent.gate.held == 1)
    await pod.wake()
    assert [a.status for a in await conn.answers(len(PASSTHROUGH) + 2)][-2:] == [200, 200]
    conn.close()
    pod.assert_engine_safe()
