"""GPU pools on the local control plane (issue 11): models share one simulated GPU and a request
for a sleeping model swaps it in. The simulator runs vLLM's `legacy` profile, so a request that
reached a sleeping engine would kill it; every test ends asserting zero contract violations (no
OOM at start-up or wake, no overlapping transitions on a device, no request to a sleeper).

The local cluster has nodes of two 80 GiB GPUs. To put several models on *one* GPU, each test
pins the node's first GPU with an AlwaysAwake model of 0.8 (never evicted): the others then fit
only on the second GPU.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from conftest import Kube

from .conftest import Proc
from .helpers import (
    apply,
    chat,
    events,
    get_model,
    model_manifest,
    model_pods,
    wait_for,
    wait_phase,
)

DEVICE = "vllm-sleep.io/device"
# Requests of the random-traffic test; VLLM_SLEEP_POOL_REQUESTS=10000 for the full run
# (about 13 requests a second, most needing a swap: ~13 minutes on 2 cores, passed).
REQUESTS = int(os.environ.get("VLLM_SLEEP_POOL_REQUESTS", "200"))


def violations(kubelet_admin: httpx.Client, namespace: str) -> list[dict[str, object]]:
    data = kubelet_admin.get("/violations", params={"namespace": namespace}).json()
    return list(data["violations"])


@pytest.fixture
def pools(kube: Kube) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        kube.kubectl("delete", "gpupool", name, "--ignore-not-found", "--wait=false", check=False)


def make_pool(
    kube: Kube, made: list[str], namespace: str, node: str, sharing: str, **spec: Any
) -> str:
    name = f"{namespace[-20:]}-{sharing.lower()}"[-60:].strip("-")
    _wait_node_free_of_others(kube, node, namespace)
    body: dict[str, Any] = {
        "sharing": sharing,
        "deviceMemory": "80Gi",
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        **spec,
    }
    if sharing == "DRA":
        body["deviceClassName"] = "sim-gpu.vllm-sleep.io"
    else:
        body["deviceResourceName"] = "nvidia.com/gpu.shared"
    if sharing == "Exclusive":
        body["slotsPerDevice"] = 1
    apply(
        kube,
        {
            "apiVersion": "vllm-sleep.io/v1alpha1",
            "kind": "GPUPool",
            "metadata": {"name": name},
            "spec": body,
        },
    )
    made.append(name)
    return name


def _wait_node_free_of_others(kube: Kube, node: str, namespace: str) -> None:
    """A pool owns its nodes' devices: earlier tests' pods (unpooled, or still terminating)
    would hold device memory the pool's scheduler does not know about, as another tenant's
    pods would on a node the pool's nodeSelector should not have matched."""
    from kubernetes import client

    core = client.CoreV1Api(kube.api_client)

    def free() -> bool:
        pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
        return not [p for p in pods if p.metadata.namespace != namespace]

    wait_for(free, 180, what=f"{node} free of other tests' pods")


def pooled(name: str, namespace: str, pool: str, util: float, **spec: Any) -> dict[str, Any]:
    return model_manifest(
        name,
        namespace,
        resources={"gpuMemoryUtilization": util, "weightsSize": "2Gi"},
        placement={"pool": pool, **spec.pop("placement", {})},
        **spec,
    )


def device_of(kube: Kube, namespace: str, name: str) -> str:
    def seated() -> str | None:
        pods = model_pods(kube, namespace, name)
        return pods[0].metadata.annotations.get(DEVICE) if pods else None

    return wait_for(seated, 120, what=f"{name} seated on a device")


def block_first_gpu(kube: Kube, namespace: str, pool: str) -> str:
    apply(kube, pooled("blocker", namespace, pool, 0.8, sleep={"policy": "AlwaysAwake"}))
    wait_phase(kube, namespace, "blocker", "Awake", timeout=120)
    return device_of(kube, namespace, "blocker")


@dataclass(frozen=True)
class OneGpu:
    pool: str  # a TimeSlicing pool over gpu-node-1
    blocked: (
        str  # its first GPU, held by an AlwaysAwake model: what a test places lands on the other
    )


@pytest.fixture
def one_gpu(kube: Kube, namespace: str, operator: Proc, pools: list[str]) -> OneGpu:
    """One free simulated GPU for the test's models (the set-up most pool tests share)."""
    pool = make_pool(kube, pools, namespace, "gpu-node-1", "TimeSlicing")
    return OneGpu(pool, block_first_gpu(kube, namespace, pool))


def remove_models(kube: Kube, namespace: str) -> None:
    """Free the devices for the next test (namespace deletion runs in the background)."""
    kube.kubectl("delete", "mdep", "--all", "-n", namespace, "--wait=false")
    from kubernetes import client

    core = client.CoreV1Api(kube.api_client)
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, 120, what="model pods gone")


async def traffic(gateway: str, models: list[str], n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    codes: list[int] = []
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=180) as client:

        async def one(i: int) -> None:
            async with sem:
                r = await client.post(
                    f"{gateway}/v1/chat/completions",
                    json=chat(rng.choice(models), f"req {i}", max_tokens=2),
                )
                codes.append(r.status_code)

        await asyncio.gather(*(one(i) for i in range(n)))
    return codes


def reasons(kube: Kube, namespace: str, name: str) -> list[str]:
    return [e.reason for e in events(kube, namespace, name)]


@pytest.mark.timeout(max(300, 120 + REQUESTS // 5))
@pytest.mark.parametrize("sharing", ["DRA", "TimeSlicing"])
def test_four_models_on_one_gpu_swap_under_random_traffic(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    pools: list[str],
    sharing: str,
) -> None:
    pool = make_pool(kube, pools, namespace, "gpu-node-0", sharing)
    blocked = block_first_gpu(kube, namespace, pool)
    names = [f"m{i}" for i in range(4)]
    for name in names:
        apply(kube, pooled(name, namespace, pool, 0.8, sleep={"idleTimeout": "1h"}))
    for name in names:
        wait_phase(kube, namespace, name, "Asleep", timeout=180)  # each pre-warmed in turn
    seats = {device_of(kube, namespace, n) for n in names}
    assert len(seats) == 1 and blocked not in seats, seats

    n = REQUESTS if sharing == "DRA" else max(40, REQUESTS // 5)
    codes = asyncio.run(traffic(gateway, names, n, seed=11))
    assert codes.count(200) == n, {c: codes.count(c) for c in set(codes)}
    assert violations(kubelet_admin, namespace) == []
    evicted = [e for name in names for e in events(kube, namespace, name) if e.reason == "Evicted"]
    assert any("to wake" in e.message for e in evicted), [e.message for e in evicted]
    pool_status = kube.kubectl("get", "gpupool", pool, "-o", "yaml").stdout
    states = yaml.safe_load(pool_status)["status"]["deviceStates"]
    mine = next(d for d in states if d["device"] in seats)
    assert len(mine["models"]) == 4 and len(mine["awake"]) <= 1
    assert mine["committedBytes"] <= 80 * 2**30
    remove_models(kube, namespace)


def test_a_third_model_evicts_the_lowest_priority_of_two_awake(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    one_gpu: OneGpu,
) -> None:
    pool = one_gpu.pool
    for name, prio in (("low", 0), ("high", 5), ("third", 5)):
        apply(
            kube,
            pooled(
                name,
                namespace,
                pool,
                0.4,
                placement={"priority": prio},
                sleep={"idleTimeout": "1h"},
            ),
        )
    for name in ("low", "high", "third"):
        wait_phase(kube, namespace, name, "Asleep", timeout=180)
    for name in ("low", "high"):
        r = httpx.post(f"{gateway}/v1/chat/completions", json=chat(name), timeout=120)
        assert r.status_code == 200, r.text
    wait_phase(kube, namespace, "low", "Awake", timeout=30)
    wait_phase(kube, namespace, "high", "Awake", timeout=30)  # both fit together
    r = httpx.post(f"{gateway}/v1/chat/completions", json=chat("third"), timeout=120)
    assert r.status_code == 200, r.text
    wait_phase(kube, namespace, "low", "Asleep", timeout=30)
    assert get_model(kube, namespace, "high")["status"]["phase"] == "Awake"
    msg = next(
        e.message
        for e in events(kube, namespace, "low")
        if e.reason == "Evicted" and "to wake" in e.message
    )
    assert "priority 0" in msg and msg.endswith("third-0"), msg
    assert "Evicted" not in reasons(kube, namespace, "high")

    # Now high (least recently active) and third are awake. With a request in flight on high,
    # waking low again must evict third instead.
    async def in_flight_then_wake() -> tuple[int, int]:
        async with httpx.AsyncClient(timeout=120) as client:
            body = chat("high", "a long answer", max_tokens=400, stream=True)
            async with client.stream("POST", f"{gateway}/v1/chat/completions", json=body) as long:
                chunks = long.aiter_raw()
                await anext(chunks)  # the request is in flight at high's engine
                woke = await client.post(f"{gateway}/v1/chat/completions", json=chat("low"))
                async for _ in chunks:
                    pass
                return long.status_code, woke.status_code

    assert asyncio.run(in_flight_then_wake()) == (200, 200)
    assert any(
        e.reason == "Evicted" and e.message.endswith("to wake " + f"{namespace}/low-0")
        for e in events(kube, namespace, "third")
    )
    assert "Evicted" not in reasons(kube, namespace, "high")
    assert violations(kubelet_admin, namespace) == []
    remove_models(kube, namespace)


def test_a_model_larger_than_the_device_is_refused_and_nothing_is_evicted(
    kube: Kube, namespace: str, operator: Proc, pools: list[str]
) -> None:
    pool = make_pool(kube, pools, namespace, "gpu-node-1", "TimeSlicing")
    apply(kube, pooled("small", namespace, pool, 0.4, sleep={"policy": "AlwaysAwake"}))
    wait_phase(kube, namespace, "small", "Awake", timeout=120)
    big = pooled("big", namespace, pool, 0.4)
    big["spec"]["resources"]["kvCacheSize"] = "90Gi"  # + 2Gi weights: more than a device
    apply(kube, big)

    def refused() -> dict[str, Any] | None:
        conds = (get_model(kube, namespace, "big").get("status") or {}).get("conditions") or []
        degraded = next((c for c in conds if c["type"] == "Degraded"), None)
        return degraded if degraded and degraded["status"] == "True" else None

    cond = wait_for(refused, 60, what="big refused")
    assert "92.0 GiB" in cond["message"] and "80.0 GiB" in cond["message"]
    assert "CannotPlace" in reasons(kube, namespace, "big")
    assert model_pods(kube, namespace, "big") == []
    assert get_model(kube, namespace, "small")["status"]["phase"] == "Awake"
    assert "Evicted" not in reasons(kube, namespace, "small")
    remove_models(kube, namespace)


def agent_url(kube: Kube, namespace: str, model: str) -> tuple[str, dict[str, str]]:
    """The control URL of the model's agent and the headers to read its /state."""
    import base64

    from kubernetes import client

    secret = client.CoreV1Api(kube.api_client).read_namespaced_secret(
        f"{model}-control-token", namespace
    )
    token = base64.b64decode(secret.data["token"]).decode()
    ip = next(p.status.pod_ip for p in model_pods(kube, namespace, model) if p.status.pod_ip)
    return f"http://{ip}:8002/state", {"Authorization": f"Bearer {token}"}


def test_operator_killed_mid_swap_converges_without_evicting_twice(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    pools: list[str],
) -> None:
    pool = make_pool(kube, pools, namespace, "gpu-node-0", "TimeSlicing")
    block_first_gpu(kube, namespace, pool)
    slow = {  # big weights and a slowed engine: the eviction's sleep takes seconds
        "env": [
            {"name": "VLLM_SIM_PROFILE", "value": "legacy"},
            {"name": "VLLM_SIM_TIME_SCALE", "value": "10"},
        ],
        "sleep": {"idleTimeout": "1h"},
    }
    for name in ("a", "b"):
        m = pooled(name, namespace, pool, 0.8, **slow)
        m["spec"]["resources"]["weightsSize"] = "40Gi"
        apply(kube, m)
    for name in ("a", "b"):
        wait_phase(kube, namespace, name, "Asleep", timeout=240)
    r = httpx.post(f"{gateway}/v1/chat/completions", json=chat("a"), timeout=180)
    assert r.status_code == 200, r.text

    url, headers = agent_url(kube, namespace, "a")

    async def wake_b_and_kill_mid_swap() -> int:
        async with httpx.AsyncClient(timeout=240) as client:
            request = asyncio.create_task(
                client.post(f"{gateway}/v1/chat/completions", json=chat("b"))
            )
            while (await client.get(url, headers=headers)).json()["state"] not in (
                "draining",
                "sleeping",
            ):
                assert not request.done(), "b was served before a's eviction was seen"
                await asyncio.sleep(0.005)
            operator.kill()  # in the middle of the eviction
            operator.start()
            return (await request).status_code

    assert asyncio.run(wake_b_and_kill_mid_swap()) == 200
    wait_phase(kube, namespace, "b", "Awake", timeout=60)
    # Status writes are coalesced per model (docs/operator.md): a's may land after b's.
    wait_phase(kube, namespace, "a", "Asleep", timeout=10)
    evictions = [
        e for e in events(kube, namespace, "a") if e.reason == "Evicted" and "to wake" in e.message
    ]
    # Events are posted in the background: the one before the kill may be lost, never doubled.
    assert len(evictions) <= 1, [e.message for e in evictions]
    assert violations(kubelet_admin, namespace) == []
    remove_models(kube, namespace)


def replica_states(kube: Kube, namespace: str, name: str) -> list[str]:
    return sorted(r["state"] for r in get_model(kube, namespace, name)["status"]["replicas"])


def test_one_request_wakes_one_of_two_replicas(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    one_gpu: OneGpu,
) -> None:
    pool = one_gpu.pool
    apply(kube, pooled("two", namespace, pool, 0.4, replicas=2))

    def both_asleep() -> bool:
        status = get_model(kube, namespace, "two").get("status") or {}
        return [r.get("state") for r in status.get("replicas") or []] == ["Asleep", "Asleep"]

    wait_for(both_asleep, 180, what="both replicas pre-warmed")
    for i in range(3):  # one at a time: never more than one replica's worth of demand
        r = httpx.post(f"{gateway}/v1/chat/completions", json=chat("two", f"q{i}"), timeout=120)
        assert r.status_code == 200, r.text
    wait_phase(kube, namespace, "two", "Awake", timeout=30)
    # Demand-proportional: one request wants one replica awake, not both (the second would
    # wake as soon as the first settled, within this watch, if every wanted replica woke).
    for _ in range(15):
        assert replica_states(kube, namespace, "two") == ["Asleep", "Awake"]
        time.sleep(0.2)
    woke = [e for e in events(kube, namespace, "two") if e.reason == "Waking"]
    assert len(woke) == 1, [e.message for e in woke]
    assert violations(kubelet_admin, namespace) == []
    remove_models(kube, namespace)


def test_min_awake_holds_the_eviction_then_the_waiting_request_is_served(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    one_gpu: OneGpu,
) -> None:
    pool = one_gpu.pool
    apply(kube, pooled("young", namespace, pool, 0.8, placement={"minAwake": "20s"}))
    apply(kube, pooled("other", namespace, pool, 0.8))
    for name in ("young", "other"):
        wait_phase(kube, namespace, name, "Asleep", timeout=180)
    r = httpx.post(f"{gateway}/v1/chat/completions", json=chat("young"), timeout=120)
    assert r.status_code == 200, r.text

    def waiting_reason() -> str | None:
        """`other` waiting on young's minAwake. (Its first waiting message may name young's
        request instead, when other's pass runs before young's has published it finished.)"""
        conds = (get_model(kube, namespace, "other").get("status") or {}).get("conditions") or []
        awake = next((c for c in conds if c["type"] == "Awake"), None)
        waiting = awake and awake["reason"] == "WaitingForDevice"
        return awake["message"] if waiting and "minAwake" in awake["message"] else None

    async def wake_other() -> tuple[int, str, str]:
        async with httpx.AsyncClient(timeout=180) as client:
            request = asyncio.create_task(
                client.post(f"{gateway}/v1/chat/completions", json=chat("other"))
            )
            why = await asyncio.to_thread(
                wait_for, waiting_reason, 30, what="other waits on young's minAwake"
            )
            # Awake and protected, not evicted: its status (writes coalesced per model) may
            # still say Waking for a moment; minAwake (20 s) keeps it awake meanwhile.
            young = await asyncio.to_thread(wait_phase, kube, namespace, "young", "Awake", 10)
            return (await request).status_code, why, young["status"]["phase"]

    code, why, young_then = asyncio.run(wake_other())
    assert code == 200
    assert "minAwake" in why, why  # the young neighbour is protected, not evicted at once
    assert young_then == "Awake"
    msg = next(e.message for e in events(kube, namespace, "young") if e.reason == "Evicted")
    assert msg.endswith("to wake " + f"{namespace}/other-0"), msg
    assert violations(kubelet_admin, namespace) == []
    remove_models(kube, namespace)


def test_past_the_host_budget_sleeps_are_level_2_and_their_wakes_reload_weights(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    pools: list[str],
) -> None:
    # Room on the node's host for one level-1 sleeper's weights (2Gi): the second sleeps at 2.
    pool = make_pool(kube, pools, namespace, "gpu-node-1", "TimeSlicing", hostOffloadBudget="3Gi")
    apply(kube, pooled("first", namespace, pool, 0.4))
    wait_phase(kube, namespace, "first", "Asleep", timeout=180)
    apply(kube, pooled("second", namespace, pool, 0.4))
    wait_phase(kube, namespace, "second", "Asleep", timeout=180)

    def levels(name: str) -> list[int | None]:
        return [r.get("level") for r in get_model(kube, namespace, name)["status"]["replicas"]]

    assert levels("first") == [1] and levels("second") == [2]
    body = chat("second", "the same question", max_tokens=6)
    r = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    answer = r.json()["choices"][0]["message"]["content"]
    assert answer.strip() and set(answer.split()) != {"!"}, answer  # reloaded weights, not zeros
    assert violations(kubelet_admin, namespace) == []  # no garbage_weights recorded
    remove_models(kube, namespace)
