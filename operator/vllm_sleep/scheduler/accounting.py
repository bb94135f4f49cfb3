"""Bytes each engine holds on its device and on its node's host, by state.

Conservative while an engine is unsettled: loading, sleeping or waking counts its whole share
on the device (a sleep has not released it yet, a wake may already have mapped it), and a
level-1 transition counts its weights on the host.
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import SLEEP_STATES, Engine, EngineState, Pool


def residual(e: Engine, default: int) -> int:
    """Device bytes the engine holds asleep: measured after its first sleep, else the default
    (never more than its share: vLLM cannot keep more than it was given)."""
    return min(e.residual if e.residual is not None else default, e.share)


def device_bytes(e: Engine, default_residual: int) -> int:
    if e.state == EngineState.PENDING:
        return 0
    if e.state == EngineState.ASLEEP:
        return residual(e, default_residual)
    return e.share


def host_bytes(e: Engine) -> int:
    """Pinned host bytes: a level-1 sleeper's weights, or a backup kept while awake (0.34)."""
    if e.holds_backup:
        return e.weights
    return e.weights if e.state in SLEEP_STATES and e.sleep_level == 1 else 0


def device_committed(pool: Pool, device: str) -> int:
    return sum(device_bytes(e, pool.default_residual) for e in pool.on_device(device))


def host_committed(pool: Pool, node: str) -> int:
    return sum(host_bytes(e) for e in pool.on_node(node))


def capacity_need(engines: Iterable[Engine], default_residual: int) -> int:
    """Device bytes needed so that any one of `engines` can be awake while the others sleep
    (those that may not be evicted stay awake too): every engine's floor (residual, or share
    when never evictable) plus the largest step from residual to share among the evictable."""
    floor = 0
    widest = 0
    for e in engines:
        res = residual(e, default_residual)
        if e.evictable:
            floor += res
            widest = max(widest, e.share - res)
        else:
            floor += e.share
    return floor + widest
