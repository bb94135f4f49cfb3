"""Sleep and wake through the agent's control port, in front of the simulator.

The legacy profile (vLLM ≤0.16) kills the engine when a single request reaches it asleep, and
records every such violation: zero violations under load is the agent's core guarantee.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import httpx
import pytest

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

from .agent_wait import wait_state

pytestmark = pytest.mark.contract

TOKEN = "another-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COMPLETION = {"model": "m", "prompt": "hello", "max_tokens": 2}


@pytest.fixture
async def host() -> AsyncIterator[EngineHost]:
    h = EngineHost(time_scale=0.002)
    yield h
    await h.stop_all()


@pytest.fixture(params=["0.34", "0.33", "legacy"])
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def engine(host: EngineHost, profile: str) -> SimEngine:
    env = {"VLLM_SIM_PROFILE": profile}
    return await start(host, "m", "--enable-sleep-mode", "--host", "127.0.4.1", env=env)


@pytest.fixture
async def agent(engine: SimEngine) -> AsyncIterator[Agent]:
    async with Agent(config(engine)) as a:
        await wait_state(a, "awake")
        yield a


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=30, trust_env=False, limits=limits) as c:
        yield c


def config(engine: SimEngine, **overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "listen_host": "127.0.5.1",
        "public_port": 0,
        "control_port": 0,
        "upstream": engine.url,
        "control_token": TOKEN,
        "hold_timeout": 20.0,
        "poll_interval": 0.01,
        "health_interval": 0.05,
        "settle_time": 0.01,
        **overrides,
    }
    return AgentConfig.model_validate(values)


async def control(http: httpx.AsyncClient, agent: Agent, path: str) -> httpx.Response:
    return await http.post(agent.control_url + path, headers=AUTH)


@pytest.mark.parametrize("level", [1, 2])
async def test_sleep_wake_round_trip(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient, level: int
) -> None:
    for _ in range(2):
        resp = await control(http, agent, f"/sleep?level={level}")
        assert resp.status_code == 200, resp.text
        assert (resp.json()["state"], resp.json()["level"]) == ("asleep", level)
        assert engine.state == "sleeping" and engine.level == level
        again = await control(http, agent, f"/sleep?level={level}")
        assert again.status_code == 200  # idempotent

        resp = await control(http, agent, "/wake")
        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "awake" and str(engine.state) == "awake"
        assert (await control(http, agent, "/wake")).status_code == 200

        served = await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
        assert served.status_code == 200, served.text
    assert not engine.violations  # incl. garbage_weights: level 2 reloaded before serving


@pytest.mark.parametrize("level", [1, 2])
async def test_a_granted_sleep_is_woken_by_the_first_held_request(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient, level: int
) -> None:
    for _ in range(2):  # each sleep grants its own wake
        resp = await control(http, agent, f"/sleep?level={level}&wake_on_request=1")
        assert resp.status_code == 200, resp.text
        assert (resp.json()["state"], resp.json()["wake_on_request"]) == ("asleep", True)
        # No /wake from anyone: the held request wakes the engine, and is served once awake.
        served = await asyncio.gather(
            *(http.post(agent.public_url + "/v1/completions", json=COMPLETION) for _ in range(3))
        )
        assert [r.status_code for r in served] == [200] * 3, [r.text for r in served]
        state = (await http.get(agent.control_url + "/state", headers=AUTH)).json()
        assert (state["state"], state["woken_by"], state["wake_on_request"]) == (
            "awake",
            "request",
            False,
        )
        assert state["wake_started"] <= state["since"]
    # An ungranted sleep stays asleep under a request until the operator wakes it.
    assert (await control(http, agent, f"/sleep?level={level}")).status_code == 200
    held = asyncio.create_task(http.post(agent.public_url + "/v1/completions", json=COMPLETION))
    async with asyncio.timeout(10):
        while agent.gate.held == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    assert agent.board.state.value == "asleep" and not held.done()
    resp = await control(http, agent, "/wake")
    assert resp.status_code == 200 and resp.json()["woken_by"] == "operator"
    assert (await held).status_code == 200
    assert not engine.violations  # incl. garbage_weights: level 2 reloaded before serving


async def test_bad_control_input_is_400(
    agent: Agent, http: httpx.AsyncClient, profile: str
) -> None:
    kv_only = () if profile != "legacy" else ("/sleep?level=0",)  # needs vLLM ≥0.31
    for path in (
        "/sleep?level=3",
        "/sleep?level=-1",
        "/sleep?level=x",
        *kv_only,
        "/sleep?drain_timeout=-1",
        "/sleep?drain_timeout=nan",
        "/sleep?wake_on_request=yes",
        "/sleep?grant_only=2",
    ):
        resp = await control(http, agent, path)
        assert resp.status_code == 400, (path, resp.text)
        assert "message" in resp.json()["error"]
    resp = await http.get(agent.control_url + "/state?wait=x&version=1", headers=AUTH)
    assert resp.status_code == 400
    assert agent.board.state.value == "awake"


async def test_drain_timeout_is_504_and_readmits(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient
) -> None:
    slow = asyncio.create_task(
        http.post(agent.public_url + "/v1/completions", json={**COMPLETION, "max_tokens": 2000})
    )
    async with asyncio.timeout(10):
        while agent.gate.inflight == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    resp = await control(http, agent, "/sleep?level=1&drain_timeout=0.01")
    assert resp.status_code == 504, resp.text
    assert resp.json()["state"]["state"] == "awake"
    assert (
        await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
    ).status_code == 200
    assert (await slow).status_code == 200
    assert engine.state == "awake" and not engine.violations


async def test_transition_in_progress_is_409(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient
) -> None:
    slow = asyncio.create_task(
        http.post(agent.public_url + "/v1/completions", json={**COMPLETION, "max_tokens": 100})
    )
    async with asyncio.timeout(10):
        while agent.gate.inflight == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    sleeping = asyncio.create_task(control(http, agent, "/sleep?level=1&drain_timeout=30"))
    await wait_state(agent, "draining")
    assert (await control(http, agent, "/sleep?level=1")).status_code == 409
    assert (await control(http, agent, "/wake")).status_code == 409
    assert (await slow).status_code == 200  # the drain waits for it, never aborts it
    assert (await sleeping).status_code == 200
    assert engine.state == "sleeping" and not engine.violations


async def test_agent_restarted_beside_a_sleeping_engine_reports_asleep(
    engine: SimEngine, http: httpx.AsyncClient
) -> None:
    async with Agent(config(engine)) as first:
        await wait_state(first, "awake")
        resp = await control(http, first, "/sleep?level=2&wake_on_request=1")
        assert resp.status_code == 200 and resp.json()["wake_on_request"] is True
    async with Agent(config(engine)) as second:
        assert second.board.state.value == "loading"  # never assumes awake
        await wait_state(second, "asleep", "awake")
        state = (await http.get(second.control_url + "/state", headers=AUTH)).json()
        assert (state["state"], state["level"]) == ("asleep", 2)  # from vllm:engine_sleep_state
        # The grant was the first agent's: a restarted one holds for the operator.
        assert state["wake_on_request"] is False
        held = asyncio.create_task(
            http.post(second.public_url + "/v1/completions", json=COMPLETION)
        )
        async with asyncio.timeout(10):
            while second.gate.held == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert second.board.state.value == "asleep" and not held.done()
        assert (await control(http, second, "/wake")).status_code == 200
        assert (await held).status_code == 200
    assert not engine.violations


async def test_requests_during_loading_are_held(host: EngineHost, http: httpx.AsyncClient) -> None:
    engine = await start(
        host,
        "m",
        "--enable-sleep-mode",
        "--host",
        "127.0.4.2",
        "--load-seconds",
        "20",
        wait=False,
    )
    async with Agent(config(engine)) as agent:
        assert agent.board.state.value == "loading"
        resp = await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
        assert resp.status_code == 200, resp.text
        assert agent.board.state.value == "awake"
    assert not engine.violations


async def test_dead_engine_makes_the_agent_fail_and_refuse(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient
) -> None:
    await engine.stop()
    await wait_state(agent, "failed")
    resp = await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
    assert resp.status_code == 503 and "Retry-After" in resp.headers
    assert (await http.get(agent.public_url + "/health")).status_code >= 500
    state = (await http.get(agent.control_url + "/state", headers=AUTH)).json()
    assert state["engine_alive"] is False
    assert (await control(http, agent, "/sleep?level=1")).status_code == 409


@pytest.mark.parametrize("profile", ["legacy"])
async def test_thousand_requests_with_interleaved_sleeps_no_violations(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient, profile: str
) -> None:
    total, workers = 1000, 40
    statuses: list[int] = []
    counter = itertools.count()

    async def client() -> None:
        while next(counter) < total:
            body = {**COMPLETION, "stream": len(statuses) % 3 == 0}
            resp = await http.post(agent.public_url + "/v1/completions", json=body)
            statuses.append(resp.status_code)

    async def operator() -> int:
        cycles = 0
        for level in itertools.cycle([1, 2]):
            if len(statuses) >= total:
                return cycles
            resp = await control(http, agent, f"/sleep?level={level}&drain_timeout=1")
            assert resp.status_code in (200, 504), resp.text
            await asyncio.sleep(0.01)  # let requests pile up in the hold
            resp = await control(http, agent, "/wake")
            assert resp.status_code == 200, resp.text
            cycles += 1
            await asyncio.sleep(0.01)
        return cycles

    op = asyncio.create_task(operator())
    await asyncio.gather(*(client() for _ in range(workers)))
    cycles = await op
    assert len(statuses) == total
    assert set(statuses) == {200}
    assert cycles >= 3
    held = agent.metrics.registry.get_sample_value(
        "vllm_sleep_agent_hold_duration_seconds_count", {"outcome": "admitted"}
    )
    assert held and held > 0  # the hold was exercised, not just the happy path
    assert engine.violations == [] and engine.state == "awake"
    assert agent.gate.inflight == 0 and agent.gate.held == 0


@pytest.mark.parametrize("profile", ["legacy"])
async def test_granted_sleeps_under_load_racing_operator_orders_no_violations(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient, profile: str
) -> None:
    """The agent's own wakes under load, raced by what the operator may send meanwhile: its
    `/wake` (joins, or finds it done), a take-back (`grant_only`), nothing. No request may reach
    the engine asleep or mid-transition, no level-2 wake may skip the reload, none may hang."""
    total, workers = 600, 30
    statuses: list[int] = []
    counter = itertools.count()

    async def client() -> None:
        while next(counter) < total:
            body = {**COMPLETION, "stream": len(statuses) % 3 == 0}
            resp = await http.post(agent.public_url + "/v1/completions", json=body)
            statuses.append(resp.status_code)

    async def operator() -> int:
        cycles = 0
        for level in itertools.cycle([1, 2]):
            if len(statuses) >= total:
                return cycles
            # A granted sleep; 409 while the agent's own wake (or the last one) still runs.
            resp = await control(
                http, agent, f"/sleep?level={level}&drain_timeout=1&wake_on_request=1"
            )
            assert resp.status_code in (200, 409, 504), resp.text
            await asyncio.sleep(0.002 * (cycles % 4))
            if cycles % 3 == 0:
                resp = await control(http, agent, "/wake")
                assert resp.status_code == 200, resp.text
            elif cycles % 3 == 1:
                resp = await control(http, agent, "/sleep?level=1&grant_only=1")
                assert resp.status_code in (200, 409), resp.text
                assert resp.status_code == 409 or resp.json()["state"] == "asleep"
            cycles += 1
            await asyncio.sleep(0.01)
        return cycles

    op = asyncio.create_task(operator())
    await asyncio.gather(*(client() for _ in range(workers)))
    cycles = await op
    assert len(statuses) == total and set(statuses) == {200}
    assert cycles >= 3
    woken = agent.metrics.registry.get_sample_value(
        "vllm_sleep_agent_transitions_total", {"kind": "wake", "result": "ok"}
    )
    assert woken and woken >= 2  # the agent's own wakes were exercised
    assert engine.violations == []
    assert agent.gate.inflight == 0 and agent.gate.held == 0
