"""Which ModelDeployment statuses make the gateway refuse a request at once (`cannot_wake`).

The statuses are the operator's own (`reconcile.status.model_status`), so a change of its
reasons that the gateway no longer recognises fails here, not in production as a silent hold
of `wake.timeout`.
"""

from __future__ import annotations

from typing import Any

from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.api.model_deployment import ModelDeployment
from vllm_sleep.gateway.kube_parse import model_spec
from vllm_sleep.gateway.routing import CannotWake
from vllm_sleep.reconcile.lifecycle import ReplicaMemory, ReplicaObservation
from vllm_sleep.reconcile.observe import EngineFailure, ObservedPod
from vllm_sleep.reconcile.status import StatusFacts, model_status

NOW = 1_800_000_000.0
NO_POOL = "GPUPool 'gpus' does not exist; create it or fix spec.placement.pool"


def mdep(replicas: int = 1, generation: int = 3, pool: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": "vllm/vllm-openai:v0.11.0",
        "model": "org/m",
        "replicas": replicas,
        "resources": {"gpuMemoryUtilization": 0.5, "weightsSize": "1Gi"},
    }
    if pool is not None:
        spec["placement"] = {"pool": pool}
    return {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u1", "generation": generation},
        "spec": spec,
    }


def with_status(
    obj: dict[str, Any],
    facts: StatusFacts = StatusFacts(),
    pods: tuple[ObservedPod, ...] = (),
    agents: tuple[AgentState, ...] = (),
) -> dict[str, Any]:
    """`obj` with the status the operator writes for it (its observedGeneration included)."""
    model = ModelDeployment.from_body(obj)
    observations = [ReplicaObservation(p.name, a) for p, a in zip(pods, agents, strict=True)]
    return {**obj, "status": model_status(model, pods, observations, {}, NOW, facts)}


def pod(
    name: str = "m-0", unscheduled: str | None = None, failure: EngineFailure | None = None
) -> ObservedPod:
    return ObservedPod(
        name=name,
        uid=None,
        replica=0,
        spec_hash=None,
        phase="Pending",
        deleting=False,
        ip=None,
        node=None,
        routed=False,
        memory=ReplicaMemory(),
        unscheduled=unscheduled,
        failure=failure,
    )


def cannot_wake(obj: dict[str, Any]) -> CannotWake | None:
    spec = model_spec(obj)
    assert spec is not None
    return spec.cannot_wake


def test_scaled_to_zero_cannot_wake() -> None:
    why = cannot_wake(with_status(mdep(replicas=0)))
    assert why is not None
    assert why.reason == "ScaledToZero" and "0 replicas" in why.message


GONE = StatusFacts(problem=NO_POOL, whole_model=True)  # as plan() says it for a deleted pool


def test_a_missing_gpu_pool_cannot_wake_and_quotes_the_operator() -> None:
    why = cannot_wake(with_status(mdep(pool="gpus"), GONE))
    assert why == CannotWake("NoPlacement", NO_POOL, whole_model=True)


def test_a_pool_deleted_while_the_replicas_sleep_cannot_wake_whatever_the_pods() -> None:
    # Their agents could hold a request, but no replica of the model is woken without its pool:
    # the whole model's problem, which the gateway answers even where a pod can hold.
    obj = with_status(
        mdep(pool="gpus", replicas=2), GONE, (pod("m-0"), pod("m-1")), (AgentState.ASLEEP,) * 2
    )
    assert obj["status"]["phase"] == "Asleep"
    why = cannot_wake(obj)
    assert why is not None and why.whole_model and why.message == NO_POOL


def test_a_placement_problem_is_scheduled_false_with_the_operators_reason() -> None:
    # The reason the gateway acts on is the operator's, not inferred from matching messages.
    text = "ns/m-1 needs 92.0 GiB: the largest device (80.0 GiB)"
    for facts, reason in ((GONE, "NoPlacement"), (StatusFacts(problem=text), "CannotPlace")):
        conditions = with_status(mdep(pool="gpus"), facts)["status"]["conditions"]
        scheduled = next(c for c in conditions if c["type"] == "Scheduled")
        assert (scheduled["status"], scheduled["reason"], scheduled["message"]) == (
            "False",
            reason,
            facts.problem,
        )


def test_a_pool_without_devices_cannot_wake_where_no_pod_can_hold() -> None:
    # A replica's problem (the pool has no device for it): a placed replica's pod, if any,
    # still wakes, so the gateway refuses only where no pod can hold.
    text = "ns/m-0 cannot be placed: GPUPool 'gpus' has no devices: no node advertises x/gpu"
    why = cannot_wake(with_status(mdep(pool="gpus"), StatusFacts(problem=text)))
    assert why == CannotWake("CannotPlace", text, whole_model=False)


def test_a_full_pool_waiting_its_turn_is_held() -> None:
    text = "ns/m-0 waits for room on a device: the pool is full"
    obj = with_status(mdep(pool="gpus"), StatusFacts(waiting=text, unseated=text))
    assert obj["status"]["conditions"][2]["reason"] == "WaitingForDevice"  # as the operator says
    assert cannot_wake(obj) is None


def test_a_pod_the_kubernetes_scheduler_cannot_place_yet_is_held() -> None:
    # Scheduled=False (Unschedulable) with the scheduler's message: a node may be added or
    # freed; no problem of the model's own.
    text = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    obj = with_status(mdep(), pods=(pod(unscheduled=text),), agents=(AgentState.UNREACHABLE,))
    assert obj["status"]["conditions"][2]["reason"] == "Unschedulable"
    assert cannot_wake(obj) is None


def test_a_pending_pod_beside_a_failed_replica_is_held() -> None:
    # Scheduled=False (the scheduler's word) and Degraded=True (a failed replica) at once, in
    # phase Asleep: two separate matters, neither a placement problem.
    unplaced = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    failed = EngineFailure(restarts=4, reason="CrashLoopBackOff: vllm exited 1")
    obj = with_status(
        mdep(replicas=3),
        pods=(pod("m-0"), pod("m-1", failure=failed), pod("m-2", unscheduled=unplaced)),
        agents=(AgentState.ASLEEP, AgentState.FAILED, AgentState.UNREACHABLE),
    )
    conditions = obj["status"]["conditions"]
    assert obj["status"]["phase"] == "Asleep"
    assert (conditions[2]["reason"], conditions[3]["reason"]) == ("Unschedulable", "Problem")
    assert cannot_wake(obj) is None


def test_a_hand_written_scaled_to_zero_beside_replicas_is_held() -> None:
    obj = with_status(mdep(replicas=0))
    obj["spec"]["replicas"] = 2  # the same generation: a status someone else patched
    assert cannot_wake(obj) is None


def test_a_status_of_an_older_generation_is_held() -> None:
    # Scaled back up (generation 4) before the operator wrote a status for it.
    obj = with_status(mdep(replicas=0, generation=3))
    obj["spec"]["replicas"] = 1
    obj["metadata"]["generation"] = 4
    assert cannot_wake(obj) is None
    # ... and a status without observedGeneration says nothing about the spec either.
    obj = with_status(mdep(replicas=0))
    del obj["status"]["observedGeneration"]
    assert cannot_wake(obj) is None


def test_asleep_and_no_status_are_held() -> None:
    asleep = with_status(mdep(), pods=(pod(),), agents=(AgentState.ASLEEP,))
    assert asleep["status"]["phase"] == "Asleep"
    assert cannot_wake(asleep) is None
    assert cannot_wake(mdep()) is None
    assert cannot_wake(mdep(replicas=0)) is None  # no status yet: the operator has not spoken


def test_a_problem_while_a_replica_wakes_or_loads_is_held() -> None:
    # The pool went away mid-wake: the replica may still come up; hold as before.
    for state in (AgentState.WAKING, AgentState.LOADING):
        obj = with_status(mdep(pool="gpus"), GONE, pods=(pod(),), agents=(state,))
        assert obj["status"]["phase"] in ("Waking", "Loading")
        assert obj["status"]["conditions"][3]["reason"] == "Problem"  # what else would refuse
        assert cannot_wake(obj) is None, state
