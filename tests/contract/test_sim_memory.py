"""Shared GPU memory (docs/vllm.md "Sleep levels", "Shared GPUs"): startup check, residuals, wake OOM, profiling race."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from vllm_sleep.testing.sim import EngineHost, GiB
from vllm_sleep.testing.sim.testkit import start

pytestmark = pytest.mark.contract


ALL = ["0.34", "0.33", "legacy"]


@pytest.mark.parametrize("profile", ALL)
async def test_startup_fails_when_free_memory_is_below_the_share(
    host: EngineHost, profile: str
) -> None:
    gpu, env = host.device("node-0/gpu-0", 80 * GiB), {"VLLM_SIM_PROFILE": profile}
    a = await start(host, "a", "--gpu-memory-utilization", "0.6", device=gpu, env=env)
    b = await start(host, "b", "--gpu-memory-utilization", "0.6", device=gpu, env=env)
    assert a.state == "awake" and b.state == "failed" and b.dead.is_set()
    assert b.failure is not None
    assert b.failure.startswith(
        "Free memory on device [cuda:0] (32.00/80.00 GiB) on startup is less than desired GPU memory utilization (0.6, 48.00 GiB)"
    )
    assert [v.kind for v in host.violations()] == ["startup_oom"]
    assert gpu.held_by(b) == 0
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient(base_url=b.url) as c:
            await c.get("/health")


@pytest.mark.parametrize(
    ("profile", "kept_awake"), [("0.34", True), ("0.33", False), ("legacy", False)]
)
async def test_sleeping_engine_keeps_residual_and_pins_host_memory(
    host: EngineHost, profile: str, kept_awake: bool
) -> None:
    gpu = host.device("node-0/gpu-0", 80 * GiB)
    a = await start(
        host,
        "a",
        "--gpu-memory-utilization",
        "0.5",
        "--weights-size",
        "16Gi",
        device=gpu,
        env={"VLLM_SIM_PROFILE": profile},
    )
    assert gpu.held_by(a) == 40 * GiB
    async with httpx.AsyncClient(base_url=a.url) as c:
        await c.post("/sleep?level=1")
        assert gpu.held_by(a) == a.residual == int(1.4 * GiB)
        assert host.pinned_bytes("node-0") == 16 * GiB
        await c.post("/wake_up")
        assert gpu.held_by(a) == 40 * GiB
        # 0.34 keeps the backup for the engine's life; before, it was freed on wake (docs/vllm.md#vllm-034)
        assert host.pinned_bytes("node-0") == (16 * GiB if kept_awake else 0)
        await c.post("/sleep?level=1")
        assert host.pinned_bytes("node-0") == 16 * GiB
    await a.stop()
    assert host.pinned_bytes("node-0") == 0  # the process exited


@pytest.mark.parametrize("profile", ALL)
async def test_two_engines_share_a_gpu_by_sleeping(host: EngineHost, profile: str) -> None:
    gpu, env = host.device("node-0/gpu-0", 80 * GiB), {"VLLM_SIM_PROFILE": profile}
    a = await start(host, "a", "--gpu-memory-utilization", "0.6", device=gpu, env=env)
    async with httpx.AsyncClient(base_url=a.url) as c:
        await c.post("/sleep?level=1")
    b = await start(host, "b", "--gpu-memory-utilization", "0.6", device=gpu, env=env)
    assert b.state == "awake"
    assert host.violations() == []


@pytest.mark.parametrize("profile", ["0.34", "0.33"])
async def test_wake_fails_with_cuda_oom_when_a_neighbour_holds_the_memory(
    host: EngineHost, profile: str
) -> None:
    gpu = host.device("node-0/gpu-0", 80 * GiB)
    a = await start(
        host, "a", "--gpu-memory-utilization", "0.6", device=gpu, env={"VLLM_SIM_PROFILE": profile}
    )
    async with httpx.AsyncClient(base_url=a.url) as c:
        await c.post("/sleep?level=1")
        await start(host, "b", "--gpu-memory-utilization", "0.6", device=gpu)
        r = await c.post("/wake_up")
        assert r.status_code == 500
        assert (
            r.json()["error"]["message"]
            == "Call to `wake_up` method failed: CUDA Error: out of memory at /workspace/csrc/cumem_allocator.cpp:62"
        )
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": True}
        assert (await c.get("/health")).status_code == 200  # it stays alive, asleep
    assert a.state == "sleeping" and gpu.held_by(a) == a.residual
    assert [v.kind for v in host.violations()] == ["wake_oom"]


async def test_legacy_wake_oom_is_an_empty_500(host: EngineHost) -> None:
    gpu = host.device("node-0/gpu-0", 80 * GiB)
    a = await start(
        host, "a", "--gpu-memory-utilization", "0.6", device=gpu, env={"VLLM_SIM_PROFILE": "legacy"}
    )
    async with httpx.AsyncClient(base_url=a.url) as c:
        await c.post("/sleep?level=1")
        await start(host, "b", "--gpu-memory-utilization", "0.6", device=gpu)
        r = await c.post("/wake_up")
        assert (r.status_code, r.content) == (500, b"")
    assert a.state == "sleeping"


@pytest.mark.parametrize("profile", ALL)
async def test_sleep_during_neighbour_profiling_fails_the_starting_engine(
    host: EngineHost, profile: str
) -> None:
    gpu, env = host.device("node-0/gpu-0", 80 * GiB), {"VLLM_SIM_PROFILE": profile}
    a = await start(host, "a", "--gpu-memory-utilization", "0.4", device=gpu, env=env)
    b = await start(
        host,
        "b",
        "--gpu-memory-utilization",
        "0.4",
        "--load-seconds",
        "150",
        "--profiling-fraction",
        "1",
        device=gpu,
        env=env,
        wait=False,
    )
    async with httpx.AsyncClient(base_url=a.url) as c:
        assert (await c.post("/sleep?level=1")).status_code == 200
    assert await b.wait_loaded() == "failed"
    assert b.failure is not None and b.failure.startswith(
        "Error in memory profiling. Initial free memory"
    )
    assert sorted(v.kind for v in host.violations()) == ["concurrent_transition", "profiling_race"]


async def test_requests_to_a_loading_engine_wait_for_it(host: EngineHost) -> None:
    e = await start(host, "m", "--load-seconds", "50", wait=False)
    async with httpx.AsyncClient(base_url=e.url, timeout=10) as c:
        r = await c.get("/health")
    assert r.status_code == 200 and e.state == "awake"


async def test_host_memory_limit_oom_kills_a_level1_sleep(host: EngineHost) -> None:
    host.host_memory("node-1", limit_bytes=8 * GiB)
    gpu = host.device("node-1/gpu-0", 80 * GiB)
    a = await start(host, "a", "--weights-size", "16Gi", device=gpu)
    async with httpx.AsyncClient(base_url=a.url) as c:
        r = await c.post("/sleep?level=1")
    assert r.status_code == 500
    await asyncio.wait_for(a.dead.wait(), 5)
    assert {v.kind for v in host.violations()} == {"host_oom", "engine_crash"}


@pytest.mark.parametrize(("limit_gib", "killed"), [(24, False), (8, True)])
async def test_a_backup_over_the_containers_memory_limit_is_an_oom_kill(
    host: EngineHost, limit_gib: int, killed: bool
) -> None:
    a = await start(host, "a", "--weights-size", "16Gi", memory_limit_bytes=limit_gib * GiB)
    async with httpx.AsyncClient(base_url=a.url) as c:
        r = await c.post("/sleep?level=1")
    assert (r.status_code == 500) is killed and a.dead.is_set() is killed
    assert [v.kind for v in a.violations] == (["host_oom", "engine_crash"] if killed else [])


async def test_stop_releases_memory_and_is_not_a_violation(host: EngineHost) -> None:
    gpu = host.device("node-0/gpu-0", 80 * GiB)
    a = await start(host, "a", device=gpu)
    await a.stop()
    await a.stop()  # idempotent
    assert gpu.used_bytes == 0 and a.dead.is_set() and host.violations() == []
    b = await start(host, "b", "--port", str(a.bound_port), device=gpu)  # the port is free again
    assert b.state == "awake"


async def test_weights_that_leave_no_room_for_the_kv_cache_fail_startup(host: EngineHost) -> None:
    from vllm_sleep.testing.sim.testkit import start

    dev = host.device("n/gpu-big", total_bytes=80 * 2**30)
    engine = await start(
        host,
        "m",
        "--gpu-memory-utilization",
        "0.5",
        device=dev,
        env={"VLLM_SIM_WEIGHTS_BYTES": "60Gi"},
        wait=False,
    )
    await engine.dead.wait()
    assert engine.state == "failed"
    assert (
        engine.failure is not None and "No available memory for the cache blocks" in engine.failure
    )
    assert dev.held_by(engine) == 0
