"""Gateway -> real pod agent -> simulated vLLM, over loopback: the production data path.

Covers what the fake upstreams cannot: the agent's real refusal (503 while asleep) makes the
gateway move the request to an awake replica, and the legacy simulator (which dies if a request
reaches a sleeping engine) records zero violations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

pytestmark = pytest.mark.contract

TOKEN = "gw-test-token"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def agent_for(engine: SimEngine, host: str) -> Agent:
    cfg = AgentConfig.model_validate(
        {
            "listen_host": host,
            "public_port": 0,
            "control_port": 0,
            "upstream": engine.url,
            "control_token": TOKEN,
            "hold_timeout": 0.2,
            "poll_interval": 0.01,
            "health_interval": 0.05,
        }
    )
    agent = Agent(cfg)
    await agent.start()
    async with asyncio.timeout(10):
        while agent.board.state.value != "awake":
            await agent.board.wait_change(agent.board.version, 1.0)
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


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        yield c


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
