"""Which of a model's outdated pods (their spec hash differs from the spec's) go now.

A spec change (a new image, new arguments) replaces every replica's pod. Replaced all at once,
a model with several replicas would have none able to serve until the new pods have loaded,
minutes on a real GPU. So, as a Deployment's rolling update with maxSurge 0 and
maxUnavailable 1 does: an outdated pod that cannot serve anyway (its engine loading, failed,
its agent silent) goes at once; one that can serve goes only while every other replica of the
model can serve too, one at a time. A replica that can serve is one whose agent reports it
awake, asleep or between the two: a sleeping replica serves after a wake of seconds, which is
what this operator is for. A model of one replica has nothing to keep serving meanwhile: its
pod is replaced at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..api.agent_protocol import AgentState, StateReport
from .observe import ObservedPod

CAN_SERVE = frozenset(
    {
        AgentState.AWAKE,
        AgentState.ASLEEP,
        AgentState.DRAINING,
        AgentState.SLEEPING,
        AgentState.WAKING,
    }
)


def can_serve(pod: ObservedPod, reports: Mapping[str, StateReport]) -> bool:
    report = reports.get(pod.name)
    return (
        not pod.deleting
        and pod.failure is None
        and report is not None
        and report.state in CAN_SERVE
    )


def replace_now(
    outdated: Sequence[ObservedPod],
    current: Sequence[ObservedPod],
    reports: Mapping[str, StateReport],
    replicas: int,
) -> tuple[list[ObservedPod], list[ObservedPod]]:
    """(the outdated pods to delete now, those to keep for now). `current`: the model's other
    live pods of wanted replicas (up to date, or already terminating)."""
    now = [p for p in outdated if not can_serve(p, reports)]
    serving = [p for p in outdated if can_serve(p, reports)]
    ready = {p.replica for p in current if can_serve(p, reports)}
    ready |= {p.replica for p in serving}
    all_serve = not now and len(ready) >= replicas
    if serving and (all_serve or replicas <= 1):
        first = min(serving, key=lambda p: p.replica)
        now.append(first)
        serving.remove(first)
    return now, serving
