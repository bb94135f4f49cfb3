"""Who may be put to sleep to make room, in which order, and at which level.

Order: lowest priority first, then least recently active (the newer of its last request and its
last wake; never active sorts first), then replica id so the order is total and deterministic.
Never a replica that is not awake, may not be evicted (AlwaysAwake), has requests in flight or
held, or has been awake for less than its minAwake.
"""

from __future__ import annotations

import math

from .model import Engine, EngineState
from .plan import age


def activity(e: Engine) -> float:
    times = [t for t in (e.last_activity, e.woken_at) if t is not None]
    return max(times) if times else -math.inf


def eviction_key(e: Engine) -> tuple[int, float, str]:
    return (e.priority, activity(e), e.replica)


def eviction_blocker(e: Engine, now: float) -> str | None:
    """Why `e` may not be evicted now, or None when it may."""
    if e.state != EngineState.AWAKE:
        return f"{e.replica} is {e.state}"
    if not e.evictable:
        return f"{e.replica} is never evicted (AlwaysAwake)"
    if e.inflight:
        return f"{e.replica} has {e.inflight} request(s) in flight"
    if e.held:
        return f"{e.replica} has {e.held} request(s) held"
    if e.woken_at is not None and now - e.woken_at < e.min_awake:
        return f"{e.replica} awake for {age(now - e.woken_at)} < minAwake {age(e.min_awake)}"
    return None


def eviction_reason(e: Engine, now: float, verb: str, target: str) -> str:
    last = activity(e)
    idle = "never used" if last == -math.inf else f"idle {age(now - last)}"
    return f"priority {e.priority}, {idle}, to {verb} {target}"


def sleep_level(e: Engine, host_used: int, host_budget: int | None) -> int:
    """The level that frees the engine's weights: level 1 while the node's host budget has
    room for the weights it pins (nothing more when a backup is already held), else level 2; a
    model configured for level 2 always 2. A level-0 (KV-only) model that must free its weights
    sleeps at level 2: its pod's memory has no room for pinned weights (docs/scheduler.md)."""
    if e.level in (0, 2):
        return 2
    extra = 0 if e.holds_backup else e.weights
    if host_budget is None or host_used + extra <= host_budget:
        return 1
    return 2


def host_cost(e: Engine, level: int) -> int:
    """Host bytes a sleep at `level` adds on the node."""
    return e.weights if level == 1 and not e.holds_backup else 0
