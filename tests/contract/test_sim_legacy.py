"""The `legacy` profile (vLLM ≤0.16): empty 200s, no validation, requests while asleep kill it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

pytestmark = pytest.mark.contract

LEGACY = {"VLLM_SIM_PROFILE": "legacy"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
async def engine(host: EngineHost) -> SimEngine:
    return await start(host, "m", "--enable-sleep-mode", "--itl-seconds", "5", env=LEGACY)


@pytest.fixture
async def client(engine: SimEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as c:
        yield c


def kinds(engine: SimEngine) -> list[str]:
    return [v.kind for v in engine.violations]


async def assert_exited(engine: SimEngine) -> None:
    await asyncio.wait_for(engine.dead.wait(), 5)
    assert engine.state == "dead"
    async with asyncio.timeout(5):
        while True:  # the API server process exits: connection refused
            try:
                async with httpx.AsyncClient(base_url=engine.url) as c:
                    await c.get("/health")
            except httpx.TransportError:
                return
            await asyncio.sleep(0.01)


async def test_sleep_and_wake_answer_empty_200(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    r = await client.post("/sleep?level=1")
    assert (r.status_code, r.content) == (200, b"")
    assert (await client.get("/is_sleeping")).json() == {"is_sleeping": True}
    r = await client.post("/wake_up")
    assert (r.status_code, r.content) == (200, b"")
    assert engine.state == "awake"


async def test_non_int_level_is_plain_500(client: httpx.AsyncClient, engine: SimEngine) -> None:
    r = await client.post("/sleep?level=deep")
    assert r.status_code == 500 and r.text == "Internal Server Error"
    assert engine.state == "awake"


@pytest.mark.parametrize("level", ["0", "3"])
async def test_levels_other_than_1_discard_the_weights(
    client: httpx.AsyncClient, engine: SimEngine, level: str
) -> None:
    assert (await client.post(f"/sleep?level={level}")).status_code == 200
    assert engine.weights_discarded and engine.asleep_tags == {"weights", "kv_cache"}


async def test_partial_wake_resets_gauge(client: httpx.AsyncClient) -> None:
    await client.post("/sleep?level=1")
    await client.post("/wake_up?tags=weights")
    text = (await client.get("/metrics")).text
    assert 'sleep_state="awake"} 1.0' in text  # ≤0.30: reset after any wake


async def test_request_while_asleep_gets_empty_500_and_kills_the_engine(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=1")
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert (r.status_code, r.content) == (500, b"")
    await assert_exited(engine)
    assert kinds(engine) == ["request_while_asleep", "engine_crash"]
    assert engine.device.held_by(engine) == 0


async def test_streaming_request_while_asleep_gets_an_error_chunk(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=1")
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        lines = [ln async for ln in r.aiter_lines() if ln.startswith("data: ")]
    assert "error" in json.loads(lines[-2][6:]) and lines[-1] == "data: [DONE]"
    await assert_exited(engine)


async def test_inflight_request_when_sleep_arrives_crashes(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    task = asyncio.create_task(
        client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1000})
    )
    async with asyncio.timeout(5):
        while engine.sched.running != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    r = await client.post("/sleep?level=1")
    assert r.status_code == 200  # the sleep itself completes between two engine steps
    assert (await task).status_code == 500
    await assert_exited(engine)
    assert kinds(engine) == ["inflight_at_sleep", "engine_crash"]


async def test_pause_holds_instead_of_503(client: httpx.AsyncClient, engine: SimEngine) -> None:
    await client.post("/pause?wait_for_inflight_requests=true")
    task = asyncio.create_task(
        client.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1})
    )
    await asyncio.sleep(0.05)
    assert not task.done()
    await client.post("/resume")
    assert (await task).status_code == 200


async def test_routes_added_after_016_are_404(client: httpx.AsyncClient) -> None:
    for path in ("/release_kv_cache_memory", "/abort_requests"):
        assert (await client.post(path)).json() == {"detail": "Not Found"}


async def test_no_sleep_mode_metrics_before_032(client: httpx.AsyncClient) -> None:
    await client.post("/sleep")
    assert "vllm:sleep_mode_operation" not in (await client.get("/metrics")).text
