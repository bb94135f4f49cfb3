"""The soak's short version (issue 15): the 30-minute soak bench's arrival generator
(`vllm_sleep.testing.arrivals`: Zipf popularity, bursty Gamma gaps, a diurnal swing) replayed
for `VLLM_SLEEP_SOAK_SECONDS` (40 by default) through the gateway, on a pool of both GPUs of a
node shared by five models of two sizes, streamed and non-streamed. Every request is answered,
swaps happen, and no simulator records a contract violation (no request to a sleeper, no OOM,
no overlapping transitions). The long run is `bench/soak_bench.py` (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import httpx
import pytest

from conftest import Kube
from vllm_sleep.testing.arrivals import TraceShape, arrivals
from vllm_sleep.testing.replay import Outcome, replay

from .helpers import apply, events, wait_phase
from .test_pools import device_of, make_pool, pooled, pools, remove_models, violations

__all__ = ["pools"]  # the fixture, shared with the pool tests

SECONDS = float(os.environ.get("VLLM_SLEEP_SOAK_SECONDS", "40"))
SIZES = (0.4, 0.7)  # two small ones fit a device awake, a large one fills it


async def _replay(gateway: str, names: list[str]) -> list[Outcome]:
    shape = TraceShape(rate=3.0, period=SECONDS / 2)  # two compressed "days"
    trace = arrivals(names, SECONDS, seed=15, shape=shape)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        return await replay(http, gateway, trace)


@pytest.mark.timeout(300 + int(SECONDS))
def test_bursty_multi_model_arrivals_on_a_shared_two_gpu_pool(
    kube: Kube,
    namespace: str,
    gateway: str,
    kubelet_admin: httpx.Client,
    pools: list[str],
) -> None:
    pool = make_pool(kube, pools, namespace, "gpu-node-0", "DRA")
    names = [f"s{i}" for i in range(5)]
    for i, name in enumerate(names):
        apply(kube, pooled(name, namespace, pool, SIZES[i % 2], sleep={"idleTimeout": "1h"}))
    for name in names:
        wait_phase(kube, namespace, name, "Asleep", timeout=180)
    assert len({device_of(kube, namespace, n) for n in names}) == 2  # both GPUs shared

    outcomes = asyncio.run(_replay(gateway, names))
    failed = [(o.arrival.model, o.status, o.error) for o in outcomes if not o.ok]
    assert not failed, failed
    assert {o.arrival.stream for o in outcomes} == {True, False}
    assert violations(kubelet_admin, namespace) == []
    swaps = [
        e.message
        for name in names
        for e in events(kube, namespace, name)
        if e.reason == "Evicted" and "to wake" in e.message
    ]
    assert swaps, "the trace never needed a swap"
    remove_models(kube, namespace)
