"""A model's phase and conditions from its replicas' states. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from ..api.agent_protocol import AgentState
from ..api.model_status import ModelPhase as Phase  # the API's enum: one list of phases
from .lifecycle import ReplicaObservation


@dataclass(frozen=True)
class Summary:
    phase: Phase
    awake: int  # replicas awake and routed
    total: int
    failed: int
    reason: str


def summarize(replicas: list[ReplicaObservation], desired: int) -> Summary:
    live = [r for r in replicas if not r.deleting]
    states = [r.agent for r in live]
    awake = sum(1 for r in live if r.agent == AgentState.AWAKE and r.routed)
    failed = states.count(AgentState.FAILED)

    def out(phase: Phase, reason: str) -> Summary:
        return Summary(phase, awake, desired, failed, reason)

    if desired == 0:
        return out(Phase.ASLEEP, "scaled to zero replicas")
    if not live:
        return out(Phase.PENDING, "no pods yet")
    if failed == len(live):
        return out(Phase.FAILED, "every replica failed")
    if awake:
        return out(Phase.AWAKE, f"{awake}/{desired} replicas serving")
    if AgentState.WAKING in states:
        return out(Phase.WAKING, "waking")
    if AgentState.DRAINING in states or AgentState.SLEEPING in states:
        return out(Phase.DRAINING, "draining and going to sleep")
    if AgentState.AWAKE in states:  # awake but not yet routed: about to serve or to pre-warm
        return out(Phase.LOADING, "loaded; pre-warming or joining routing")
    if states and all(s == AgentState.ASLEEP for s in states):
        return out(Phase.ASLEEP, "all replicas asleep")
    if AgentState.ASLEEP in states:
        return out(Phase.ASLEEP, "replicas asleep, others starting")
    return out(Phase.LOADING, "model loading")
