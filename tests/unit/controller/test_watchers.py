"""A transition's answer never replaces a newer report the long-poll already brought."""

from __future__ import annotations

import asyncio

from vllm_sleep.api.agent_protocol import AgentState, StateReport
from vllm_sleep.controller.watchers import AgentWatchers
from vllm_sleep.reconcile.lifecycle import ReplicaMemory
from vllm_sleep.reconcile.observe import ObservedPod


class NoAgents:
    pass


def pod(ip: str) -> ObservedPod:
    return ObservedPod(
        name="m-0",
        uid="u",
        replica=0,
        spec_hash=None,
        phase="Running",
        deleting=False,
        ip=ip,
        node="n",
        routed=True,
        memory=ReplicaMemory(),
    )


def test_an_older_transition_answer_does_not_replace_a_newer_report() -> None:
    w = AgentWatchers(NoAgents(), asyncio.Event())  # type: ignore[arg-type]
    newer = StateReport(state=AgentState.AWAKE, inflight=0, version=7)
    w.set_report("m-0", "10.0.0.1", newer)
    w.set_report("m-0", "10.0.0.1", StateReport(state=AgentState.AWAKE, held=2, version=5))
    assert w.report(pod("10.0.0.1")) == newer
    newest = StateReport(state=AgentState.AWAKE, version=8)
    w.set_report("m-0", "10.0.0.1", newest)
    assert w.report(pod("10.0.0.1")) == newest
    older_elsewhere = StateReport(state=AgentState.LOADING, version=1)  # a new pod, a new agent
    w.set_report("m-0", "10.0.0.2", older_elsewhere)
    assert w.report(pod("10.0.0.2")) == older_elsewhere
