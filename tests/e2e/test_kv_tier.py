"""The KV-only tier in a pool (issue 12): a `sleep.level: 0` model and a level-1 neighbour share
one simulated GPU that holds one of them awake. Each request for the sleeping one swaps them.
The level-0 model sleeps by pausing and releasing its KV cache only (its weights stay on the
device), so its wake re-maps the KV cache and copies nothing; the level-1 neighbour's wake
copies its weights back. The engines run the simulator's `0.34` profile (level 0 needs
`/release_kv_cache_memory`, vLLM >= 0.31); the simulator's `/_sim/state` `transfers` say what
moved.
"""

from __future__ import annotations

import httpx

from conftest import Kube

from .conftest import Proc
from .helpers import apply, chat, events, get_model, sim_state, wait_phase
from .test_pools import (
    OneGpu,
    device_of,
    one_gpu,  # noqa: F401  (the fixture)
    pooled,
    pools,  # noqa: F401  (the fixture)
    remove_models,
    violations,
)

PROFILE = [{"name": "VLLM_SIM_PROFILE", "value": "0.34"}]


def test_a_level_0_model_swaps_by_remapping_its_kv_cache_only(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    one_gpu: OneGpu,  # noqa: F811
) -> None:
    pool = one_gpu.pool
    blocked = one_gpu.blocked
    # 0.6 of 80 GiB each: one awake at a time; the KV-only sleeper's 2 GiB of weights still fit
    # next to the awake neighbour, so the scheduler keeps them on the device.
    apply(kube, pooled("kv", namespace, pool, 0.6, env=PROFILE, sleep={"level": 0}))
    apply(kube, pooled("w", namespace, pool, 0.6, env=PROFILE, sleep={"level": 1}))
    for name in ("kv", "w"):
        wait_phase(kube, namespace, name, "Asleep", timeout=180)
    seats = {device_of(kube, namespace, n) for n in ("kv", "w")}
    assert len(seats) == 1 and blocked not in seats, seats

    wakes: dict[str, list[float]] = {"kv": [], "w": []}
    for name in ("kv", "w", "kv", "w", "kv"):
        r = httpx.post(f"{gateway}/v1/chat/completions", json=chat(name), timeout=120)
        assert r.status_code == 200, r.text
        status = wait_phase(kube, namespace, name, "Awake", timeout=30)["status"]
        wakes[name].append(status.get("lastWakeSeconds"))
        other = "w" if name == "kv" else "kv"
        wait_phase(kube, namespace, other, "Asleep", timeout=30)

    kv = sim_state(kube, namespace, "kv")
    moved = kv["transfers"]
    assert moved["weights_to_host"] == 0 and moved["weights_to_gpu"] == 0, moved
    assert moved["weight_bytes_copied"] == 0, moved
    assert moved["kv_releases"] >= 3 and moved["kv_remaps"] >= 3, moved  # pre-warm + 2 swaps
    last = moved["last_wake"]
    assert last["weights_copied"] is False and last["kv_remapped"] is True, last
    assert kv["pinned_host_bytes"] == 0  # never backed up: nothing pinned for it
    # The level-1 neighbour did copy its weights on each wake: the records tell the two apart.
    w = sim_state(kube, namespace, "w")["transfers"]
    assert w["weights_to_gpu"] >= 2 and w["last_wake"]["weights_copied"] is True, w

    evicted = [e.message for e in events(kube, namespace, "kv") if e.reason == "Evicted"]
    assert evicted, "kv was never evicted to wake w"
    assert all(t is not None for t in wakes["kv"] + wakes["w"]), wakes
    assert get_model(kube, namespace, "kv")["status"]["phase"] == "Awake"
    assert violations(kubelet_admin, namespace) == []
    print(f"lastWakeSeconds: level 0 {wakes['kv']}, level 1 {wakes['w']}")
    remove_models(kube, namespace)
