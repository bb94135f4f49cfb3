"""A spec change replaces a model's pods one at a time while its other replicas serve, as a
Deployment's rolling update with maxSurge 0, maxUnavailable 1 (reconcile/rollout.py)."""

from __future__ import annotations

from planning import body, observed, pod, report

from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.reconcile.observe import EngineFailure
from vllm_sleep.reconcile.plan import plan


def _deleted(p) -> list[str]:  # type: ignore[no-untyped-def]
    return [d.name for d in p.delete]


def _retire(p) -> list[str]:  # type: ignore[no-untyped-def]
    """Pods put to sleep before they go (level 2: nothing to pin for an engine about to exit)."""
    from vllm_sleep.reconcile.lifecycle import Sleep

    return [a.pod for a in p.actions if isinstance(a, Sleep) and a.level == 2 and not a.idle]


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
    retired = plan(observed(raw, [new0, old1], prewarmed))
    assert _deleted(retired) == [] and _retire(retired) == ["m-1"]  # its turn: sleeps first
    asleep = {"m-0": report(AgentState.ASLEEP), "m-1": report(AgentState.ASLEEP)}
    assert _deleted(plan(observed(raw, [new0, old1], asleep))) == ["m-1"]


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
    p = plan(observed(raw, [pod(raw, 0, spec_hash="old")], {"m-0": report(AgentState.ASLEEP)}))
    assert _deleted(p) == ["m-0"]


def test_a_serving_replica_sleeps_before_its_pod_goes_so_no_request_is_cut() -> None:
    """Outdated or surplus, an awake replica's pod is not deleted under the requests it runs
    (vLLM exits under them): it leaves routing and sleeps first (the sleep drains them and
    holds what arrives), never woken again; once asleep its pod goes. One that sleeps or wakes
    now goes once that ended."""
    from vllm_sleep.reconcile.lifecycle import Route

    raw = body(replicas=1)
    old = pod(raw, 0, spec_hash="old", routed=True)
    p = plan(observed(raw, [old], {"m-0": report(AgentState.AWAKE, inflight=3)}))
    assert _deleted(p) == [] and p.create == ()  # the name is still taken
    assert p.actions[0] == Route("m-0", False) and _retire(p) == ["m-0"]
    for busy in (AgentState.WAKING, AgentState.DRAINING, AgentState.SLEEPING):
        p = plan(observed(raw, [old], {"m-0": report(busy)}))
        assert _deleted(p) == [] and _retire(p) == []
    held = plan(observed(raw, [old], {"m-0": report(AgentState.ASLEEP, held=2)}))
    assert _deleted(held) == ["m-0"]  # never woken: its agent hands the requests back
    surplus = plan(observed(body(replicas=0), [pod(raw, 0)], {"m-0": report(AgentState.AWAKE)}))
    assert _deleted(surplus) == [] and _retire(surplus) == ["m-0"]


def test_a_missing_replica_holds_the_replacement_of_a_serving_one() -> None:
    raw = body(replicas=2)
    only = pod(raw, 1, spec_hash="old", ip="10.0.0.2")
    p = plan(observed(raw, [only], {"m-1": report(AgentState.AWAKE)}))
    assert _deleted(p) == []
    assert [c.name for c in p.create] == ["m-0"]  # the missing one is made first
