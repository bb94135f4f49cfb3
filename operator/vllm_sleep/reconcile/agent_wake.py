"""A wake the agent ran by itself, as the operator accounts for it. Pure.

A sleep outside a GPUPool under policy Auto grants the agent its wake (docs/agent.md, "Wake on
request"): the first request held while asleep wakes the engine without the operator. The
operator learns of it from the agent's report (`woken_by: request`) and counts it as its own
wakes: the wake's start is the replica's `woken_at` (for `minAwake` and the idle timer) as soon
as it is seen, before the annotation is written; then it writes that annotation once, and posts
a `Woke` Event. It never orders a second wake: the replica reads as waking, then awake.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.agent_protocol import AgentState, StateReport, WakeOrigin
from .lifecycle import ReplicaMemory

# The memory and the report both carry milliseconds (the annotation's `%.3f`).
_SAME = 0.001


@dataclass(frozen=True)
class AgentWake:
    """A wake of `pod` started by its agent at `started` (unix seconds) that the replica's
    memory does not hold yet."""

    pod: str
    started: float
    seconds: float | None  # how long the engine took to wake, when the agent said
    level: int | None

    @property
    def key(self) -> str:
        """Each wake once (the plan's `Reported`), however many passes see it."""
        return f"{self.pod}@{self.started:.3f}"

    @property
    def message(self) -> str:
        took = f" in {self.seconds:.2f}s" if self.seconds is not None else ""
        return f"{self.pod}: awake{took}, woken by its agent for a request held while asleep"


def agent_woken_at(mem: ReplicaMemory, report: StateReport) -> float | None:
    """When the agent's own wake started, if the memory has no wake since that one; else None.

    Stale reports are ignored: an engine awake since before the last sleep started (the
    report predates it) is no wake. A `woken_at` at or after the wake's start is this wake
    already written, or the operator's own wake that joined it: either way it is counted.
    """
    if report.state is not AgentState.AWAKE or report.woken_by is not WakeOrigin.REQUEST:
        return None
    if report.since is None:
        return None
    started = report.wake_started if report.wake_started is not None else report.since
    if mem.slept_at is not None and report.since <= mem.slept_at:
        return None
    if mem.woken_at is not None and mem.woken_at >= started - _SAME:
        return None
    return started


def memory_with_agent_wake(mem: ReplicaMemory, report: StateReport) -> ReplicaMemory:
    """The replica's memory, with a wake of its agent's that is not written yet."""
    started = agent_woken_at(mem, report)
    if started is None:
        return mem
    return ReplicaMemory(woken_at=started, slept_at=mem.slept_at, prewarmed=True)


def agent_wake(pod: str, mem: ReplicaMemory, report: StateReport) -> AgentWake | None:
    """The agent's wake of `pod` to account for (memory, metric, Event), or None."""
    started = agent_woken_at(mem, report)
    if started is None:
        return None
    seconds = None
    if report.since is not None and report.wake_started is not None:
        seconds = max(0.0, report.since - report.wake_started)
    return AgentWake(pod, started, seconds, report.level)


def slept_before(mem: ReplicaMemory, report: StateReport) -> bool:
    """Whether the replica has slept at least once (its pre-warm is done). The pod's memory says
    so (pre-warmed, a sleep, or a wake: a wake follows a sleep), or its agent's report does
    (asleep, or awake after a wake it names): an idle sleep, the pre-warm included, writes no
    memory (`ModelController._sleep`), and a restarted agent forgets who woke it."""
    return (
        mem.prewarmed
        or mem.slept_at is not None
        or mem.woken_at is not None
        or report.state == AgentState.ASLEEP
        or report.woken_by is not None
    )
