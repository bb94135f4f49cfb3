"""A ModelDeployment's status from its pods and their agents' reports.

Status is for people and tools (kubectl, GitOps health checks); it carries no timestamps that
change on every pass, so an idle model causes no writes.
"""

from __future__ import annotations

from typing import Any

from ..api.agent_protocol import AgentState, StateReport
from ..api.model_status import ModelPhase as Phase
from ..reconcile.lifecycle import ReplicaObservation
from ..reconcile.phase import summarize
from .kube import rfc3339
from .podstate import engine_failure


def model_status(
    body: dict[str, Any],
    model: Any,
    pods: list[dict[str, Any]],
    observations: list[ReplicaObservation],
    reports: dict[str, StateReport],
    now: float,
    children: dict[str, Any],
) -> dict[str, Any]:
    desired = int(model.spec.replicas)
    summary = summarize(observations, desired)
    replicas = []
    activity: list[float] = []
    failures: list[str] = []
    for pod, obs in zip(pods, observations, strict=True):
        name = pod["metadata"]["name"]
        rep = reports.get(name)
        entry: dict[str, Any] = {
            "pod": name,
            "node": pod.get("spec", {}).get("nodeName"),
            "state": _state(obs),
        }
        if rep and rep.since:
            entry["since"] = rfc3339(rep.since)
        if rep and rep.level is not None and obs.agent == AgentState.ASLEEP:
            entry["level"] = rep.level
        failure = engine_failure(pod) if obs.agent == AgentState.FAILED else None
        if failure is not None:
            entry["message"] = failure.reason
            failures.append(failure.reason)
        replicas.append(entry)
        if obs.last_activity:
            activity.append(obs.last_activity)
    children = {**children, "unscheduled": _unscheduled(pods, children.get("problem"))}
    if failures and not children.get("problem"):
        children["problem"] = failures[0]
    generation = body["metadata"].get("generation")
    previous = body.get("status") or {}
    status: dict[str, Any] = {
        "phase": summary.phase.value,
        "awake": f"{summary.awake}/{desired}",
        "replicas": replicas,
        "observedGeneration": generation,
        "conditions": _conditions(
            previous,
            summary.phase,
            summary.awake,
            desired,
            summary.failed,
            summary.reason,
            children,
            now,
        ),
    }
    if activity:
        status["lastActivityTime"] = rfc3339(max(activity))
    elif previous.get("lastActivityTime"):
        status["lastActivityTime"] = previous["lastActivityTime"]
    for key in ("lastSleepSeconds", "lastWakeSeconds"):
        if key in children:
            status[key] = round(float(children[key]), 3)
        elif key in previous:
            status[key] = previous[key]
    return status


def _unscheduled(pods: list[dict[str, Any]], problem: str | None) -> str | None:
    """Why replicas are not placed: the operator's own reason, else the scheduler's message."""
    if problem:
        return problem
    for pod in pods:
        for c in pod.get("status", {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return f"{pod['metadata']['name']}: {c.get('message') or c.get('reason')}"
    return None


def _state(obs: ReplicaObservation) -> str:
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
    previous: dict[str, Any],
    phase: Phase,
    awake: int,
    desired: int,
    failed: int,
    reason: str,
    children: dict[str, Any],
    now: float,
) -> list[dict[str, Any]]:
    old = {c.get("type"): c for c in previous.get("conditions") or []}
    problem = children.get("problem")

    def cond(ctype: str, ok: bool, why: str, message: str) -> dict[str, Any]:
        status = "True" if ok else "False"
        prior = old.get(ctype)
        since = (
            prior["lastTransitionTime"] if prior and prior.get("status") == status else rfc3339(now)
        )
        return {
            "type": ctype,
            "status": status,
            "reason": why,
            "message": message,
            "lastTransitionTime": since,
        }

    # Ready: the model can serve a request now or after a wake (asleep is a healthy state).
    ready = phase in (Phase.AWAKE, Phase.ASLEEP, Phase.WAKING, Phase.DRAINING) and not problem
    return [
        cond("Ready", ready, phase.value, reason),
        cond(
            "Awake",
            awake > 0,
            "ReplicasAwake" if awake else "NoReplicaAwake",
            f"{awake}/{desired} replicas awake",
        ),
        cond(
            "Scheduled",
            not children.get("unscheduled"),
            "PodsScheduled" if not children.get("unscheduled") else "Unschedulable",
            children.get("unscheduled") or "all pods placed",
        ),
        cond(
            "Degraded",
            bool(problem or failed),
            "Problem" if problem else ("ReplicasFailed" if failed else "AsExpected"),
            problem or (f"{failed} replica(s) failed" if failed else "no problems"),
        ),
    ]
