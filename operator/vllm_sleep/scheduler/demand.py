"""Demand-proportional wake for models with several replicas.

One held request wakes one replica; more wake as held and in-flight requests grow past what the
awake ones are meant to carry, instead of waking every replica and evicting neighbours for each.
Sleeping stays the lifecycle's business (idle timeout): this only says how many should be awake.
"""

from __future__ import annotations

from .model import EngineState, Pool
from .plan import Plan, Refusal
from .wake import plan_wake


def awake_wanted(held: int, inflight: int, replicas: int, per_replica: int) -> int:
    """Replicas that should be awake for `held + inflight` requests when each awake replica is
    meant to carry `per_replica` of them at once (at least one for any demand)."""
    if per_replica < 1:
        raise ValueError(f"per_replica must be >= 1, got {per_replica}")
    demand = held + inflight
    if demand <= 0 or replicas <= 0:
        return 0
    return min(replicas, -(-demand // per_replica))


def plan_demand(
    pool: Pool,
    model: str,
    per_replica: int,
    now: float,
    least: int = 0,
    candidates: frozenset[str] | None = None,
) -> list[Plan | Refusal]:
    """Wake plans for as many more of `model`'s replicas as its demand wants.

    Replicas already awake or waking count first. The others are tried cheapest first (a plan
    with fewer evictions, then replica id), at most one plan per device, since a device runs one
    plan at a time; a replica that cannot be woken now is returned as its refusal.

    `least`: replicas wanted up whatever the counts say (1 while requests wait outside every
    engine, at a gateway). `candidates`: the sleeping replicas that may be woken (all if None).
    """
    replicas = [e for e in pool.engines if e.model == model]
    held = sum(e.held for e in replicas)
    inflight = sum(e.inflight for e in replicas)
    up = sum(
        1
        for e in replicas
        if e.state in (EngineState.AWAKE, EngineState.LOADING, EngineState.WAKING)
    )
    wanted = max(
        min(least, len(replicas)), awake_wanted(held, inflight, len(replicas), per_replica)
    )
    missing = wanted - up
    if missing <= 0:
        return []
    sleeping = sorted(
        (
            e
            for e in replicas
            if e.state == EngineState.ASLEEP and (candidates is None or e.replica in candidates)
        ),
        key=lambda e: e.replica,
    )
    options = [plan_wake(pool, e.replica, now) for e in sleeping]
    plans = sorted(
        (p for p in options if isinstance(p, Plan)), key=lambda p: (len(p.steps), p.replica)
    )
    out: list[Plan | Refusal] = []
    devices: set[str] = set()
    for p in plans:
        if len(out) == missing:
            break
        if p.device not in devices:
            devices.add(p.device)
            out.append(p)
    out += [r for r in options if isinstance(r, Refusal)][: missing - len(out)]
    return out
