"""A pooled model's pass: pods are created only where and when its pool's gate seats them, and
the gate's actions, evictions and refusals become the plan's actions, Events and status."""

from __future__ import annotations

from typing import Any

from planning import body, observed, pod

from vllm_sleep.api.gpu_pool import GPUPoolSpec
from vllm_sleep.api.names import ANNOTATION_DEVICE
from vllm_sleep.reconcile.builders import GpuAttachment
from vllm_sleep.reconcile.lifecycle import Sleep
from vllm_sleep.reconcile.observe import observe_pod
from vllm_sleep.reconcile.placement import Placement
from vllm_sleep.reconcile.plan import plan
from vllm_sleep.reconcile.pool_devices import claim_name
from vllm_sleep.reconcile.pool_gate import Gate, PoolRequest


def pooled(sharing: str) -> Placement:
    spec = GPUPoolSpec.model_validate({"sharing": sharing, "deviceMemory": "80Gi"})
    return Placement(GpuAttachment(pool=spec))


def keeper(**gate: Any) -> tuple[list[PoolRequest], Any]:
    seen: list[PoolRequest] = []
    base: dict[str, Any] = {
        "actions": (),
        "seats": {},
        "turns": {},
        "waiting": {},
        "never": {},
        "evictions": (),
    }

    def gatekeeper(request: PoolRequest) -> Gate:
        seen.append(request)
        return Gate(**{**base, **gate})

    return seen, gatekeeper


def test_no_pod_is_created_until_the_pool_seats_it() -> None:
    seen, gk = keeper()
    out = plan(observed(body(replicas=2), placement=pooled("TimeSlicing"), gatekeeper=gk))
    assert out.create == ()
    assert dict(seen[0].indexes) == {0: "m-0", 1: "m-1"}


def test_a_seated_pod_is_pinned_to_its_node_and_under_dra_references_its_device_claim() -> None:
    _, gk = keeper(seats={1: "node-a/gpu-1"})
    out = plan(observed(body(replicas=2), placement=pooled("DRA"), gatekeeper=gk))
    (created,) = out.create
    assert created.name == "m-1"
    manifest = created.manifest
    assert manifest["metadata"]["annotations"][ANNOTATION_DEVICE] == "node-a/gpu-1"
    assert manifest["spec"]["nodeSelector"]["kubernetes.io/hostname"] == "node-a"
    claims = manifest["spec"]["resourceClaims"]
    assert claims == [{"name": "gpu", "resourceClaimName": claim_name("node-a/gpu-1")}]


def test_a_pod_made_before_its_model_joined_a_pool_is_replaced() -> None:
    _, gk = keeper()
    raw = body()
    out = plan(observed(raw, pods=[pod(raw)], placement=pooled("TimeSlicing"), gatekeeper=gk))
    assert [d.name for d in out.delete] == ["m-0"]


def test_evictions_and_refusals_become_events_and_the_status_says_why() -> None:
    sleep = Sleep("m-0", 1, "evicted: priority 0, idle 4m, to wake ns/b-0")
    _, gk = keeper(
        actions=(sleep,),
        evictions=("evicted ns/m-0 (priority 0, idle 4m) to wake ns/b-0",),
        waiting={"ns/m-1": "device n/gpu-0 is busy: ns/b-0 is waking"},
    )
    out = plan(observed(body(replicas=2), placement=pooled("TimeSlicing"), gatekeeper=gk))
    assert out.actions == (sleep,)
    reasons = [(e.reason, e.message) for e in out.events]
    assert ("Evicted", "evicted ns/m-0 (priority 0, idle 4m) to wake ns/b-0") in reasons
    assert any(r == "WaitingForDevice" for r, _ in reasons)
    awake = next(c for c in out.status["conditions"] if c["type"] == "Awake")
    assert awake["reason"] == "WaitingForDevice" and "is waking" in awake["message"]
    again = plan(
        observed(
            body(replicas=2),
            placement=pooled("TimeSlicing"),
            gatekeeper=gk,
            reported=out.reported,
        )
    )
    assert "WaitingForDevice" not in [e.reason for e in again.events]  # said once


def test_a_model_that_can_never_fit_is_degraded_with_a_cannot_place_event() -> None:
    _, gk = keeper(never={"ns/m-0": "ns/m-0 needs 92.0 GiB: the largest device (80.0 GiB)"})
    out = plan(observed(body(), placement=pooled("TimeSlicing"), gatekeeper=gk))
    assert out.create == ()
    assert [e.reason for e in out.events] == ["CannotPlace"]
    degraded = next(c for c in out.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "92.0 GiB" in degraded["message"]
    # A replica's problem, not the whole model's: its placed replicas, if any, still wake.
    assert _condition(out, "Scheduled")["reason"] == "CannotPlace"


def _condition(out: Any, ctype: str) -> dict[str, Any]:
    return next(c for c in out.status["conditions"] if c["type"] == ctype)


def seated_pod(raw: dict[str, Any]) -> Any:
    """Replica 0's pod as its pool seated it on n/gpu-0 (any other pod would be replaced)."""
    made = plan(
        observed(raw, placement=pooled("TimeSlicing"), gatekeeper=keeper(seats={0: "n/gpu-0"})[1])
    )
    manifest = made.create[0].manifest
    manifest["metadata"]["uid"] = "uid-m-0"
    manifest["spec"]["nodeName"] = "n"
    manifest["status"] = {"phase": "Running", "podIP": "10.0.0.1"}
    return observe_pod(manifest)


def test_a_replica_the_pool_cannot_seat_yet_makes_the_model_not_scheduled() -> None:
    """Scaled to more replicas than the pool has room for: the replica without a pod is not
    placed, and Scheduled says so (it said "all pods placed")."""
    why = "no device can take ns/m-1 now: 1 full (4 replicas)"
    _, gk = keeper(waiting={"ns/m-1": why})
    raw = body(replicas=2)
    out = plan(
        observed(raw, pods=[seated_pod(raw)], placement=pooled("TimeSlicing"), gatekeeper=gk)
    )
    scheduled = _condition(out, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "WaitingForDevice")
    assert why in scheduled["message"]
    assert _condition(out, "Degraded")["status"] == "False"  # it may fit later: not a problem


def test_a_placed_replica_waiting_to_wake_keeps_the_model_scheduled() -> None:
    _, gk = keeper(waiting={"ns/m-0": "device n/gpu-0 is busy: ns/b-0 is waking"})
    raw = body()
    out = plan(
        observed(raw, pods=[seated_pod(raw)], placement=pooled("TimeSlicing"), gatekeeper=gk)
    )
    assert _condition(out, "Scheduled")["status"] == "True"


def test_a_model_whose_pool_is_gone_wakes_nothing() -> None:
    """Its GPUPool deleted (a GitOps prune, a rename) while its pods run: a wake would need room
    on the shared device that only the pool's plan knows (the neighbours' memory), and woken
    unsupervised the engines ran out of device memory."""
    from planning import NOW, report

    from vllm_sleep.api.agent_protocol import AgentState
    from vllm_sleep.reconcile.lifecycle import Wake

    raw = body()
    raw["spec"]["placement"] = {"pool": "gone"}
    gone = Placement(None, "GPUPool 'gone' does not exist; create it or fix spec.placement.pool")
    asleep = [pod(raw, annotations={"vllm-sleep.io/prewarmed": "true"})]
    held = {"m-0": report(AgentState.ASLEEP, held=2)}
    out = plan(observed(raw, asleep, held, placement=gone, demand_at=NOW - 1))
    assert not [a for a in out.actions if isinstance(a, Wake)]
    assert out.delete == () and out.create == ()  # nothing lost either
    degraded = next(c for c in out.status["conditions"] if c["type"] == "Degraded")
    assert "does not exist" in degraded["message"]


def test_a_seated_pods_deletion_waits_while_a_neighbour_starts_up_beside_it() -> None:
    """Its engine's exit would release memory in the middle of the neighbour's start-up
    profiling. In the pool (an outdated pod) or out of it (the model moved out: its pod on
    the pool's device is replaced) alike; meanwhile the pool still counts the pod."""
    from dataclasses import replace

    from vllm_sleep.reconcile.plan import START_UP_RECHECK

    raw = body()
    seated = seated_pod(raw)
    asked: list[tuple[str, str]] = []

    def starting(device: str, replica: str) -> bool:
        asked.append((device, replica))
        return True

    seen, gk = keeper()
    outdated = body(sleep={"level": 2})  # reshapes the pod (no pinned host memory)
    cases = (
        observed(outdated, pods=[seated], placement=pooled("TimeSlicing"), gatekeeper=gk),
        observed(raw, pods=[seated], placement=Placement(GpuAttachment())),  # moved out
    )
    for case in cases:
        waits = plan(replace(case, start_up_beside=starting))
        assert waits.delete == () and waits.next_check_in == START_UP_RECHECK
        assert [d.name for d in plan(replace(case, start_up_beside=lambda d, r: False)).delete] == [
            "m-0"
        ]
    assert set(asked) == {("n/gpu-0", "ns/m-0")}
    assert [p.deleting for p in seen[0].live] == [True]  # still counted, whole, by its pool


def test_a_model_whose_pool_is_gone_sleeps_nothing_and_stays_routed() -> None:
    """Without its pool nothing serialises the steps on the shared device: an idle sleep (or a
    pre-warm) ran beside a neighbour's start-up on it (the e2e edits test: two transitions on
    one GPU). The replica stays awake and routed until the pool is back."""
    from planning import NOW, report

    from vllm_sleep.api.agent_protocol import AgentState
    from vllm_sleep.reconcile.lifecycle import Route, Sleep

    memory = {"vllm-sleep.io/prewarmed": "true", "vllm-sleep.io/woken-at": f"{NOW - 600:.3f}"}
    idle = {"m-0": report(AgentState.AWAKE, last_activity=NOW - 600)}
    unpooled = body(sleep={"idleTimeout": "1s"})
    control = plan(observed(unpooled, [pod(unpooled, annotations=memory, routed=True)], idle))
    assert [type(a) for a in control.actions] == [Route, Sleep]  # idle: it would sleep
    raw = body(sleep={"idleTimeout": "1s"})
    raw["spec"]["placement"] = {"pool": "gone"}
    gone = Placement(None, "GPUPool 'gone' does not exist; create it or fix spec.placement.pool")
    awake = [pod(raw, annotations=memory, routed=True)]
    out = plan(observed(raw, awake, idle, placement=gone))
    assert not [a for a in out.actions if isinstance(a, Sleep)]
    assert Route("m-0", False) not in out.actions
