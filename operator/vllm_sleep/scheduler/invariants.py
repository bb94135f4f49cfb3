"""The pool's invariants, checked on any snapshot (observed or predicted)."""

from __future__ import annotations

from .accounting import device_committed, host_committed
from .model import BUSY_STATES, Pool
from .plan import gib


def violations(pool: Pool) -> list[str]:
    """Every broken invariant, each as a sentence; empty when the pool is sound."""
    out: list[str] = []
    for d in pool.devices:
        used = device_committed(pool, d.id)
        if used > d.memory:
            out.append(f"device {d.id}: {gib(used)} committed > {gib(d.memory)}")
        busy = [e.replica for e in pool.on_device(d.id) if e.state in BUSY_STATES]
        if len(busy) > 1:
            out.append(f"device {d.id}: {len(busy)} transitions at once ({', '.join(busy)})")
        placed = len(pool.on_device(d.id))
        if placed > pool.slots_per_device:
            out.append(f"device {d.id}: {placed} replicas > {pool.slots_per_device} slots")
    for n in pool.nodes:
        if n.host_budget is None:
            continue
        pinned = host_committed(pool, n.name)
        if pinned > n.host_budget:
            out.append(f"node {n.name}: {gib(pinned)} pinned > host budget {gib(n.host_budget)}")
    return out
