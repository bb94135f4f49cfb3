"""A ModelDeployment's status from its pods and their agents' reports. Pure.

Status is for people and tools (kubectl, GitOps health checks); it carries no timestamps that
change on every pass, so an idle model causes no writes. Out comes the JSON for a merge patch of
the status subresource (`api.model_status.ModelDeploymentStatus` is its schema).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..api.agent_protocol import AgentState, StateReport
from ..api.common import Condition
from ..api.model_deployment import ModelDeployment
from ..api.model_status import ConditionReason, ConditionType, ModelDeploymentStatus
from ..api.model_status import ModelPhase as Phase
from .lifecycle import ReplicaObservation
from .observe import ObservedPod
from .phase import summarize

Status = dict[str, Any]  # JSON of ModelDeploymentStatus, camelCase


@dataclass(frozen=True)
class StatusFacts:
    """What the status says beyond pods and reports."""

    problem: str | None = None  # why the model cannot be placed (a spec or GPUPool problem)
    # `problem` is the whole model's (`reconcile.placement.place`: no pool, an invalid one, a
    # spec a pool cannot run): no replica is placed or woken, not only the ones without a seat.
    whole_model: bool = False
    last_sleep_seconds: float | None = None  # duration of this operator's last sleep
    last_wake_seconds: float | None = None
    waiting: str | None = None  # pooled: why a wanted replica waits for room on its device
    # Why the gateway serves this model no traffic (api.served_names): (reason, message).
    name_refusal: tuple[str, str] | None = None
    # pooled: why replicas without a pod have no seat yet (their pool is full for now)
    unseated: str | None = None


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_status(
    model: ModelDeployment,
    pods: Sequence[ObservedPod],
    observations: Sequence[ReplicaObservation],
    reports: Mapping[str, StateReport],
    now: float,
    facts: StatusFacts = StatusFacts(),
) -> Status:
    """`pods` and `observations` are the live replicas, in the same order."""
    desired = model.spec.replicas
    summary = summarize(list(observations), desired)
    replicas: list[dict[str, Any]] = []
    activity: list[float] = []
    failures: list[str] = []
    for pod, obs in zip(pods, observations, strict=True):
        rep = reports.get(pod.name)
        entry: dict[str, Any] = {"pod": pod.name, "node": pod.node, "state": replica_state(obs)}
        if pod.device:
            entry["device"] = pod.device
        if rep and rep.since:
            entry["since"] = rfc3339(rep.since)
        if rep and rep.level is not None and obs.agent == AgentState.ASLEEP:
            entry["level"] = rep.level
        if obs.agent == AgentState.FAILED and pod.failure is not None:
            entry["message"] = pod.failure.reason
            failures.append(pod.failure.reason)
        elif rep and rep.last_error:
            # The agent's word on its last transition, which failed (e.g. a wake whose weight
            # reload failed; the engine sleeps again): why the replica is not where it should be.
            entry["message"] = rep.last_error[:1024]
        replicas.append(entry)
        if obs.last_activity:
            activity.append(obs.last_activity)
    unscheduled = facts.problem or next((p.unscheduled for p in pods if p.unscheduled), None)
    problem = facts.problem or (failures[0] if failures else None)
    previous = model.status
    status: Status = {
        "phase": summary.phase.value,
        "awake": f"{summary.awake}/{desired}",
        "replicas": replicas,
        "observedGeneration": model.metadata.generation,
        "conditions": _conditions(
            previous.conditions if previous else [],
            summary.phase,
            summary.awake,
            desired,
            summary.failed,
            summary.reason,
            problem,
            unscheduled,
            now,
            facts.waiting,
            facts.name_refusal,
            facts.unseated,
            cannot_place=facts.problem is not None,
            whole_model=facts.whole_model,
        ),
    }
    if activity:
        status["lastActivityTime"] = rfc3339(max(activity))
    elif previous and previous.last_activity_time:
        status["lastActivityTime"] = rfc3339(previous.last_activity_time.timestamp())
    before = previous or ModelDeploymentStatus()
    for key, mine, kept in (
        ("lastSleepSeconds", facts.last_sleep_seconds, before.last_sleep_seconds),
        ("lastWakeSeconds", facts.last_wake_seconds, before.last_wake_seconds),
    ):
        if mine is not None:
            status[key] = round(mine, 3)
        elif kept is not None:
            status[key] = kept
    return status


def keep_transition_times(status: Status, last: Status | None) -> Status:
    """`status` with each condition's lastTransitionTime taken from `last` (the status this
    operator wrote last) where that condition's status is the same there.

    `model_status` reads the previous transition times from the model's body, which may not show
    the last write yet: a condition that flipped in it would read as flipping again, with a new
    time, on every pass until the body catches up (a status write per pass for nothing)."""
    if not last:
        return status
    before = {c["type"]: c for c in last.get("conditions") or []}
    conditions = []
    for c in status.get("conditions") or []:
        prior = before.get(c["type"])
        if prior is not None and prior["status"] == c["status"]:
            c = {**c, "lastTransitionTime": prior["lastTransitionTime"]}
        conditions.append(c)
    return {**status, "conditions": conditions} if "conditions" in status else status


def awaits_its_pods(status: Status) -> bool:
    """The status of a model still starting with nothing wrong: its pods do not exist yet, or
    each replica is Starting (no agent answered yet) or Loading (its engine loads), with no
    message (Pending, no replicas; or Pending/Loading; not Degraded, nothing unschedulable).
    What the pass that creates its pods computes, and the passes that see them scheduled,
    their containers start and their engines load. A new model's such statuses are held
    (`controller/coalesce.py`, defer_first, at most its first hold of 10 s) until one that says
    more supersedes them: in a bring-up the pre-warm's Asleep, one write instead of three; with a
    slow load (minutes on a real GPU), the Loading status 10 s after the model's creation."""
    conditions = status.get("conditions") or []
    troubled = any(
        (c.get("type") == ConditionType.DEGRADED and c.get("status") == "True")
        or (c.get("type") == ConditionType.SCHEDULED and c.get("status") == "False")
        for c in conditions
    )
    if troubled:
        return False
    replicas = status.get("replicas") or []
    if not replicas:
        return status.get("phase") == Phase.PENDING
    return status.get("phase") in (Phase.PENDING, Phase.LOADING) and all(
        r.get("state") in ("Starting", "Loading") and not r.get("message") for r in replicas
    )


def replica_state(obs: ReplicaObservation) -> str:
    """The replica's state as `status.replicas[].state` spells it (docs/api.md)."""
    if obs.deleting:
        return "Terminating"
    return {
        AgentState.UNREACHABLE: "Starting",
        AgentState.LOADING: "Loading",
        AgentState.AWAKE: "Awake" if obs.routed else "Loaded",
        AgentState.DRAINING: "Draining",
        AgentState.SLEEPING: "Sleeping",
        AgentState.ASLEEP: "Asleep",
        AgentState.WAKING: "Waking",
        AgentState.FAILED: "Failed",
    }[obs.agent]


def _conditions(
    previous: Sequence[Condition],
    phase: Phase,
    awake: int,
    desired: int,
    failed: int,
    reason: str,
    problem: str | None,
    unscheduled: str | None,
    now: float,
    waiting: str | None = None,
    name_refusal: tuple[str, str] | None = None,
    unseated: str | None = None,
    *,
    cannot_place: bool = False,
    whole_model: bool = False,
) -> list[dict[str, Any]]:
    # lastTransitionTime moves only when a condition's status flips (metav1.Condition).
    old = {c.type: c for c in previous}

    def cond(ctype: ConditionType, ok: bool, why: str, message: str) -> dict[str, Any]:
        status = "True" if ok else "False"
        prior = old.get(ctype.value)
        kept = prior is not None and prior.status == status
        since = rfc3339(prior.last_transition_time.timestamp() if prior and kept else now)
        return {
            "type": ctype.value,
            "status": status,
            "reason": why,
            "message": message,
            "lastTransitionTime": since,
        }

    # Ready: the model can serve a request now or after a wake (asleep is a healthy state).
    # A model refused its served name is healthy but unreachable through the gateway: not Ready.
    ready = (
        phase in (Phase.AWAKE, Phase.ASLEEP, Phase.WAKING, Phase.DRAINING)
        and not problem
        and name_refusal is None
    )
    if problem:
        degraded = ("Problem", problem)
    elif name_refusal is not None:
        degraded = name_refusal
    elif failed:
        degraded = ("ReplicasFailed", f"{failed} replica(s) failed")
    else:
        degraded = ("AsExpected", "no problems")
    # Not Ready for a problem or a refused name, whatever the phase: Ready's reason says that,
    # not "Asleep: all replicas asleep", which reads as healthy. Scaled to zero, nothing is
    # loaded, so no request can wake it.
    why_not = degraded if (problem or name_refusal is not None) else None
    if desired == 0 and why_not is None:
        ready = False
        why_not = (
            ConditionReason.SCALED_TO_ZERO,
            "replicas is 0: nothing is loaded; the gateway answers its requests 503 at once",
        )
    return [
        cond(ConditionType.READY, ready, *(why_not or (phase.value, reason))),
        cond(
            ConditionType.AWAKE,
            awake > 0,
            "ReplicasAwake"
            if awake
            else (ConditionReason.WAITING_FOR_DEVICE if waiting else "NoReplicaAwake"),
            f"{awake}/{desired} replicas awake" + (f"; waiting: {waiting}" if waiting else ""),
        ),
        cond(
            ConditionType.SCHEDULED,
            not (unscheduled or unseated),
            _scheduled_reason(cannot_place, whole_model, unscheduled, unseated),
            unscheduled or unseated or "all pods placed",
        ),
        cond(ConditionType.DEGRADED, degraded[0] != "AsExpected", *degraded),
    ]


def _scheduled_reason(
    cannot_place: bool, whole_model: bool, unscheduled: str | None, unseated: str | None
) -> str:
    # NoPlacement or CannotPlace, not Unschedulable, for a spec or GPUPool problem: the gateway
    # answers at once for it (no wake can help), and holds for the Kubernetes scheduler's, which
    # may clear. NoPlacement when the problem is the whole model's: no replica wakes, so even a
    # sleeping pod's agent that could hold a request is not sent one; CannotPlace when it is
    # some replicas' (no device fits them), which must not refuse the placed ones' requests.
    if cannot_place:
        return ConditionReason.NO_PLACEMENT if whole_model else ConditionReason.CANNOT_PLACE
    if unscheduled:
        return ConditionReason.UNSCHEDULABLE
    if unseated:
        return ConditionReason.WAITING_FOR_DEVICE
    return ConditionReason.PODS_SCHEDULED
