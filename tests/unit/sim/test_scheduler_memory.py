"""Pure state: device accounting and the request scheduler's pauses."""

from __future__ import annotations

import asyncio

import pytest

from vllm_sleep.testing.sim import GiB, GPUDevice, HostMemory, OutOfMemory
from vllm_sleep.testing.sim.scheduler import EngineDead, Pause, Scheduler


def test_device_accounting_and_listeners() -> None:
    gpu = GPUDevice("node-0/gpu-1", 80 * GiB)
    seen: list[tuple[object, int]] = []
    gpu.subscribe(lambda _d, who, delta: seen.append((who, delta)))
    gpu.set_held("a", 50 * GiB)
    with pytest.raises(OutOfMemory):
        gpu.set_held("b", 40 * GiB)
    gpu.set_held("a", GiB)
    assert gpu.free_bytes == 79 * GiB and gpu.node == "node-0"
    assert seen == [("a", 50 * GiB), ("a", -49 * GiB)]
    gpu.release("a")
    assert gpu.used_bytes == 0 and gpu.holders == {}


def test_host_memory_limit() -> None:
    mem = HostMemory("n", limit_bytes=10 * GiB)
    mem.pin("a", 8 * GiB)
    mem.pin("a", 9 * GiB)  # re-pinning replaces
    with pytest.raises(OutOfMemory):
        mem.pin("b", 2 * GiB)
    assert mem.pinned_bytes == 9 * GiB


async def test_pause_holds_new_requests_and_keep_freezes_running() -> None:
    s = Scheduler(max_num_seqs=1)
    a, b = s.new_request(1, 1), s.new_request(1, 1)
    await s.wait_admitted(a)
    waiter = asyncio.create_task(s.wait_admitted(b))  # no seat
    await asyncio.sleep(0)
    assert b.state == "waiting" and s.stats() == (1, 1)
    s.set_pause("sleep", Pause.ALL)
    frozen = asyncio.create_task(s.wait_steppable(a))
    await asyncio.sleep(0)
    assert not frozen.done()
    s.set_pause("sleep", Pause.NONE)
    await asyncio.wait_for(frozen, 1)
    s.finish(a)
    await asyncio.wait_for(waiter, 1)
    assert b.state == "running"


async def test_abort_and_kill_release_waiters() -> None:
    s = Scheduler(max_num_seqs=4)
    s.set_pause("api", Pause.NEW)
    r = s.new_request(1, 1)
    t = asyncio.create_task(s.wait_admitted(r))
    await asyncio.sleep(0)
    assert s.abort() == 1
    await asyncio.wait_for(t, 1)
    assert r.aborted
    r2 = s.new_request(1, 1)
    t2 = asyncio.create_task(s.wait_admitted(r2))
    await asyncio.sleep(0)
    s.kill()
    with pytest.raises(EngineDead):
        await asyncio.wait_for(t2, 1)
