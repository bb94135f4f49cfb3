"""The reconcile plan, without Kubernetes: pods, routes, sleeps, wakes, Events and status."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from planning import NOW, body, observed, pod, report

from vllm_sleep.api.agent_protocol import AgentState, StateReport
from vllm_sleep.api.model_status import ModelDeploymentStatus
from vllm_sleep.api.names import ANNOTATION_SLEEP_REQUEST
from vllm_sleep.reconcile.lifecycle import Action, Route, Sleep, Wake
from vllm_sleep.reconcile.observe import (
    ANNOTATION_PREWARMED,
    ANNOTATION_SLEPT_AT,
    ANNOTATION_WOKEN_AT,
)
from vllm_sleep.reconcile.placement import Placement
from vllm_sleep.reconcile.plan import (
    DeletePod,
    Event,
    Reported,
    Transition,
    plan,
    replica_memory,
)

AWAKE_A_WHILE = {ANNOTATION_PREWARMED: "true", ANNOTATION_WOKEN_AT: f"{NOW - 5:.3f}"}
PREWARMED_ASLEEP = {ANNOTATION_PREWARMED: "true", ANNOTATION_SLEPT_AT: f"{NOW - 600:.3f}"}


# --- pods ----------------------------------------------------------------------------------


def test_missing_replicas_are_created_from_the_builders() -> None:
    p = plan(observed(body(replicas=2)))
    assert [c.name for c in p.create] == ["m-0", "m-1"]
    assert p.delete == ()
    assert p.create[0].manifest["metadata"]["labels"]["vllm-sleep.io/replica"] == "0"


def test_a_surplus_replica_is_deleted_with_its_uid_as_precondition() -> None:
    raw = body(replicas=1)
    pods = [pod(raw, 0), pod(raw, 1, uid="u1")]
    p = plan(observed(raw, pods))
    assert p.delete == (DeletePod("m-1", "u1", "surplus replica"),)
    assert p.create == ()
    assert [r["pod"] for r in p.status["replicas"]] == ["m-0"]


def test_a_pod_whose_shape_changed_is_replaced() -> None:
    raw = body()
    p = plan(observed(raw, [pod(raw, 0, spec_hash="old")]))
    assert [(d.name, d.why) for d in p.delete] == [("m-0", "spec changed")]
    assert [c.name for c in p.create] == ["m-0"]


def test_an_ended_pod_is_replaced() -> None:
    raw = body()
    p = plan(observed(raw, [pod(raw, 0, phase="Failed")]))
    assert [(d.name, d.why) for d in p.delete] == [("m-0", "pod Failed")]
    assert [c.name for c in p.create] == ["m-0"]


def test_a_terminating_pod_is_shown_not_acted_on_nor_replaced_yet() -> None:
    raw = body()
    terminating = pod(raw, 0, deleting=True, routed=True)
    p = plan(observed(raw, [terminating], {"m-0": report(AgentState.AWAKE)}))
    assert (p.delete, p.create, p.actions) == ((), (), ())
    assert p.watch == {}  # its agent is not long-polled any more
    assert p.status["replicas"][0]["state"] == "Terminating"


def test_a_model_that_cannot_be_placed_keeps_its_pods_and_creates_none() -> None:
    raw = body(replicas=2)
    stuck = Placement(None, "GPUPool 'p' does not exist")
    p = plan(observed(raw, [pod(raw, 0, spec_hash="old")], placement=stuck))
    assert (p.delete, p.create) == ((), ())
    assert p.events == (Event("Warning", "CannotPlace", "GPUPool 'p' does not exist"),)
    conditions = {c["type"]: c for c in p.status["conditions"]}
    assert conditions["Scheduled"]["status"] == "False"
    assert conditions["Scheduled"]["message"] == "GPUPool 'p' does not exist"
    # No replica of it is placed or woken: the whole model's problem (the gateway then refuses
    # its requests even where a sleeping pod's agent could hold them).
    assert conditions["Scheduled"]["reason"] == "NoPlacement"
    assert conditions["Degraded"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"
    # The same problem on the next pass is not reported again; a new one is.
    again = plan(observed(raw, [], placement=stuck, reported=p.reported))
    assert again.events == ()
    other = Placement(None, "GPUPool 'q' is invalid")
    assert [e.reason for e in plan(observed(raw, placement=other, reported=p.reported)).events] == [
        "CannotPlace"
    ]


# --- routes, sleeps, wakes -----------------------------------------------------------------


def test_an_awake_prewarmed_replica_joins_routing() -> None:
    raw = body()
    p = plan(observed(raw, [pod(raw, annotations=AWAKE_A_WHILE)], {"m-0": report()}))
    assert p.actions == (Route("m-0", True),)
    assert p.next_check_in is not None and p.next_check_in > 0


def test_a_freshly_loaded_replica_is_prewarmed_by_a_sleep() -> None:
    raw = body(sleep={"level": 2})
    p = plan(observed(raw, [pod(raw)], {"m-0": report()}))
    # Policy Auto outside a pool: the sleep grants its agent the wake of a held request.
    assert p.actions == (Sleep("m-0", 2, "pre-warm after load", idle=True, wake_on_request=True),)


def test_an_idle_routed_replica_leaves_routing_then_sleeps() -> None:
    raw = body(sleep={"idleTimeout": "1m"})
    idle = {ANNOTATION_PREWARMED: "true", ANNOTATION_WOKEN_AT: f"{NOW - 3600:.3f}"}
    p = plan(observed(raw, [pod(raw, routed=True, annotations=idle)], {"m-0": report()}))
    assert [type(a) for a in p.actions] == [Route, Sleep]
    assert p.actions[0] == Route("m-0", False)


def test_held_requests_wake_an_asleep_replica() -> None:
    raw = body()
    reports = {"m-0": report(AgentState.ASLEEP, held=2)}
    p = plan(observed(raw, [pod(raw, annotations=PREWARMED_ASLEEP)], reports))
    assert p.actions == (Wake("m-0", "2 request(s) held at the pod"),)


def test_demand_newer_than_the_last_sleep_wakes() -> None:
    raw = body()
    asleep = [pod(raw, annotations=PREWARMED_ASLEEP)]
    reports = {"m-0": report(AgentState.ASLEEP)}
    assert plan(observed(raw, asleep, reports, demand_at=NOW - 1)).actions == (
        Wake("m-0", "demand"),
    )
    assert plan(observed(raw, asleep, reports, demand_at=NOW - 900)).actions == ()


def test_the_sleep_request_annotation_puts_an_awake_replica_to_sleep() -> None:
    raw = body(annotations={ANNOTATION_SLEEP_REQUEST: "2027-01-15T08:00:00.000000Z"})
    woken_before = {ANNOTATION_PREWARMED: "true", ANNOTATION_WOKEN_AT: "1000.000"}
    p = plan(observed(raw, [pod(raw, annotations=woken_before)], {"m-0": report()}, now=1.9e9))
    assert p.actions == (Sleep("m-0", 1, "sleep requested", wake_on_request=True),)


def test_no_sleep_or_wake_while_one_runs_or_without_an_ip_but_routes_still_change() -> None:
    raw = body(sleep={"idleTimeout": "1m"})
    idle = {ANNOTATION_PREWARMED: "true", ANNOTATION_WOKEN_AT: f"{NOW - 3600:.3f}"}
    awake = {"m-0": report()}
    running = plan(
        observed(
            raw,
            [pod(raw, routed=True, annotations=idle)],
            awake,
            transitions={"m-0": Transition.WAKE},
        )
    )
    assert running.actions == (Route("m-0", False),)
    no_ip = plan(observed(raw, [pod(raw, ip=None, routed=True, annotations=idle)], awake))
    assert no_ip.actions == (Route("m-0", False),)
    assert no_ip.watch == {}


def test_a_running_sleep_reads_as_sleeping_until_the_agent_says_otherwise() -> None:
    raw = body()
    p = plan(
        observed(
            raw,
            [pod(raw, annotations=AWAKE_A_WHILE)],
            {"m-0": report()},
            transitions={"m-0": Transition.SLEEP},
        )
    )
    assert p.actions == ()  # no Route(True) for an engine we are putting to sleep
    assert p.status["replicas"][0]["state"] == "Sleeping"
    assert p.status["phase"] == "Draining"


def test_admit_is_the_seam_for_a_scheduler_to_gate_wakes() -> None:
    raw = body()
    reports = {"m-0": report(AgentState.ASLEEP, held=1)}
    seen: list[tuple[Action, ...]] = []

    def no_room(actions: tuple[Action, ...]) -> tuple[Action, ...]:
        seen.append(actions)
        return tuple(a for a in actions if not isinstance(a, Wake))

    p = plan(observed(raw, [pod(raw, annotations=PREWARMED_ASLEEP)], reports), admit=no_room)
    assert seen == [(Wake("m-0", "1 request(s) held at the pod"),)]
    assert p.actions == ()


def test_agents_of_live_pods_with_an_ip_are_watched() -> None:
    raw = body(replicas=3)
    pods = [pod(raw, 0, ip="10.0.0.7"), pod(raw, 1, ip=None), pod(raw, 2, ip="10.0.0.9")]
    assert plan(observed(raw, pods)).watch == {"m-0": "10.0.0.7", "m-2": "10.0.0.9"}


def test_an_asleep_engine_without_our_annotations_needs_no_prewarm() -> None:
    raw = body()
    mem = replica_memory(pod(raw), report(AgentState.ASLEEP, since=NOW - 60))
    assert (mem.prewarmed, mem.slept_at) == (True, NOW - 60)
    kept = replica_memory(pod(raw, annotations=PREWARMED_ASLEEP), report(AgentState.ASLEEP))
    assert kept.slept_at == NOW - 600


def test_a_replica_awake_after_a_wake_is_not_prewarmed_again_without_any_annotation() -> None:
    """An idle sleep (the pre-warm) writes no memory on the pod; the wake's memory may not have
    landed yet (or failed): the agent's report naming the wake says the replica slept."""
    raw = body()
    bare = pod(raw)
    woken = report(
        AgentState.AWAKE,
        since=NOW - 2,
        woken_by="operator",
        wake_started=NOW - 3,
        last_activity=NOW - 1,  # the request it woke for
    )
    assert replica_memory(bare, woken).prewarmed
    p = plan(observed(raw, [bare], {"m-0": woken}))
    assert not [a for a in p.actions if isinstance(a, Sleep)]
    assert p.actions == (Route("m-0", True),)
    assert not replica_memory(bare, report(AgentState.AWAKE, since=NOW - 2)).prewarmed


def test_demand_answered_by_a_sleep_whose_annotation_lags_does_not_wake_it_again() -> None:
    """The sleep's annotation is written alongside the agent call: the pod cache may still
    hold the previous sleep's time when the agent already reports asleep since later."""
    raw = body()
    stale = pod(raw, annotations=PREWARMED_ASLEEP)  # slept_at = NOW - 600 (the pre-warm)
    asleep = report(AgentState.ASLEEP, since=NOW - 1)  # this sleep, after the demand below
    assert replica_memory(stale, asleep).slept_at == NOW - 1
    p = plan(observed(raw, [stale], {"m-0": asleep}, demand_at=NOW - 5))
    assert not [a for a in p.actions if isinstance(a, Wake)]


# --- Events ----------------------------------------------------------------------------------


def test_engine_failed_is_reported_once_per_restart_count() -> None:
    raw = body()
    failing = [pod(raw, restarts=1)]
    first = plan(observed(raw, failing))
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "EngineFailed")]
    assert "CUDA out of memory" in first.events[0].message
    assert plan(observed(raw, failing, reported=first.reported)).events == ()
    again = plan(observed(raw, [pod(raw, restarts=2)], reported=first.reported))
    assert [e.reason for e in again.events] == ["EngineFailed"]


def test_a_replacement_pod_with_the_same_name_reports_its_own_failure() -> None:
    raw = body()
    first = plan(observed(raw, [pod(raw, restarts=1, uid="old")]))
    successor = plan(observed(raw, [pod(raw, restarts=1, uid="new")], reported=first.reported))
    assert [e.reason for e in successor.events] == ["EngineFailed"]
    assert dict(successor.reported.restarts) == {"new": 1}  # the gone pod is forgotten


def test_a_failing_engine_the_agent_still_calls_awake_is_not_failed() -> None:
    raw = body()
    p = plan(observed(raw, [pod(raw, restarts=1)], {"m-0": report(AgentState.AWAKE)}))
    assert p.events == ()


def test_nothing_to_report_gives_no_events_and_keeps_memory_empty() -> None:
    p = plan(observed(body()))
    assert p.events == ()
    assert p.reported == Reported()


# --- properties ------------------------------------------------------------------------------

pod_shapes = st.fixed_dictionaries(
    {
        "ip": st.sampled_from([None, "10.0.0.1"]),
        "routed": st.booleans(),
        "deleting": st.booleans(),
        "phase": st.sampled_from(["Pending", "Running", "Failed"]),
        "restarts": st.integers(0, 2),
        "stale": st.booleans(),
    }
)
agent_reports = st.builds(
    report,
    st.sampled_from(list(AgentState)),
    held=st.integers(0, 2),
    inflight=st.integers(0, 2),
)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 3),
    st.lists(pod_shapes, max_size=4),
    st.lists(agent_reports, min_size=4, max_size=4),
    st.lists(st.sampled_from([None, Transition.SLEEP, Transition.WAKE]), min_size=4, max_size=4),
    st.one_of(st.none(), st.floats(NOW - 3600, NOW)),
)
def test_plan_safety_properties(
    replicas: int,
    shapes: list[dict[str, Any]],
    reports: list[StateReport],
    running: list[Transition | None],
    demand: float | None,
) -> None:
    raw = body(replicas=replicas)
    pods = [
        pod(
            raw,
            i,
            ip=s["ip"],
            routed=s["routed"],
            deleting=s["deleting"],
            phase=s["phase"],
            restarts=s["restarts"],
            spec_hash="old" if s["stale"] else None,
        )
        for i, s in enumerate(shapes)
    ]
    by_name = {p.name: p for p in pods}
    transitions = {p.name: t for p, t in zip(pods, running, strict=False) if t is not None}
    p = plan(
        observed(
            raw,
            pods,
            {q.name: r for q, r in zip(pods, reports, strict=False)},
            transitions=transitions,
            demand_at=demand,
        )
    )
    deleted = {d.name for d in p.delete}
    assert not any(by_name[n].deleting for n in deleted)  # a terminating pod is left alone
    created = {c.name for c in p.create}
    assert created.isdisjoint(n for n, q in by_name.items() if n not in deleted)
    assert len(created) + len(by_name) - len(deleted) >= replicas  # every replica exists
    for a in p.actions:
        assert a.pod not in deleted and not by_name[a.pod].deleting
        if isinstance(a, Sleep | Wake):
            assert by_name[a.pod].ip and a.pod not in transitions
        if isinstance(a, Route) and a.routed:
            assert reports[pods.index(by_name[a.pod])].state is AgentState.AWAKE
    assert set(p.watch) <= {n for n, q in by_name.items() if q.ip and not q.deleting} - deleted
    ModelDeploymentStatus.model_validate(p.status)
    # A second pass over the same world reports nothing new.
    again = plan(
        observed(
            raw,
            pods,
            {q.name: r for q, r in zip(pods, reports, strict=False)},
            transitions=transitions,
            demand_at=demand,
            reported=p.reported,
        )
    )
    assert again.events == ()
