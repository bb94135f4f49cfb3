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


def kv_only_bytes(e: Engine, default: int) -> int:
    """Device bytes the engine holds asleep at level 0 (KV-only): its share less its KV cache
    when that is sized; else its weights plus its residual (context, graphs); with neither
    known, its whole share (nothing is assumed freed)."""
    res = residual(e, default)
    if e.kv is not None:
        kept = e.share - e.kv
    elif e.weights:
        kept = e.weights + res
    else:
        kept = e.share
    return min(e.share, max(kept, res))


def asleep_bytes(e: Engine, level: int, default: int) -> int:
    """Device bytes the engine holds once asleep at `level`."""
    return kv_only_bytes(e, default) if level == 0 else residual(e, default)


def device_bytes(e: Engine, default_residual: int) -> int:
    if e.state == EngineState.PENDING:
        return 0
    if e.state == EngineState.ASLEEP:
        return asleep_bytes(e, 0 if e.sleep_level == 0 else 1, default_residual)
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


def floor_bytes(e: Engine, default_residual: int, kv_only: bool = False) -> int:
    """The least device memory plans can bring the engine down to: its share when it is never
    evicted; its KV-only hold when it sleeps at level 0 (or is about to: `kv_only`), since
    only its next wake lets it sleep deeper; else its residual."""
    if not e.evictable:
        return e.share
    if kv_only or (e.state == EngineState.ASLEEP and e.sleep_level == 0):
        return kv_only_bytes(e, default_residual)
    return residual(e, default_residual)


def capacity_need(
    engines: Iterable[Engine], default_residual: int, kv_only: frozenset[str] = frozenset()
) -> int:
    """Device bytes needed so that any one of `engines` can be awake while the others sleep
    (those that may not be evicted stay awake too): every engine's floor plus the largest
    step from floor to share among the evictable. `kv_only`: replicas counted asleep at
    level 0 (a sleep being decided)."""
    floor = 0
    widest = 0
    for e in engines:
        f = floor_bytes(e, default_residual, e.replica in kv_only)
        floor += f
        if e.evictable:
            widest = max(widest, e.share - f)
    return floor + widest
