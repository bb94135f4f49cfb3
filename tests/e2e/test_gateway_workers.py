"""A gateway of several worker processes against the real control plane.

Each worker has its own watches, routing table and hold queue; demand goes through the one
demand Lease of the model, so requests held by different workers are still one model's demand:
the model wakes once, and every held request is answered.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from conftest import Kube

from .conftest import GatewayProc, Proc, start_gateway
from .helpers import apply, chat, model_manifest, wait_for, wait_phase
from .test_gateway import CHAT, violations, wait_listed, woke

WORKERS = 2


@pytest.fixture(scope="module")
def workers_gateway(
    kube: Kube, crds: None, operator: Proc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    proc = start_gateway(kube, tmp_path_factory.mktemp("gateway-workers"), workers=WORKERS)
    yield proc
    proc.stop()
    print(f"--- gateway (workers) log tail ---\n{proc.tail(100)}")


def per_worker(gateway: str) -> dict[str, float]:
    """Requests each worker answered (its own series in the merged /metrics)."""
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    found = re.findall(
        r'^vllm_sleep_gateway_worker_requests_total\{worker="(\d+)"\} (\S+)$', text, re.M
    )
    return {worker: float(value) for worker, value in found}


def test_one_sleeping_model_held_by_several_workers_wakes_once(
    kube: Kube, namespace: str, workers_gateway: GatewayProc, kubelet_admin: httpx.Client
) -> None:
    gateway = workers_gateway.url
    served = f"workers-{namespace}"
    apply(kube, model_manifest("workers", namespace, servedModelName=served))
    wait_phase(kube, namespace, "workers", "Asleep", timeout=120)
    # Every worker watches on its own: wait until each has it (new connections spread).
    for _ in range(4 * WORKERS):
        wait_listed(gateway, served, "Asleep")
    assert woke(kube, namespace, "workers") == 0
    before = per_worker(gateway)

    async def burst() -> list[httpx.Response]:
        # One connection per request: the kernel spreads connections, not requests.
        async def one(i: int) -> httpx.Response:
            async with httpx.AsyncClient(base_url=gateway, timeout=120) as client:
                return await client.post(CHAT, json=chat(served, f"req {i}", max_tokens=3))

        return await asyncio.gather(*(one(i) for i in range(24)))

    responses = asyncio.run(burst())
    bad = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not bad, bad
    for r in responses:
        assert r.json()["choices"][0]["message"]["content"]

    after = per_worker(gateway)
    # The burst reached more than one worker: besides the /metrics read that took `before`
    # (counted once it was answered), each of two workers answered a chat request.
    served_by = {w for w, n in after.items() if n - before.get(w, 0.0) >= 2}
    assert len(served_by) > 1, (before, after)

    wait_phase(kube, namespace, "workers", "Awake", timeout=30)
    wait_for(lambda: woke(kube, namespace, "workers") >= 1, 30, what="Woke event")
    assert woke(kube, namespace, "workers") == 1
    assert violations(kubelet_admin, namespace) == []
