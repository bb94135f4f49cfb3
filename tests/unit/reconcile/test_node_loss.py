"""Pods on lost nodes are force-deleted and replaced after a bound (reconcile.node_loss)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from planning import NOW, body, observed, pod, report

from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.api.demand import parse_micro_time
from vllm_sleep.controller.nodes import NodeCache
from vllm_sleep.reconcile.node_loss import (
    GONE,
    NODE_LOST_SECONDS,
    NodeHealth,
    lost,
    node_health,
    nodes_to_check,
    silent_young_in,
)
from vllm_sleep.reconcile.observe import ObservedPod, observe_pod
from vllm_sleep.reconcile.plan import DeletePod, plan


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(ready: str, since: float, *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "n1"}
    if deleting:
        meta["deletionTimestamp"] = stamp(since)
    cond = {
        "type": "Ready",
        "status": ready,
        "reason": "NodeStatusUnknown",
        "lastTransitionTime": stamp(since),
    }
    return {"metadata": meta, "status": {"conditions": [cond]}}


def on(p: ObservedPod, name: str = "n1", **kw: Any) -> ObservedPod:
    return replace(p, node=name, **kw)


DOWN_LONG = NodeHealth(True, "Unknown", NOW - NODE_LOST_SECONDS - 1, "NodeStatusUnknown")
DOWN_NOW = NodeHealth(True, "Unknown", NOW - 5, "NodeStatusUnknown")
UP = NodeHealth(True, "True", NOW - 3600)


def test_node_health_reads_the_ready_condition_and_its_time() -> None:
    h = node_health(node("Unknown", NOW - 30))
    assert h == NodeHealth(True, "Unknown", NOW - 30, "NodeStatusUnknown")
    assert node_health(None) == GONE
    assert node_health(node("False", NOW, deleting=True)) == GONE
    assert node_health({"metadata": {"name": "n"}}) == NodeHealth(True)


def test_a_pod_is_lost_only_past_the_bound_or_with_its_node_gone() -> None:
    p = on(pod(body()))
    assert lost(p, {"n1": UP}, NOW) is None
    assert lost(p, {"n1": DOWN_NOW}, NOW) is None
    why = lost(p, {"n1": DOWN_LONG}, NOW)
    assert why is not None and "n1" in why and "Ready=Unknown" in why
    assert lost(p, {"n1": GONE}, NOW) is not None
    assert lost(p, {}, NOW) is None  # not looked up: presumed fine
    assert lost(p, {"n1": NodeHealth(True, "False", None)}, NOW) is None  # no clock to run
    assert lost(p, {"n1": DOWN_NOW}, NOW, bound=4) is not None


def test_a_pooled_pod_not_yet_bound_counts_as_on_its_seats_node() -> None:
    p = replace(pod(body()), node=None, device="n1/gpu-0", phase="Pending", ip=None)
    assert lost(p, {"n1": DOWN_LONG}, NOW) is not None


def test_only_nodes_of_live_pods_whose_agent_is_silent_are_checked() -> None:
    raw = body(replicas=5)
    answering = on(pod(raw, 0), "a")
    silent = on(pod(raw, 1), "b")
    bound_pending = on(pod(raw, 2, phase="Pending"), "c")
    stuck = on(pod(raw, 3, deleting=True), "d")
    ended = on(pod(raw, 4, phase="Failed"), "e")
    unbound = pod(raw, 4, phase="Pending")
    reports = {"m-0": report(AgentState.AWAKE)}
    pods = [answering, silent, bound_pending, stuck, ended, unbound]
    assert nodes_to_check(pods, reports) == {"b", "c", "d"}


def test_a_pod_younger_than_the_bound_has_its_node_checked_only_once_it_is_older() -> None:
    # A fleet starting up: every agent silent while its engine loads, no Node read.
    raw = body(replicas=3)
    young = replace(on(pod(raw, 0), "a"), created=NOW - 5)
    old = replace(on(pod(raw, 1), "b"), created=NOW - NODE_LOST_SECONDS - 1)
    unknown_age = on(pod(raw, 2), "c")
    assert young.created is not None and unknown_age.created is None
    pods = [young, old, unknown_age]
    assert nodes_to_check(pods, {}, NOW) == {"b", "c"}
    assert nodes_to_check(pods, {}, NOW, bound=4) == {"a", "b", "c"}
    assert nodes_to_check(pods, {}) == {"a", "b", "c"}  # no clock: every age


def test_the_pass_comes_back_when_a_silent_young_pod_is_old_enough_to_check() -> None:
    # A node deleted under a loading pod: nothing else would bring a pass before the resync.
    raw = body(replicas=2)
    young = replace(on(pod(raw, 0), "a"), created=NOW - 5)
    heard = replace(on(pod(raw, 1), "b"), created=NOW - 1)
    reports = {heard.name: report(AgentState.ASLEEP)}
    assert silent_young_in([young, heard], reports, NOW, NODE_LOST_SECONDS) == NODE_LOST_SECONDS - 5
    assert silent_young_in([heard], reports, NOW, NODE_LOST_SECONDS) is None  # its agent answers
    the_plan = plan(observed(raw, [young, heard], reports))
    assert the_plan.next_check_in is not None
    assert the_plan.next_check_in <= NODE_LOST_SECONDS - 5


def test_a_pods_creation_time_is_observed() -> None:
    raw = body()
    p = pod(raw)
    assert p.created is None
    made = observe_pod(
        {"metadata": {"name": "m-0", "creationTimestamp": "2026-12-07T16:01:08Z"}, "status": {}}
    )
    assert made.created == parse_micro_time("2026-12-07T16:01:08Z")


def test_a_pod_on_a_lost_node_is_force_deleted_replaced_and_reported() -> None:
    raw = body()
    p = on(pod(raw, 0, routed=True))
    the_plan = plan(observed(raw, [p], nodes={"n1": DOWN_LONG}))
    assert [(d.name, d.force) for d in the_plan.delete] == [("m-0", True)]
    assert [c.name for c in the_plan.create] == ["m-0"]  # the same name, free at once
    assert [e.reason for e in the_plan.events] == ["NodeLost"]
    assert the_plan.actions == ()  # nothing is asked of an agent that is gone


def test_a_pod_stuck_terminating_on_a_lost_node_is_force_deleted() -> None:
    raw = body()
    p = on(pod(raw, 0, deleting=True))
    assert plan(observed(raw, [p])).delete == ()  # otherwise left to kubelet
    the_plan = plan(observed(raw, [p], nodes={"n1": GONE}))
    assert the_plan.delete == (DeletePod("m-0", p.uid, the_plan.delete[0].why, force=True),)


def test_a_node_not_ready_for_less_than_the_bound_is_waited_for_with_a_timer() -> None:
    raw = body(sleep={"idleTimeout": "1h"})
    p = on(pod(raw, 0))
    the_plan = plan(
        observed(raw, [p], {"m-0": report(AgentState.UNREACHABLE)}, nodes={"n1": DOWN_NOW})
    )
    assert the_plan.delete == () and the_plan.create == ()
    assert the_plan.next_check_in is not None
    assert the_plan.next_check_in <= NODE_LOST_SECONDS - 5 + 1e-6


def test_the_node_cache_reads_each_node_once_per_ttl() -> None:
    reads: list[str] = []

    async def get_node(name: str) -> dict[str, Any] | None:
        reads.append(name)
        return None if name == "gone" else node("True", NOW)

    async def run() -> None:
        cache = NodeCache(ttl=10)
        first = await cache.health(get_node, ["a", "gone", "a"], 100.0)
        assert first["gone"] == GONE and first["a"].ready == "True"
        await cache.health(get_node, ["a"], 105.0)
        assert reads == ["a", "gone"]
        await cache.health(get_node, ["a"], 111.0)
        assert reads == ["a", "gone", "a"]

    asyncio.run(run())


def test_most_nodes_down_at_once_is_a_disruption_and_replaces_nothing() -> None:
    from vllm_sleep.reconcile.node_loss import disrupted

    up, down = node("True", NOW), node("Unknown", NOW - 600)
    assert not disrupted([])
    assert not disrupted([up, down])  # one of two: a lost node, replace its pods
    assert disrupted([up, down, down])  # two of three: more likely the network
    assert disrupted([down])
    cluster = [up, down, down]
    gets: list[str] = []

    async def get_node(name: str) -> dict[str, Any] | None:
        gets.append(name)
        return down

    async def list_nodes() -> list[dict[str, Any]]:
        return cluster

    async def run() -> None:
        cache = NodeCache(ttl=10)
        assert await cache.health(get_node, ["n1"], 100.0, list_nodes) == {}
        assert gets == []  # nothing is reported, so no pod is lost
        cluster[1] = cluster[2] = up  # the nodes came back; one is still down
        cluster.append(down)
        assert await cache.health(get_node, ["n1"], 105.0, list_nodes) == {}  # within the ttl
        seen = await cache.health(get_node, ["n1"], 111.0, list_nodes)
        assert seen["n1"].ready == "Unknown"  # one of four down: a node loss again

    asyncio.run(run())


def test_a_pool_counts_no_devices_on_a_node_that_is_not_ready() -> None:
    from vllm_sleep.api.gpu_pool import GPUPoolSpec
    from vllm_sleep.reconcile.pool_devices import pool_devices

    spec = GPUPoolSpec.model_validate(
        {"sharing": "TimeSlicing", "deviceMemory": "80Gi", "deviceResourceName": "nvidia.com/gpu"}
    )

    def gpu_node(name: str, ready: str) -> dict[str, Any]:
        n = node(ready, NOW)
        n["metadata"] = {"name": name, "labels": {"nvidia.com/gpu.count": "1"}}
        n["status"]["allocatable"] = {"nvidia.com/gpu": "1"}
        return n

    nodes = [gpu_node("up", "True"), gpu_node("lost", "Unknown"), gpu_node("sick", "False")]
    assert [d.id for d in pool_devices(spec, nodes)] == ["up/gpu-0"]
