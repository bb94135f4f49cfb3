"""The operator's account of a wake the agent ran by itself (reconcile/agent_wake.py), and the
grant its sleeps carry (only under policy Auto with wake on request, never in a pool)."""

from __future__ import annotations

from typing import Any

import pytest
from planning import NOW, body, model, observed, pod, report

from vllm_sleep.api.agent_protocol import AgentState, WakeOrigin
from vllm_sleep.reconcile.agent_wake import agent_woken_at
from vllm_sleep.reconcile.lifecycle import ReplicaMemory, Route, Sleep, Wake
from vllm_sleep.reconcile.observe import (
    ANNOTATION_PREWARMED,
    ANNOTATION_SLEPT_AT,
    ANNOTATION_WOKEN_AT,
)
from vllm_sleep.reconcile.plan import Reported, Transition, plan
from vllm_sleep.reconcile.policy import policy_from_spec

SLEPT = NOW - 10
STARTED = NOW - 5  # the agent's wake began here...
AWAKE_AT = NOW - 4.5  # ...and the engine was awake from here


def remembered(slept_at: float = SLEPT, woken_at: float = NOW - 3600) -> dict[str, str]:
    return {
        ANNOTATION_PREWARMED: "true",
        ANNOTATION_SLEPT_AT: f"{slept_at:.3f}",
        ANNOTATION_WOKEN_AT: f"{woken_at:.3f}",
    }


def woken(by: WakeOrigin | None = WakeOrigin.REQUEST, **kw: Any) -> Any:
    kw.setdefault("since", AWAKE_AT)
    kw.setdefault("wake_started", STARTED)
    kw.setdefault("last_activity", STARTED)
    return report(AgentState.AWAKE, woken_by=by, **kw)


def with_spec(**spec: Any) -> dict[str, Any]:
    raw = body(sleep={"idleTimeout": "1s"})
    raw["spec"].update(spec)
    return raw


def test_an_agent_wake_is_a_wake_from_its_start_once() -> None:
    raw = body()
    first = plan(observed(raw, [pod(raw, annotations=remembered())], {"m-0": woken()}))
    [wake] = first.agent_wakes
    assert (wake.pod, wake.started, wake.seconds) == ("m-0", STARTED, pytest.approx(0.5))
    woke = [e for e in first.events if e.reason == "Woke"]
    assert len(woke) == 1 and "woken by its agent" in woke[0].message
    assert Route("m-0", True) in first.actions  # routed as any awake replica
    assert not any(isinstance(a, (Wake, Sleep)) for a in first.actions)  # never a second wake
    # The next pass, before the annotation reached the pod cache: nothing said or written again.
    again = plan(
        observed(
            raw, [pod(raw, annotations=remembered())], {"m-0": woken()}, reported=first.reported
        )
    )
    assert again.agent_wakes == () and not any(e.reason == "Woke" for e in again.events)
    # Once written, the memory holds it: the rule no longer fires.
    written = remembered(woken_at=STARTED)
    later = plan(observed(raw, [pod(raw, annotations=written)], {"m-0": woken()}))
    assert later.agent_wakes == () and later.reported.agent_wakes == frozenset()


def test_min_awake_and_the_idle_timer_count_from_the_agents_wake() -> None:
    raw = with_spec(placement={"minAwake": "60s"})
    p = plan(observed(raw, [pod(raw, annotations=remembered(), routed=True)], {"m-0": woken()}))
    # Idle for 5 s past a 1 s idleTimeout, but woken 5 s ago under a 60 s minAwake: kept.
    assert not any(isinstance(a, Sleep) for a in p.actions)
    assert p.next_check_in == pytest.approx(55.0)
    # The same replica woken by the operator long ago (no agent wake): it sleeps.
    operator = woken(WakeOrigin.OPERATOR)
    p = plan(observed(raw, [pod(raw, annotations=remembered(), routed=True)], {"m-0": operator}))
    assert any(isinstance(a, Sleep) for a in p.actions)


def test_what_is_not_an_agent_wake() -> None:
    mem = ReplicaMemory(woken_at=NOW - 3600, slept_at=SLEPT, prewarmed=True)
    assert agent_woken_at(mem, woken()) == STARTED
    assert agent_woken_at(mem, woken(WakeOrigin.OPERATOR)) is None
    assert agent_woken_at(mem, woken(None)) is None  # awake since load, or a refused sleep
    # A report from before the last sleep (stale): no wake.
    assert agent_woken_at(mem, woken(since=SLEPT - 1, wake_started=SLEPT - 2)) is None
    # The operator's own wake joined it and wrote its start after the agent's: counted once.
    joined = ReplicaMemory(woken_at=STARTED + 0.01, slept_at=SLEPT, prewarmed=True)
    assert agent_woken_at(joined, woken()) is None
    # Still waking: nothing yet (the plan orders nothing for a waking replica either).
    assert agent_woken_at(mem, report(AgentState.WAKING, woken_by=WakeOrigin.REQUEST)) is None
    # The idle sleep's slept-at not in the cache yet: still this wake, not the last one.
    stale = ReplicaMemory(woken_at=SLEPT - 100, slept_at=SLEPT - 200, prewarmed=True)
    assert agent_woken_at(stale, woken()) == STARTED


def test_a_replica_the_agent_is_waking_gets_no_wake_from_the_operator() -> None:
    raw = body()
    waking = report(AgentState.WAKING, held=3, woken_by=WakeOrigin.REQUEST, since=STARTED)
    p = plan(observed(raw, [pod(raw, annotations=remembered())], {"m-0": waking}, demand_at=NOW))
    assert not any(isinstance(a, Wake) for a in p.actions)


def test_sleeps_grant_the_agent_its_wake_only_under_auto_with_wake_on_request_outside_a_pool() -> (
    None
):
    assert policy_from_spec(model(with_spec()).spec).agent_wake
    assert not policy_from_spec(model(with_spec(placement={"pool": "p"})).spec).agent_wake
    assert not policy_from_spec(model(with_spec(wake={"onRequest": False})).spec).agent_wake
    raw = with_spec()
    raw["spec"]["sleep"]["policy"] = "Asleep"
    assert not policy_from_spec(model(raw).spec).agent_wake
    # The idle sleep of an Auto model carries the grant; one without it does not.
    for spec, grant in (({}, True), ({"wake": {"onRequest": False}}, False)):
        raw = with_spec(**spec)
        idle = {**remembered(woken_at=NOW - 3600), ANNOTATION_SLEPT_AT: f"{NOW - 7200:.3f}"}
        p = plan(observed(raw, [pod(raw, annotations=idle)], {"m-0": report()}))
        [sleep] = [a for a in p.actions if isinstance(a, Sleep)]
        assert sleep.idle and sleep.wake_on_request is grant


def test_a_grant_the_policy_no_longer_allows_is_taken_back() -> None:
    raw = with_spec(wake={"onRequest": False})
    asleep = report(AgentState.ASLEEP, level=1, since=SLEPT, wake_on_request=True)
    p = plan(observed(raw, [pod(raw, annotations=remembered())], {"m-0": asleep}))
    [sleep] = [a for a in p.actions if isinstance(a, Sleep)]
    assert not sleep.wake_on_request and sleep.idle  # a no-op sleep at the agent, ungranted
    # Only the grant: refused by an agent that woke the engine meanwhile, never a new sleep.
    assert sleep.grant_only
    # A grant the policy allows is left alone.
    raw = with_spec()
    p = plan(observed(raw, [pod(raw, annotations=remembered())], {"m-0": asleep}))
    assert not any(isinstance(a, Sleep) for a in p.actions)


def test_reported_keeps_only_the_wakes_still_unwritten() -> None:
    raw = body()
    old = Reported(agent_wakes=frozenset({"m-0@1.000"}))
    p = plan(observed(raw, [pod(raw, annotations=remembered())], {"m-0": woken()}, reported=old))
    assert p.reported.agent_wakes == frozenset({f"m-0@{STARTED:.3f}"})


def test_a_wake_of_the_operators_own_that_joined_is_the_operators_to_count() -> None:
    raw = body()
    pods = [pod(raw, annotations=remembered())]
    p = plan(observed(raw, pods, {"m-0": woken()}, transitions={"m-0": Transition.WAKE}))
    assert p.agent_wakes == () and not any(e.reason == "Woke" for e in p.events)
