"""The KV-only sleep tier (level 0 + /release_kv_cache_memory, ≥0.31) and vLLM's sleep report
line ("Sleep mode freed X GiB memory, Y GiB memory is still in use.")."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from vllm_sleep.testing.sim import EngineHost, GiB
from vllm_sleep.testing.sim.testkit import start, until

pytestmark = pytest.mark.contract

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("profile", ["0.34", "0.33"])
async def test_kv_only_tier_remaps_the_kv_cache_and_copies_no_weights(
    host: EngineHost, profile: str
) -> None:
    gpu = host.device("n/gpu-0", 80 * GiB)
    e = await start(
        host,
        "m",
        "--weights-size",
        "16Gi",
        "--gpu-memory-utilization",
        "0.5",
        device=gpu,
        env={"VLLM_SIM_PROFILE": profile},
    )
    async with httpx.AsyncClient(base_url=e.url, timeout=10) as c:
        assert (await c.post("/sleep?level=0")).json() == {"status": "sleeping", "level": 0}
        assert (await c.post("/release_kv_cache_memory")).json() == {"status": "kv_cache_released"}
        assert gpu.held_by(e) == e.residual + 16 * GiB  # the weights stay on the GPU
        assert e.level == 0 and (await c.get("/is_sleeping")).json() == {"is_sleeping": True}
        queued = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
        await until(lambda: e.sched.waiting == 1)
        assert (await c.post("/wake_up")).json() == {"status": "awake", "tags": None}
        assert (await queued).status_code == 200
        state = (await c.get("/_sim/state")).json()
    assert gpu.held_by(e) == e.share and host.pinned_bytes("n") == 0
    moved = state["transfers"]
    assert moved["weights_to_host"] == moved["weights_to_gpu"] == moved["weight_bytes_copied"] == 0
    assert (moved["kv_releases"], moved["kv_remaps"]) == (1, 1)
    assert moved["last_wake"] == {
        "tags": ["kv_cache"],
        "weights_copied": False,
        "kv_remapped": True,
    }
    assert [v.kind for v in e.violations] == ["request_while_asleep"]


async def test_level_1_wake_records_the_weight_copy(host: EngineHost) -> None:
    e = await start(host, "m", "--weights-size", "8Gi", "--gpu-memory-utilization", "0.5")
    async with httpx.AsyncClient(base_url=e.url) as c:
        await c.post("/sleep?level=1")
        await c.post("/wake_up")
    moved = e.transfers
    assert (moved.weights_to_host, moved.weights_to_gpu) == (1, 1)
    assert moved.weight_bytes_copied == 16 * GiB
    assert moved.last_wake == {
        "tags": ["kv_cache", "weights"],
        "weights_copied": True,
        "kv_remapped": True,
    }


@pytest.mark.parametrize("profile", ["0.34", "0.33", "legacy"])
async def test_sleep_logs_what_it_freed_and_what_the_device_still_uses(
    host: EngineHost, profile: str, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = host.device("n/gpu-0", 80 * GiB)
    env = {"VLLM_SIM_PROFILE": profile}
    neighbour = await start(host, "b", "--gpu-memory-utilization", "0.25", device=gpu, env=env)
    e = await start(
        host,
        "a",
        "--gpu-memory-utilization",
        "0.5",
        "--residual-memory",
        "2Gi",
        device=gpu,
        env=env,
    )
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(base_url=e.url) as c:
        await c.post("/sleep?level=1")
        state = (await c.get("/_sim/state")).json()
    line = "Sleep mode freed 38.00 GiB memory, 22.00 GiB memory is still in use."
    assert line in caplog.text  # Y is the whole device's use, the neighbour's 20 GiB included
    assert state["last_sleep"] == {
        "freed_bytes": 38 * GiB,
        "in_use_bytes": 2 * GiB + gpu.held_by(neighbour),
        "residual_bytes": 2 * GiB,
        "message": line,
    }
    assert state["memory"]["residual_bytes"] == 2 * GiB and e.log_lines == [line]
