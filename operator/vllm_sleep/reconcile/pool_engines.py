"""One pooled model's replicas as the scheduler sees them (`scheduler.Engine`). Pure.

Built every pass from what is observed: the pods (their device annotation), the agents' reports
(state, level, in-flight, held, last request, measured sleeping residual), the transitions this
operator runs, and the pod's memory annotations. Nothing here is remembered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from ..api.agent_protocol import AgentState, StateReport
from ..api.gpu_pool import GPUPoolSpec
from ..api.model_deployment import ModelDeployment, ModelDeploymentSpec
from ..api.model_spec import SleepPolicy
from ..scheduler import Engine, EngineState
from .agent_wake import slept_before
from .lifecycle import ReplicaObservation
from .observe import ObservedPod
from .pool_gate import PoolRequest
from .share import effective_utilization

_STATES: Mapping[AgentState, EngineState] = {
    AgentState.LOADING: EngineState.LOADING,
    # Unknown (pod starting, agent restarting): counted as loading, the conservative reading:
    # its whole share, and the device is not settled.
    AgentState.UNREACHABLE: EngineState.LOADING,
    AgentState.AWAKE: EngineState.AWAKE,
    AgentState.DRAINING: EngineState.SLEEPING,
    AgentState.SLEEPING: EngineState.SLEEPING,
    AgentState.WAKING: EngineState.WAKING,
    AgentState.ASLEEP: EngineState.ASLEEP,
}


DEMAND_FRESH = 3.0  # seconds: the gateway renews a model's demand every second while it holds


def model_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def replica_key(namespace: str, pod: str) -> str:
    return f"{namespace}/{pod}"


def share_bytes(spec: ModelDeploymentSpec, pool: GPUPoolSpec) -> int:
    """Device bytes the engine takes awake: its memory share of the pool's device (the spec's
    gpuMemoryUtilization, or the one derived when unset: `share.effective_utilization`), even when
    the KV cache is sized in bytes. The pod always carries --gpu-memory-utilization, and vLLM's
    startup check asks for that much free device memory whatever the KV size; a sized KV cache
    plus the weights counts instead only when larger (the engine maps them all). The agent's
    --engine-memory-bytes is this same number."""
    res = spec.resources
    share = int(effective_utilization(spec, pool) * pool.device_memory.bytes())
    if res.kv_cache_size is not None:
        weights = res.weights_size.bytes() if res.weights_size is not None else 0
        share = max(share, res.kv_cache_size.bytes() + weights)
    return max(1, share)


def kv_bytes(spec: ModelDeploymentSpec, share: int) -> int | None:
    """Bytes of the KV cache when `resources.kvCacheSize` sizes it: what a level-0 (KV-only)
    sleep frees. Never more than the share (vLLM cannot map more than it was given)."""
    kv = spec.resources.kv_cache_size
    return None if kv is None else min(kv.bytes(), share)


def backup_held(
    state: EngineState, sleep_level: int | None, slept_once: bool, spec_level: int, keeps: bool
) -> bool:
    """Whether the engine's pinned host backup of its weights exists now.

    Asleep (or going to or waking from) at level 1: always. Otherwise only on a version that
    keeps the backup made by a level-1 sleep while awake (vLLM >= 0.34), from its first sleep
    on. Which level that sleep used is not recorded, so a level-1 model that slept once counts
    its backup (an over-count when the host budget made that sleep level 2: the safe side)."""
    if state in _SLEEPY and sleep_level == 1:
        return True
    if state == EngineState.PENDING or not keeps:
        return False
    return slept_once and spec_level == 1


def demand_protection_left(demand_at: float | None, now: float) -> float | None:
    """Seconds until the model's last demand stops protecting its awake replicas
    (DEMAND_FRESH), or None when it protects nothing now. The protection is published to the
    pool as a held request: when it ends nothing else changes, so the model must publish again
    then, or a neighbour's wake that waits on this eviction waits for the model's resync."""
    if demand_at is None:
        return None
    left = demand_at + DEMAND_FRESH - now
    return left if left > 0 else None


def model_engines(
    model: ModelDeployment,
    request: PoolRequest,
    reports: Mapping[str, StateReport],
    pool: GPUPoolSpec,
    starting: Mapping[str, str] | None = None,
    demand_at: float | None = None,
    now: float = 0.0,
    keeps_backup: Callable[[StateReport, str], bool] = lambda report, image: False,
) -> tuple[Engine, ...]:
    """Every replica of the model: its pods (by observation) and the replicas without a pod
    (pending, or starting on the device they were just seated on).

    Requests a gateway holds for the model are not at any agent yet: while its demand Lease
    was renewed after a replica's wake (within DEMAND_FRESH), that awake replica counts one
    request held, so it is not evicted before the requests that woke it arrive; once it
    served a request after the renewal (its agent's last activity), they are taken to have
    arrived and the rest are counted by its agent (a known limit: docs/scheduler.md, "Fresh
    demand ends on time").

    `keeps_backup(report, image)`: whether the replica's vLLM keeps its pinned host backup
    while awake (the operator reads the version from the agent's report, else the image tag)."""
    pods, observations = request.live, request.observations
    ns, name = model.metadata.namespace or "", model.metadata.name
    spec = model.spec
    starting = starting or {}
    share = share_bytes(spec, pool)
    base = Engine(
        replica="",
        model=model_key(ns, name),
        share=share,
        kv=kv_bytes(spec, share),
        weights=spec.resources.weights_size.bytes() if spec.resources.weights_size else 0,
        level=int(spec.sleep.level),
        priority=spec.placement.priority,
        min_awake=spec.placement.min_awake.total_seconds(),
        evictable=spec.sleep.policy != SleepPolicy.ALWAYS_AWAKE,
    )
    out: list[Engine] = []
    have: set[str] = set()
    for pod in pods:
        key = replica_key(ns, pod.name)
        device = pod.device or starting.get(key)
        obs = observations.get(pod.name)
        if device is None or obs is None:
            continue  # not a pooled pod (it is being replaced): the pool does not count it
        have.add(key)
        report = reports.get(pod.name, StateReport(state=AgentState.UNREACHABLE))
        state = _state(pod, obs)
        # A pod of an older spec (replaced one at a time, or draining on its deletion) holds
        # the share it was built with until it is gone, not the share the spec asks for now.
        pod_share = pod.device_bytes or share
        level = report.level if report.level in (1, 2) else int(spec.sleep.level)
        keeps = keeps_backup(report, spec.image)
        slept_once = slept_before(pod.memory, report)
        woken_at = pod.memory.woken_at
        if woken_at is None and state == EngineState.AWAKE:
            woken_at = report.since
        held = obs.held
        if (
            state == EngineState.AWAKE
            and demand_at is not None
            and demand_at >= (woken_at or 0.0)
            and demand_protection_left(demand_at, now) is not None
            and (report.last_activity is None or report.last_activity < demand_at)
        ):
            held = max(held, 1)
        out.append(
            replace(
                base,
                replica=key,
                share=pod_share,
                kv=kv_bytes(spec, pod_share),
                device=device,
                state=state,
                sleep_level=level if state in _SLEEPY else None,
                woken_at=woken_at,
                last_activity=report.last_activity,
                inflight=obs.inflight,
                held=held,
                residual=report.residual_bytes,  # measured by the agent after a sleep
                holds_backup=backup_held(
                    state,
                    level if state in _SLEEPY else None,
                    slept_once,
                    int(spec.sleep.level),
                    keeps,
                ),
                keeps_backup=keeps,
            )
        )
    for pod_name in request.indexes.values():
        key = replica_key(ns, pod_name)
        if key in have:
            continue
        device = starting.get(key)
        state = EngineState.LOADING if device else EngineState.PENDING
        out.append(replace(base, replica=key, device=device, state=state))
    return tuple(out)


_SLEEPY = frozenset({EngineState.SLEEPING, EngineState.ASLEEP, EngineState.WAKING})


def _state(pod: ObservedPod, obs: ReplicaObservation) -> EngineState:
    if pod.deleting:
        # Still holds its memory until kubelet stopped it: counted whole, and unsettled.
        return EngineState.LOADING
    if obs.agent == AgentState.FAILED:
        # vLLM exited (or is unhealthy): kubelet restarts it on its own; count it as loading
        # so nothing else starts beside a process that may come back.
        return EngineState.LOADING
    return _STATES[obs.agent]
