"""A spec change replaces a model's pods one at a time while its other replicas serve, as a
Deployment's rolling update with maxSurge 0, maxUnavailable 1 (reconcile/rollout.py)."""

from __future__ import annotations

from planning import body, observed, pod, report

from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.reconcile.observe import EngineFailure
from vllm_sleep.reconcile.plan import plan


def _deleted(p) -> list[str]:  # type: ignore[no-untyped-def]
    return [d.name for d in p.delete]


def test_of_two_serving_outdated_replicas_one_is_replaced_at_a_time() -> None:
    raw = body(replicas=2)
    pods = [pod(raw, 0, spec_hash="old"), pod(raw, 1, spec_hash="old", ip="10.0.0.2")]
    asleep = {"m-0": report(AgentState.ASLEEP), "m-1": report(AgentState.AWAKE)}
    p = plan(observed(raw, pods, asleep))
    assert _deleted(p) == ["m-0"]
    assert [r["pod"] for r in p.status["replicas"]] == ["m-1"]


def test_the_next_replica_waits_until_the_new_one_can_serve() -> None:
    raw = body(replicas=2)
    new0 = pod(raw, 0)  # the replacement, up to date
    old1 = pod(raw, 1, spec_hash="old", ip="10.0.0.2")
    loading = {"m-0": report(AgentState.LOADING), "m-1": report(AgentState.AWAKE)}
    assert _deleted(plan(observed(raw, [new0, old1], loading))) == []
    terminating = {"m-1": report(AgentState.AWAKE)}
    going = pod(raw, 0, spec_hash="old", deleting=True)
    assert _deleted(plan(observed(raw, [going, old1], terminating))) == []
    prewarmed = {"m-0": report(AgentState.ASLEEP), "m-1": report(AgentState.AWAKE)}
    assert _deleted(plan(observed(raw, [new0, old1], prewarmed))) == ["m-1"]


def test_an_outdated_replica_that_cannot_serve_goes_at_once() -> None:
    raw = body(replicas=3)
    pods = [
        pod(raw, 0, spec_hash="old"),
        pod(raw, 1, spec_hash="old", ip="10.0.0.2"),
        pod(raw, 2, spec_hash="old", ip="10.0.0.3"),
    ]
    reports = {
        "m-0": report(AgentState.AWAKE),
        "m-1": report(AgentState.LOADING),
        "m-2": report(AgentState.FAILED),
    }
    # m-1 and m-2 serve nothing: replaced at once; m-0, the one serving, stays meanwhile.
    assert sorted(_deleted(plan(observed(raw, pods, reports)))) == ["m-1", "m-2"]


def test_a_crash_looping_outdated_pod_goes_at_once() -> None:
    from dataclasses import replace

    raw = body(replicas=2)
    crashing = replace(pod(raw, 0, spec_hash="old"), failure=EngineFailure(3, "CUDA out of memory"))
    serving = pod(raw, 1, spec_hash="old", ip="10.0.0.2")
    reports = {"m-0": report(AgentState.AWAKE), "m-1": report(AgentState.AWAKE)}
    assert _deleted(plan(observed(raw, [crashing, serving], reports))) == ["m-0"]


def test_a_single_replica_is_replaced_at_once() -> None:
    raw = body(replicas=1)
    p = plan(observed(raw, [pod(raw, 0, spec_hash="old")], {"m-0": report(AgentState.AWAKE)}))
    assert _deleted(p) == ["m-0"]


def test_a_missing_replica_holds_the_replacement_of_a_serving_one() -> None:
    raw = body(replicas=2)
    only = pod(raw, 1, spec_hash="old", ip="10.0.0.2")
    p = plan(observed(raw, [only], {"m-1": report(AgentState.AWAKE)}))
    assert _deleted(p) == []
    assert [c.name for c in p.create] == ["m-0"]  # the missing one is made first
