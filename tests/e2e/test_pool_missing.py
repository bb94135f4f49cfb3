"""A model whose GPUPool is deleted while its replica sleeps (a GitOps prune, a rename).

The operator keeps the pod, wakes nothing and says so for the whole model (`Scheduled`=False,
`NoPlacement`); the gateway answers the model's requests 503 `model_unavailable` at once, and
one already held at the sleeping replica's agent too, instead of holding each for
`wake.timeout` (docs/gateway.md "Hold semantics"). Re-creating the pool resumes holding and
waking.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from conftest import Kube

from .conftest import Proc
from .helpers import apply, chat, get_model, wait_for, wait_phase
from .test_gateway import CHAT, gauge, wait_listed
from .test_pools import make_pool, pooled, violations
from .test_pools import pools as pools  # the fixture, shared

HELD = "vllm_sleep_gateway_held_requests"
# Far past every client timeout below: a request the gateway held for the wake would show as
# the client's ReadTimeout, not as an answer.
WAKE = {"timeout": "10m"}


def scheduled(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    conditions = (get_model(kube, namespace, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Scheduled"), {})


def refused_for_the_pool(r: httpx.Response, pool: str) -> None:
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "model_unavailable", r.text
    assert (
        "NoPlacement" in error["message"]
        and f"GPUPool '{pool}' does not exist" in (error["message"])
    ), r.text
    assert int(r.headers["Retry-After"]) > 0


async def held(gateway: str, served: str) -> None:
    async with asyncio.timeout(30):
        while gauge(gateway, HELD, served) < 1:  # noqa: ASYNC110 - a metric has no event
            await asyncio.sleep(0.05)


def test_a_deleted_pool_is_refused_at_once_and_a_recreated_one_wakes_again(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    pools: list[str],
    kubelet_admin: httpx.Client,
) -> None:
    served = f"lone-{namespace}"
    pool = make_pool(kube, pools, namespace, "gpu-node-1", "TimeSlicing")
    # Policy Asleep: a request is held at the sleeping replica's agent and the operator wakes
    # nothing, so only the pool's deletion can end that hold before wake.timeout.
    asleep = pooled("lone", namespace, pool, 0.4, servedModelName=served, wake=WAKE)
    asleep["spec"]["sleep"]["policy"] = "Asleep"
    apply(kube, asleep)
    wait_phase(kube, namespace, "lone", "Asleep", timeout=120)
    wait_listed(gateway, served, "Asleep")

    async def held_then_pool_deleted() -> httpx.Response:
        async with httpx.AsyncClient(base_url=gateway, timeout=120) as client:
            waiting = asyncio.create_task(client.post(CHAT, json=chat(served)))
            await held(gateway, served)
            kube.kubectl("delete", "gpupool", pool, "--wait=false")
            return await waiting

    refused_for_the_pool(asyncio.run(held_then_pool_deleted()), pool)
    gone = scheduled(kube, namespace, "lone")
    assert (gone["status"], gone["reason"]) == ("False", "NoPlacement"), gone
    assert gauge(gateway, HELD, served) == 0
    # A new request is answered at once, though the replica's agent could hold it.
    refused_for_the_pool(httpx.post(f"{gateway}{CHAT}", json=chat(served), timeout=60), pool)

    # The pool is back: the request is held again, and woken once the policy allows it.
    make_pool(kube, pools, namespace, "gpu-node-1", "TimeSlicing")
    wait_for(
        lambda: scheduled(kube, namespace, "lone").get("status") == "True",
        120,
        what="Scheduled again with the pool back",
    )

    async def held_then_woken() -> httpx.Response:
        async with httpx.AsyncClient(base_url=gateway, timeout=120) as client:
            waiting = asyncio.create_task(client.post(CHAT, json=chat(served)))
            await held(gateway, served)
            apply(kube, pooled("lone", namespace, pool, 0.4, servedModelName=served, wake=WAKE))
            return await waiting

    r = asyncio.run(held_then_woken())
    assert r.status_code == 200, r.text
    assert violations(kubelet_admin, namespace) == []
