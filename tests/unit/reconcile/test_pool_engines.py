"""A pooled model's replicas as the scheduler counts them: the share vLLM's startup check needs,
the KV cache a level-0 sleep frees, and the pinned host backup (kept while awake on 0.34)."""

from __future__ import annotations

from typing import Any

import pytest

from vllm_sleep.api.agent_protocol import AgentState, StateReport
from vllm_sleep.api.gpu_pool import GPUPoolSpec
from vllm_sleep.api.model_deployment import ModelDeployment
from vllm_sleep.reconcile.builders import GpuAttachment, model_pod, owner_from_body
from vllm_sleep.reconcile.observe import observe_pod
from vllm_sleep.reconcile.plan import observe_replica
from vllm_sleep.reconcile.pool_engines import model_engines, share_bytes
from vllm_sleep.reconcile.pool_gate import PoolRequest
from vllm_sleep.scheduler import Device, EngineState, Node, Pool
from vllm_sleep.scheduler.accounting import host_committed

GIB = 1 << 30
DEVICE = 80 * GIB
POOL = GPUPoolSpec.model_validate({"sharing": "TimeSlicing", "deviceMemory": "80Gi"})


def model(**resources: Any) -> ModelDeployment:
    return ModelDeployment.from_body(
        {
            "metadata": {"name": "m", "namespace": "ns", "uid": "uid-m"},
            "spec": {
                "model": "org/model",
                "image": "vllm/vllm-openai:v0.34.0",
                "resources": {"gpuMemoryUtilization": 0.4, "weightsSize": "8Gi", **resources},
                "placement": {"pool": "p"},
            },
        }
    )


def request(state: AgentState, annotations: dict[str, str]) -> tuple[PoolRequest, StateReport]:
    p = observe_pod(
        {
            "metadata": {
                "name": "m-0",
                "uid": "uid-m-0",
                "labels": {"vllm-sleep.io/replica": "0"},
                "annotations": {"vllm-sleep.io/device": "n/gpu-0", **annotations},
            },
            "spec": {"nodeName": "n"},
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        }
    )
    rep = StateReport(state=state, version=1, level=1 if state == AgentState.ASLEEP else None)
    req = PoolRequest(
        live=[p], observations={p.name: observe_replica(p, rep)}, indexes={0: p.name}, actions=()
    )
    return req, rep


def keeps(report: StateReport, image: str) -> bool:
    return True


SLEPT = {"vllm-sleep.io/prewarmed": "true", "vllm-sleep.io/slept-at": "1800000000.000"}


def engines(state: AgentState, annotations: dict[str, str], **kw: Any) -> Any:
    req, rep = request(state, annotations)
    return model_engines(model(), req, {"m-0": rep}, POOL, **kw)


def test_an_awake_engine_that_slept_once_holds_its_backup_on_a_version_that_keeps_it() -> None:
    (e,) = engines(AgentState.AWAKE, SLEPT, keeps_backup=keeps)
    assert e.state == EngineState.AWAKE and e.holds_backup and e.keeps_backup
    pool = Pool(
        devices=(Device("n/gpu-0", "n", DEVICE),), nodes=(Node("n", 8 * GIB),), engines=(e,)
    )
    assert host_committed(pool, "n") == 8 * GIB  # the node's host budget is spent by it


def test_an_awake_engine_never_slept_or_on_an_older_version_holds_no_backup() -> None:
    (fresh,) = engines(AgentState.AWAKE, {}, keeps_backup=keeps)
    (older,) = engines(AgentState.AWAKE, SLEPT, keeps_backup=lambda r, i: False)
    assert not fresh.holds_backup
    assert not older.holds_backup and not older.keeps_backup


def test_an_engine_woken_after_an_idle_sleep_holds_its_backup_without_a_sleep_annotation() -> None:
    # An idle sleep (the pre-warm) leaves no memory on the pod: the agent's report naming the
    # wake says the engine slept, and so made its backup.
    req, _ = request(AgentState.AWAKE, {})
    woken = StateReport(state=AgentState.AWAKE, version=2, woken_by="operator", since=1.0)
    (e,) = model_engines(model(), req, {"m-0": woken}, POOL, keeps_backup=keeps)
    assert e.state == EngineState.AWAKE and e.holds_backup


def test_a_level_1_sleeper_holds_its_backup_whatever_the_version() -> None:
    (e,) = engines(AgentState.ASLEEP, SLEPT, keeps_backup=lambda r, i: False)
    assert e.sleep_level == 1 and e.holds_backup


def test_the_share_of_a_model_with_a_kv_size_is_what_the_startup_check_needs() -> None:
    m = model(kvCacheSize="4Gi")
    req, rep = request(AgentState.AWAKE, {})
    (e,) = model_engines(m, req, {"m-0": rep}, POOL)
    assert e.share == int(0.4 * DEVICE)  # not KV + weights (12 GiB)
    assert e.kv == 4 * GIB


def test_a_kv_size_and_weights_past_the_utilization_count_whole() -> None:
    m = model(kvCacheSize="64Gi")
    req, rep = request(AgentState.AWAKE, {})
    (e,) = model_engines(m, req, {"m-0": rep}, POOL)
    assert e.share == 72 * GIB and e.kv == 64 * GIB  # more than 0.4 x 80 GiB: all of it


@pytest.mark.parametrize("kv", [None, "4Gi"])
def test_the_agents_engine_memory_is_the_share_the_pool_counts(kv: str | None) -> None:
    """Passed only where the engine fills its share (no kvCacheSize): then it is the share."""
    m = model(**({"kvCacheSize": kv} if kv else {}))
    pool = GPUPoolSpec.model_validate({"sharing": "TimeSlicing", "deviceMemory": "80Gi"})
    owner = owner_from_body({"metadata": {"name": "m", "namespace": "ns", "uid": "uid-m"}})
    pod = model_pod(
        owner, m.spec, 0, agent_image="agent:dev", gpu=GpuAttachment(pool=pool, node="n")
    )
    args = [a for c in pod["spec"]["initContainers"] for a in c.get("args", [])]
    if kv is not None:
        assert "--engine-memory-bytes" not in args
        return
    engine_memory = int(args[args.index("--engine-memory-bytes") + 1])
    assert engine_memory == share_bytes(m.spec, pool)


def test_an_unset_share_counts_the_pools_derived_share() -> None:
    """No gpuMemoryUtilization: the pool counts the share the pod's flag carries, (80 - 3 x 2) /
    80 = 0.925 -> 0.92 of the device (the pool's defaults: 4 slots, 2 GiB residual)."""
    m = ModelDeployment.from_body(
        {
            "metadata": {"name": "m", "namespace": "ns", "uid": "uid-m"},
            "spec": {
                "model": "org/model",
                "image": "vllm/vllm-openai:v0.34.0",
                "resources": {"weightsSize": "8Gi"},
            },
        }
    )
    req, rep = request(AgentState.AWAKE, {})
    (e,) = model_engines(m, req, {"m-0": rep}, POOL)
    assert e.share == int(0.92 * DEVICE)


def test_an_engine_with_a_recorded_wake_slept_before_it_even_if_its_agent_forgot() -> None:
    # A restarted agent reports awake with no `woken_by`; the pod's woken-at says a wake (so a
    # sleep before it) happened: its backup counts (not counting it is the unsafe side).
    (e,) = engines(
        AgentState.AWAKE, {"vllm-sleep.io/woken-at": "1800000100.000"}, keeps_backup=keeps
    )
    assert e.state == EngineState.AWAKE and e.holds_backup


@pytest.mark.parametrize("state", [AgentState.AWAKE, AgentState.ASLEEP])
def test_a_pod_of_an_older_spec_counts_the_share_it_was_built_with(state: AgentState) -> None:
    """A share edited from 0.8 to 0.3: until the old pod is replaced (or, being deleted, has
    drained) its engine holds 0.8 of the device. Counted at 0.3, a neighbour woke into memory
    it still held (the e2e edits test saw the pool's accounting disagree with the engines)."""
    owner = owner_from_body({"metadata": {"name": "m", "namespace": "ns", "uid": "uid-m"}})
    old = model(gpuMemoryUtilization=0.8)
    pod = model_pod(
        owner, old.spec, 0, agent_image="agent:dev", gpu=GpuAttachment(pool=POOL, node="n")
    )
    built = pod["metadata"]["annotations"]["vllm-sleep.io/device-bytes"]
    assert int(built) == share_bytes(old.spec, POOL)
    req, rep = request(state, {"vllm-sleep.io/device-bytes": built})
    (engine,) = model_engines(model(gpuMemoryUtilization=0.3), req, {"m-0": rep}, POOL)
    assert engine.share == share_bytes(old.spec, POOL) == int(0.8 * DEVICE)
    # A pod built before the annotation existed (or with an edited value) counts the spec's.
    for extra in ({}, {"vllm-sleep.io/device-bytes": "lots"}):
        req, rep = request(state, extra)
        (engine,) = model_engines(model(gpuMemoryUtilization=0.3), req, {"m-0": rep}, POOL)
        assert engine.share == int(0.3 * DEVICE)
