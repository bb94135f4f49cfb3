"""Sleep failures the field reports (docs/vllm.md "Field facts"): the neighbour assertion
"Memory usage increased after sleeping" and, on vLLM 0.17-0.27, a sleep that aborts running
requests racing their kernels (vllm#45520)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from vllm_sleep.testing.sim import EngineHost, GiB, SimEngine
from vllm_sleep.testing.sim.testkit import start, until

pytestmark = pytest.mark.contract

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
ASSERTION = "Call to `sleep` method failed: AssertionError: Memory usage increased after sleeping."


def kinds(engine: SimEngine) -> list[str]:
    return [v.kind for v in engine.violations]


@pytest.mark.parametrize("profile", ["0.34", "0.33", "legacy"])
async def test_an_injected_assertion_fails_the_sleep_once_and_a_retry_completes_it(
    host: EngineHost, profile: str
) -> None:
    e = await start(
        host,
        "m",
        "--gpu-memory-utilization",
        "0.5",
        "--fail-sleeps",
        "1",
        env={"VLLM_SIM_PROFILE": profile},
    )
    async with httpx.AsyncClient(base_url=e.url, timeout=10) as c:
        r = await c.post("/sleep?level=1")
        assert r.status_code == 500
        if profile != "legacy":
            assert r.json()["error"]["message"] == ASSERTION
        # the memory is released, but the executor does not count itself asleep
        assert e.device.held_by(e) == e.residual and e.sleep_unconfirmed
        legacy_view = (await c.get("/is_sleeping")).json()["is_sleeping"]
        assert legacy_view is (profile != "legacy")  # ≥0.17: the scheduler pause still shows
        assert (await c.post("/sleep?level=1")).status_code == 200
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": True}
        assert not e.sleep_unconfirmed
        assert (await c.post("/wake_up")).status_code == 200
        assert e.state == "awake" and e.device.held_by(e) == e.share
    assert e.violations == []


async def test_a_neighbour_allocating_more_than_the_sleep_frees_trips_the_assertion(
    host: EngineHost,
) -> None:
    gpu = host.device("n/gpu-0", 80 * GiB)
    a = await start(
        host,
        "a",
        "--gpu-memory-utilization",
        "0.1",
        "--weights-size",
        "4Gi",
        "--first-sleep-seconds",
        "200",
        device=gpu,
    )
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as c:
        sleeping = asyncio.create_task(c.post("/sleep?level=1"))
        await until(lambda: a.transition == "sleep")
        b = await start(
            host, "b", "--gpu-memory-utilization", "0.5", "--load-seconds", "5", device=gpu
        )
        r = await sleeping
        assert r.status_code == 500 and r.json()["error"]["message"] == ASSERTION
        assert b.state == "awake" and a.sleep_unconfirmed
        assert (await c.post("/sleep?level=1")).status_code == 200  # asking again completes
    assert a.last_sleep is not None and a.last_sleep["freed_bytes"] == 0
    assert (kinds(a), kinds(b)) == ([], ["concurrent_transition"])  # b started during a's sleep


async def test_waking_after_a_failed_sleep_resumes_on_unmapped_memory(host: EngineHost) -> None:
    """Why the sleep must be asked again: the executor never knew it slept."""
    e = await start(
        host,
        "m",
        "--gpu-memory-utilization",
        "0.5",
        "--fail-sleeps",
        "1",
        "--served-model-name",
        "m",
    )
    async with httpx.AsyncClient(base_url=e.url, timeout=10) as c:
        assert (await c.post("/sleep?level=1")).status_code == 500
        assert (await c.post("/wake_up")).json() == {"status": "awake", "tags": None}
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": False}
        r = await c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500
    await asyncio.wait_for(e.dead.wait(), 5)
    assert kinds(e) == ["request_while_asleep", "engine_crash"]


@pytest.mark.parametrize(
    ("version", "query", "dies"),
    [
        ("0.27.0", "level=1", True),  # mode abort with requests running: the race
        ("0.27.0", "level=1&mode=wait", False),  # drained first
        ("0.28.0", "level=1", False),  # the worker synchronises the device first
    ],
)
async def test_an_aborting_sleep_on_0_17_to_0_27_kills_the_engine_core(
    host: EngineHost, version: str, query: str, dies: bool
) -> None:
    e = await start(
        host,
        "m",
        "--served-model-name",
        "m",
        "--itl-seconds",
        "100",  # 0.2 s per token at the test scale: still running when /sleep arrives
        "--vllm-version",
        version,
        env={"VLLM_SIM_PROFILE": "0.33"},
    )
    async with httpx.AsyncClient(base_url=e.url, timeout=10) as c:
        assert (await c.get("/version")).json() == {"version": version}
        inflight = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
        await until(lambda: e.sched.running == 1)
        assert (await c.post(f"/sleep?{query}")).status_code == 200
        answered = (await inflight).status_code
    assert answered == 200 or dies  # aborted (200), unless the dying engine answered first
    if dies:
        await asyncio.wait_for(e.dead.wait(), 5)
        assert kinds(e) == ["inflight_at_sleep", "engine_crash"]
    else:
        await asyncio.sleep(0.1)
        assert not e.dead.is_set() and e.state == "sleeping"
        assert kinds(e) == ([] if "wait" in query else ["inflight_at_sleep"])
