"""The sleep/wake decision for one model: observed replicas + policy + time -> actions. Pure.

Everything the operator decides about a model's replicas is here, with time as an argument, so
it is testable without a cluster and replayable after a restart: the inputs are the agents'
reports (the truth about each engine) and the model's status (the operator's memory), never
anything held only in the operator's process.

Protocol (docs/operator.md, "Lifecycle of a replica"): to sleep, first take the replica out of routing (readiness
gate False), then ask its agent to drain and sleep; to wake, ask the agent, and only once it
confirms put the replica back into routing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ..api.agent_protocol import AgentState


class Policy(StrEnum):
    AUTO = "Auto"
    ALWAYS_AWAKE = "AlwaysAwake"
    ASLEEP = "Asleep"


@dataclass(frozen=True)
class ModelPolicy:
    policy: Policy
    level: int  # 1 or 2
    idle_timeout: float  # seconds
    min_awake: float  # seconds; never sleep a replica younger than this after a wake
    wake_on_request: bool = True
    # Its sleeps grant the agent the wake of a held request (docs/agent.md, "Wake on request"):
    # policy Auto with wake on request, outside a GPUPool (reconcile/policy.py).
    agent_wake: bool = False


@dataclass(frozen=True)
class ReplicaObservation:
    pod: str
    agent: AgentState
    routed: bool = False  # the pod's vllm-sleep.io/awake condition is True
    inflight: int = 0
    held: int = 0  # requests waiting in the agent for an awake engine
    last_activity: float | None = None  # unix seconds of the last inference request
    deleting: bool = False
    wake_grant: bool = False  # asleep, and its agent may wake it for a held request
    # Its pod is to be deleted (outdated by a spec change, or surplus): it is put to sleep
    # first, which drains the requests running on it and holds what arrives, and never woken.
    retiring: bool = False


@dataclass(frozen=True)
class ReplicaMemory:
    """Per-replica facts the operator keeps in status (restart-safe memory)."""

    woken_at: float | None = None  # when the last wake completed
    slept_at: float | None = None  # when the last sleep completed
    prewarmed: bool = False  # the first (slow) sleep after load happened


@dataclass(frozen=True)
class Sleep:
    pod: str
    level: int
    reason: str
    # An idle sleep (idle timer, pre-warm): the agent refuses it while requests run, because
    # its count is exact and this decision may rest on a report older than the newest request.
    # False: forced (policy, explicit request, eviction): the agent drains first.
    idle: bool = False
    # The agent may wake the replica itself for a request held while it sleeps (the grant is
    # the sleep's: every sleep says it, and the next wake consumes it).
    wake_on_request: bool = False
    # Only the grant of the sleep in place changes (`wake_on_request` says how): the agent
    # refuses it unless asleep, so it is never a sleep, and nothing counts it as one.
    grant_only: bool = False


@dataclass(frozen=True)
class Wake:
    """Ask the pod's agent to wake its engine. The pod goes back into routing (a Route) only
    once its agent reports it awake."""

    pod: str
    reason: str


@dataclass(frozen=True)
class Route:
    """Set the pod's readiness gate: True puts it into routing (once its agent reports it
    awake), False takes it out (before a sleep, so no new request reaches a draining engine)."""

    pod: str
    routed: bool


Action = Sleep | Wake | Route


@dataclass(frozen=True)
class Decision:
    actions: list[Action] = field(default_factory=list)
    next_check_in: float | None = None  # seconds until a timer (idle, minAwake) may fire


def decide(
    policy: ModelPolicy,
    replicas: list[ReplicaObservation],
    memory: dict[str, ReplicaMemory],
    demand_at: float | None,
    now: float,
    sleep_request: float | None = None,
) -> Decision:
    """Actions for every replica. `demand_at`: newest demand Lease renewal; `sleep_request`:
    newest explicit request to sleep (`vllm-sleep sleep NAME`), honoured unless newer demand."""
    actions: list[Action] = []
    timers: list[float] = []
    for r in replicas:
        if r.deleting:
            continue
        mem = memory.get(r.pod, ReplicaMemory())
        acts, timer = _decide_replica(policy, r, mem, demand_at, now, sleep_request)
        actions += acts
        if timer is not None:
            timers.append(timer)
    return Decision(actions, min(timers) if timers else None)


def _decide_replica(
    policy: ModelPolicy,
    r: ReplicaObservation,
    mem: ReplicaMemory,
    demand_at: float | None,
    now: float,
    sleep_request: float | None,
) -> tuple[list[Action], float | None]:
    if r.retiring:
        unrouted: list[Action] = [Route(r.pod, False)] if r.routed else []
        if r.agent == AgentState.AWAKE:
            # Level 2: nothing to pin on the host for an engine about to exit.
            return [*unrouted, Sleep(r.pod, 2, "to be replaced: drains first")], None
        return unrouted, None
    if r.agent == AgentState.AWAKE:
        if _asked_to_sleep(policy, r, mem, demand_at, sleep_request):
            return _sleep(r, policy, "sleep requested"), None
        return _awake(policy, r, mem, demand_at, now)
    if r.agent == AgentState.ASLEEP:
        unroute: list[Action] = [Route(r.pod, False)] if r.routed else []
        if _wants_wake(policy, r, mem, demand_at):
            return [*unroute, Wake(r.pod, _wake_reason(policy, r))], None
        if r.wake_grant and not policy.agent_wake:
            # The policy changed (or the model joined a pool) since the sleep granted the agent
            # its wake: a grant-only order takes it back (refused if the engine woke since).
            why = "the agent may no longer wake it on request"
            return [*unroute, Sleep(r.pod, policy.level, why, idle=True, grant_only=True)], None
        return unroute, None
    # Loading, failed, unreachable or mid-transition: never route; act once it settles.
    return ([Route(r.pod, False)] if r.routed else []), None


def _awake(
    policy: ModelPolicy,
    r: ReplicaObservation,
    mem: ReplicaMemory,
    demand_at: float | None,
    now: float,
) -> tuple[list[Action], float | None]:
    if policy.policy == Policy.ALWAYS_AWAKE:
        return ([] if r.routed else [Route(r.pod, True)]), None
    if policy.policy == Policy.ASLEEP:
        return _sleep(r, policy, "policy is Asleep"), None
    if not mem.prewarmed and mem.woken_at is None and r.held == 0 and r.inflight == 0:
        # Pre-warm: the first sleep after load is the slow one (pinned host buffers are
        # allocated), so pay it now, off any request's critical path, unless someone is
        # asking for the model right now (recent demand).
        recent = demand_at is not None and now - demand_at <= policy.idle_timeout
        if not recent:
            return _sleep(r, policy, "pre-warm after load", idle=True), None
    route: list[Action] = [] if r.routed else [Route(r.pod, True)]
    if r.inflight > 0 or r.held > 0:
        return route, policy.idle_timeout
    since = max(t for t in (r.last_activity, mem.woken_at, demand_at, 0.0) if t is not None)
    idle_at = since + policy.idle_timeout
    young_until = (mem.woken_at or 0.0) + policy.min_awake
    due = max(idle_at, young_until)
    if now >= due:
        return _sleep(r, policy, f"idle for {now - since:.0f}s", idle=True), None
    return route, due - now


def sleep_request_ignored(policy: ModelPolicy) -> str | None:
    """Why a request to sleep (`vllm-sleep sleep`, the sleep-request annotation) changes
    nothing under `policy`; None when it is honoured."""
    if policy.policy == Policy.ALWAYS_AWAKE:
        return "sleep.policy is AlwaysAwake: it is never put to sleep (set policy Auto or Asleep)"
    return None


def demand_ignored(policy: ModelPolicy) -> str | None:
    """Why demand (a held request, `vllm-sleep wake`) wakes nothing under `policy`; None when
    it wakes the model."""
    if policy.policy == Policy.ASLEEP:
        return "sleep.policy is Asleep: demand never wakes it (set policy Auto or AlwaysAwake)"
    if not policy.wake_on_request:
        return "wake.onRequest is false: demand never wakes it (set it true, or policy AlwaysAwake)"
    return None


def _asked_to_sleep(
    policy: ModelPolicy,
    r: ReplicaObservation,
    mem: ReplicaMemory,
    demand_at: float | None,
    sleep_request: float | None,
) -> bool:
    if sleep_request is None or sleep_request_ignored(policy) is not None:
        return False
    if r.inflight or r.held:
        return False  # the request is honoured once the work in progress is done
    newer_than = [t for t in (mem.woken_at, demand_at) if t is not None]
    return all(sleep_request > t for t in newer_than)


def _sleep(
    r: ReplicaObservation, policy: ModelPolicy, reason: str, *, idle: bool = False
) -> list[Action]:
    sleep = Sleep(r.pod, policy.level, reason, idle, wake_on_request=policy.agent_wake)
    # Leave routing first, then sleep: a request never races a sleeping engine.
    return [Route(r.pod, False), sleep] if r.routed else [sleep]


def _wants_wake(
    policy: ModelPolicy, r: ReplicaObservation, mem: ReplicaMemory, demand_at: float | None
) -> bool:
    if policy.policy == Policy.ALWAYS_AWAKE:
        return True
    if demand_ignored(policy) is not None:
        return False
    return r.held > 0 or _demand_since(demand_at, mem.slept_at)


def _demand_since(demand_at: float | None, since: float | None) -> bool:
    if demand_at is None:
        return False
    return since is None or demand_at > since


def _wake_reason(policy: ModelPolicy, r: ReplicaObservation) -> str:
    if policy.policy == Policy.ALWAYS_AWAKE:
        return "policy is AlwaysAwake"
    if r.held > 0:
        return f"{r.held} request(s) held at the pod"
    return "demand"
