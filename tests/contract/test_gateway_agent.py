"""Gateway -> real pod agent -> simulated vLLM, over loopback: the production data path.

Covers what the fake upstreams cannot: the agent's real refusals (503 while asleep, 429 when its
hold queue is full) make the gateway move or re-hold the request, `wake.maxQueued` means the
same at both, and the legacy simulator (which dies if a request reaches a sleeping engine)
records zero violations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.gateway.routing import ModelKey, WakePolicy
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

from .agent_wait import wait_state

pytestmark = pytest.mark.contract

TOKEN = "gw-test-token"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def agent_for(engine: SimEngine, host: str, **over: object) -> Agent:
    cfg = AgentConfig.model_validate(
        over
        | {
            "listen_host": host,
            "public_port": 0,
            "control_port": 0,
            "upstream": engine.url,
            "control_token": TOKEN,
            "hold_timeout": 0.2,
            "poll_interval": 0.01,
            "health_interval": 0.05,
        }
        | over
    )
    agent = Agent(cfg)
    await agent.start()
    await wait_state(agent, "awake")
    return agent


@pytest.fixture
async def replicas() -> AsyncIterator[list[tuple[SimEngine, Agent]]]:
    host = EngineHost(time_scale=0.002)
    env = {"VLLM_SIM_PROFILE": "legacy"}
    out = []
    for i in range(2):
        engine = await start(
            host,
            "m",
            "--enable-sleep-mode",
            "--served-model-name",
            "m",
            "--host",
            f"127.0.11.{i + 1}",
            env=env,
        )
        out.append((engine, await agent_for(engine, f"127.0.12.{i + 1}")))
    yield out
    for _, agent in out:
        await agent.stop()
    await host.stop_all()


async def test_chat_and_stream_through_gateway_agent_and_engine(
    replicas: list[tuple[SimEngine, Agent]], http: httpx.AsyncClient
) -> None:
    source = StaticSource("team")
    source.add_model("m", [replicas[0][1].public_url])
    async with Gateway(
        GatewayConfig(listen_host="127.0.12.100", port=0), source, MemoryDemand()
    ) as g:
        resp = await http.post(g.url + "/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]
        body = {**CHAT, "stream": True}
        async with http.stream("POST", g.url + "/v1/chat/completions", json=body) as s:
            text = b"".join([c async for c in s.aiter_raw()])
        assert s.status_code == 200 and text.rstrip().endswith(b"data: [DONE]")


async def test_a_replica_that_fell_asleep_is_skipped_without_reaching_its_engine(
    replicas: list[tuple[SimEngine, Agent]], http: httpx.AsyncClient
) -> None:
    (sleepy_engine, sleepy_agent), (awake_engine, awake_agent) = replicas
    ctl = await http.post(
        sleepy_agent.control_url + "/sleep?level=1", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert ctl.status_code == 200, ctl.text
    # The watch has not caught up: both replicas still look awake to the gateway.
    source = StaticSource("team")
    source.add_model("m", [sleepy_agent.public_url, awake_agent.public_url])
    async with Gateway(
        GatewayConfig(listen_host="127.0.12.101", port=0), source, MemoryDemand()
    ) as g:
        responses = await asyncio.gather(
            *(http.post(g.url + "/v1/chat/completions", json=CHAT) for _ in range(4))
        )
        assert [r.status_code for r in responses] == [200] * 4
        retries = (await http.get(g.url + "/metrics")).text
    assert sleepy_engine.state == "sleeping" and not sleepy_engine.violations
    assert not awake_engine.violations
    assert 'vllm_sleep_gateway_upstream_retries_total{reason="' in retries


async def test_a_held_request_waits_at_the_asleep_agent_and_flows_when_it_wakes(
    replicas: list[tuple[SimEngine, Agent]], http: httpx.AsyncClient
) -> None:
    engine, agent = replicas[0]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await http.post(agent.control_url + "/sleep?level=1", headers=auth)).status_code == 200
    source = StaticSource("team")
    source.add_model("m", [agent.public_url], awake=False, can_hold=True)
    woken: list[asyncio.Task[httpx.Response]] = []

    def play_operator(_: object) -> None:
        # Plays the operator, except that the pod is never marked awake: only the agent's
        # release can answer the request.
        async def wake() -> httpx.Response:
            async with asyncio.timeout(10):
                while agent.snapshot()["held"] == 0:  # noqa: ASYNC110 - at the agent first
                    await asyncio.sleep(0.01)
            return await http.post(agent.control_url + "/wake", headers=auth)

        woken.append(asyncio.create_task(wake()))

    async with Gateway(
        GatewayConfig(listen_host="127.0.12.102", port=0),
        source,
        MemoryDemand(on_signal=play_operator),
    ) as g:
        resp = await http.post(g.url + "/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200, resp.text
        # The answer is spliced to the client from the upstream's callbacks; the handler that
        # frees the queue slot resumes a few loop turns later.
        async with asyncio.timeout(5):
            while g.router.table.queued(ModelKey("team", "m")) != 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    assert [t.result().status_code for t in woken] == [200]
    assert not engine.violations


async def test_an_agent_that_never_wakes_ends_in_the_gateways_wake_timeout(
    replicas: list[tuple[SimEngine, Agent]], http: httpx.AsyncClient
) -> None:
    # The agent's hold timeout (0.2 s) is shorter than the gateway's (1 s): each hold_timeout
    # re-holds the request, and the gateway's own deadline decides.
    engine, agent = replicas[0]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await http.post(agent.control_url + "/sleep?level=1", headers=auth)).status_code == 200
    source = StaticSource("team")
    wake = WakePolicy(timeout=1.0)
    source.add_model("m", [agent.public_url], awake=False, can_hold=True, wake=wake)
    async with Gateway(
        GatewayConfig(listen_host="127.0.12.103", port=0), source, MemoryDemand()
    ) as g:
        resp = await http.post(g.url + "/v1/chat/completions", json=CHAT)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "wake_timeout"
        metrics = (await http.get(g.url + "/metrics")).text
    assert 'vllm_sleep_gateway_upstream_retries_total{reason="hold_timeout"}' in metrics
    assert engine.state == "sleeping" and not engine.violations


async def until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not cond():  # noqa: ASYNC110 - polling state another task changes
            await asyncio.sleep(0.01)


@pytest.fixture
async def asleep() -> AsyncIterator[tuple[SimEngine, EngineHost]]:
    host = EngineHost(time_scale=0.002)
    engine = await start(
        host,
        "m",
        "--enable-sleep-mode",
        "--served-model-name",
        "m",
        "--host",
        "127.0.11.9",
        env={"VLLM_SIM_PROFILE": "legacy"},
    )
    yield engine, host
    await host.stop_all()


async def test_max_queued_bounds_what_a_gateway_holds_and_a_full_queue_is_429(
    asleep: tuple[SimEngine, EngineHost], http: httpx.AsyncClient
) -> None:
    # wake.maxQueued = 2 at the gateway and (as the operator sets it) --max-held 2 at the
    # agent: two requests wait at the asleep agent, the third is answered 429 queue_full by
    # the gateway at once, and the two flow when the engine wakes.
    engine, _ = asleep
    agent = await agent_for(engine, "127.0.12.9", max_held=2, hold_timeout=30.0)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert (await http.post(agent.control_url + "/sleep", headers=auth)).status_code == 200
        source = StaticSource("team")
        wake = WakePolicy(max_queued=2)
        source.add_model("m", [agent.public_url], awake=False, can_hold=True, wake=wake)
        async with Gateway(
            GatewayConfig(listen_host="127.0.12.104", port=0, retry_after=3),
            source,
            MemoryDemand(),
        ) as g:
            url = g.url + "/v1/chat/completions"
            held = [asyncio.create_task(http.post(url, json=CHAT)) for _ in range(2)]
            await until(lambda: agent.snapshot()["held"] == 2)
            full = await http.post(url, json=CHAT)
            assert full.status_code == 429, full.text
            assert full.json()["error"]["code"] == "queue_full"
            assert full.json()["error"]["type"] == "rate_limit_error"
            assert full.headers["retry-after"] == "3"
            assert (await http.post(agent.control_url + "/wake", headers=auth)).status_code == 200
            assert [(await t).status_code for t in held] == [200, 200]
    finally:
        await agent.stop()
    assert not engine.violations


async def test_an_agent_whose_hold_queue_is_full_answers_429_and_the_gateway_holds_again(
    asleep: tuple[SimEngine, EngineHost], http: httpx.AsyncClient
) -> None:
    # Several gateways (or direct clients) can send an agent more than maxQueued: the agent
    # refuses the surplus with 429 queue_full (never forwarded), and a gateway keeps such a
    # request in its own queue until a replica takes it.
    engine, _ = asleep
    agent = await agent_for(engine, "127.0.12.10", max_held=1, hold_timeout=30.0)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert (await http.post(agent.control_url + "/sleep", headers=auth)).status_code == 200
        direct = [
            asyncio.create_task(http.post(agent.public_url + "/v1/chat/completions", json=CHAT))
        ]
        await until(lambda: agent.snapshot()["held"] == 1)
        refused = await http.post(agent.public_url + "/v1/chat/completions", json=CHAT)
        assert refused.status_code == 429 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "queue_full"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        source = StaticSource("team")
        source.add_model("m", [agent.public_url], awake=False, can_hold=True)
        async with Gateway(
            GatewayConfig(listen_host="127.0.12.105", port=0), source, MemoryDemand()
        ) as g:
            via_gateway = asyncio.create_task(http.post(g.url + "/v1/chat/completions", json=CHAT))
            retries = g.metrics.registry.get_sample_value
            sample = ("vllm_sleep_gateway_upstream_retries_total", {"reason": "queue_full"})
            await until(lambda: (retries(*sample) or 0) >= 1)
            assert not via_gateway.done()  # held again, not answered with the agent's 429
            assert (await http.post(agent.control_url + "/wake", headers=auth)).status_code == 200
            assert (await via_gateway).status_code == 200
        assert [(await t).status_code for t in direct] == [200]
    finally:
        await agent.stop()
    assert not engine.violations
