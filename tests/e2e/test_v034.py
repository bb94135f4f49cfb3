"""vLLM 0.34 (issue 12): the simulator's default profile. On 0.34 an engine started without a
memory share takes all free device memory (the extensible KV cache), so a second engine on the
device fails to start and a sleeping neighbour cannot wake. The operator always passes an explicit
share: two models on one simulated GPU both start (pre-warm in turn) and wake in turn. 0.34 also
keeps an engine's pinned host backup from its first level-1 sleep until the process exits, awake
or asleep: the node's pinned host memory (the sim-kubelet's `GET /nodes`) still counts the awake
engine's backup, and so does the operator's host offload budget (a pool's `hostOffloadBudget`):
a third model pre-warms at level 2 when the awake engine's kept backup leaves no room.
"""

from __future__ import annotations

import httpx
import pytest

from conftest import Kube

from .conftest import Proc
from .helpers import apply, chat, get_model, model_manifest, model_pods, wait_phase
from .test_kv_tier import sim_state
from .test_pools import (
    OneGpu,
    block_first_gpu,
    device_of,
    make_pool,
    one_gpu,  # noqa: F401  (the fixture)
    pooled,
    pools,  # noqa: F401  (the fixture)
    remove_models,
    violations,
)

GIB = 2**30


def test_two_models_on_one_gpu_start_and_wake_in_turn_on_0_34(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    one_gpu: OneGpu,  # noqa: F811
) -> None:
    pool = one_gpu.pool
    blocked = one_gpu.blocked
    names = ("a", "b")
    for name in names:  # no VLLM_SIM_PROFILE: the simulator's default profile, 0.34
        apply(kube, pooled(name, namespace, pool, 0.6, env=[], sleep={"level": 1}))
    assert_asleep_together_with_share(kube, namespace, names, blocked, "0.6")

    node = model_pods(kube, namespace, "a")[0].spec.node_name

    def pinned() -> dict[str, int]:
        nodes = kubelet_admin.get("/nodes").json()["nodes"]
        report = next(n for n in nodes if n["node"] == node)
        assert report["pinned_bytes"] >= sum(report["pods"].values())
        return {n: report["pods"].get(f"{namespace}/{pod}", 0) for n, pod in pods.items()}

    pods = {n: model_pods(kube, namespace, n)[0].metadata.name for n in names}
    assert pinned() == {"a": 2 * GIB, "b": 2 * GIB}  # both backed up by their pre-warm

    for name in ("a", "b", "a"):
        r = httpx.post(f"{gateway}/v1/chat/completions", json=chat(name), timeout=120)
        assert r.status_code == 200, r.text
        wait_phase(kube, namespace, name, "Awake", timeout=30)
        other = "b" if name == "a" else "a"
        wait_phase(kube, namespace, other, "Asleep", timeout=30)
        # The awake engine's backup stays pinned on 0.34 (0.33 would free it on wake).
        assert pinned() == {"a": 2 * GIB, "b": 2 * GIB}
        assert sim_state(kube, namespace, name)["pinned_host_bytes"] == 2 * GIB

    assert violations(kubelet_admin, namespace) == []
    remove_models(kube, namespace)


@pytest.mark.parametrize(("profile", "backup_kept"), [("0.34", True), ("0.33", False)])
def test_the_host_budget_counts_an_awake_engines_kept_backup(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    pools: list[str],  # noqa: F811
    profile: str,
    backup_kept: bool,
) -> None:
    # 5 GiB of pinned host memory per node for level-1 sleepers: two 2 GiB backups fit, three
    # do not. After a and b pre-warm (4 GiB) and a wakes, a's backup stays pinned on 0.34, so c
    # pre-warms at level 2 (discarding its weights) instead of pinning a third backup; 0.33
    # frees a's backup on wake, so c pins its own.
    pool = make_pool(kube, pools, namespace, "gpu-node-1", "TimeSlicing", hostOffloadBudget="5Gi")
    block_first_gpu(kube, namespace, pool)
    env = [{"name": "VLLM_SIM_PROFILE", "value": profile}]
    for name in ("a", "b"):
        apply(kube, pooled(name, namespace, pool, 0.3, env=env, sleep={"level": 1}))
    for name in ("a", "b"):
        wait_phase(kube, namespace, name, "Asleep", timeout=180)
    r = httpx.post(f"{gateway}/v1/chat/completions", json=chat("a"), timeout=120)
    assert r.status_code == 200, r.text
    wait_phase(kube, namespace, "a", "Awake", timeout=30)
    kept = sim_state(kube, namespace, "a")["pinned_host_bytes"]
    assert kept == (2 * GIB if backup_kept else 0)

    apply(kube, pooled("c", namespace, pool, 0.3, env=env, sleep={"level": 1}))
    wait_phase(kube, namespace, "c", "Asleep", timeout=180)
    c = sim_state(kube, namespace, "c")
    if backup_kept:
        assert c["level"] == 2, c
        assert c["transfers"]["weights_to_host"] == 0 and c["pinned_host_bytes"] == 0, c
    else:
        assert c["level"] == 1 and c["pinned_host_bytes"] == 2 * GIB, c
    assert get_model(kube, namespace, "a")["status"]["phase"] == "Awake"
    assert violations(kubelet_admin, namespace) == []
    remove_models(kube, namespace)


def test_two_models_without_a_memory_setting_share_one_gpu_on_0_34(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    one_gpu: OneGpu,  # noqa: F811
) -> None:
    """No gpuMemoryUtilization and no kvCacheSize: 0.34's own default (all free memory) would
    keep the second engine from starting. The operator passes the pool's derived share instead,
    (80 - 3 x 2) / 80 = 0.925, rounded down to 0.92, which leaves room for the sleeping
    neighbour's residual (docs/api.md, resources.gpuMemoryUtilization)."""
    pool = one_gpu.pool
    blocked = one_gpu.blocked
    names = ("a", "b")
    for name in names:  # the simulator's default profile, 0.34; only the weights' size is set
        body = model_manifest(name, namespace, placement={"pool": pool}, env=[])
        body["spec"]["resources"] = {"weightsSize": "2Gi"}  # the helper's default sets a share
        apply(kube, body)
    assert_asleep_together_with_share(kube, namespace, names, blocked, "0.92")

    for name in ("a", "b", "a"):
        r = httpx.post(f"{gateway}/v1/chat/completions", json=chat(name), timeout=120)
        assert r.status_code == 200, r.text
        wait_phase(kube, namespace, name, "Awake", timeout=30)
        other = "b" if name == "a" else "a"
        wait_phase(kube, namespace, other, "Asleep", timeout=30)

    assert violations(kubelet_admin, namespace) == []
    remove_models(kube, namespace)


def assert_asleep_together_with_share(
    kube: Kube, namespace: str, names: tuple[str, ...], blocked: str, util: str
) -> None:
    """Every model pre-warmed on one device (not the blocked one), each engine started with
    `--gpu-memory-utilization util` and, on 0.34, a fixed (not extensible) KV cache."""
    for name in names:
        wait_phase(kube, namespace, name, "Asleep", timeout=180)
    seats = {device_of(kube, namespace, n) for n in names}
    assert len(seats) == 1 and blocked not in seats, seats
    for name in names:
        pod = model_pods(kube, namespace, name)[0]
        vllm = next(c for c in pod.spec.containers if "--enable-sleep-mode" in (c.args or []))
        i = vllm.args.index("--gpu-memory-utilization")
        assert vllm.args[i + 1] == util, vllm.args
        state = sim_state(kube, namespace, name)
        assert state["memory"]["extensible_kv"] is False, state["memory"]
        assert state["memory"]["gpu_memory_utilization"] == float(util)
