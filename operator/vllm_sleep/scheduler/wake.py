"""Wake plans: which neighbours sleep (and at which level) before a replica wakes or starts.

A plan only ever lists steps on the target's device, in order; each step starts once the one
before settled, so the device sees one transition at a time and its committed memory (awake
shares + sleeping residuals) stays within the device after every step.
"""

from __future__ import annotations

from .accounting import (
    asleep_bytes,
    capacity_need,
    device_bytes,
    device_committed,
    host_committed,
    residual,
)
from .model import BUSY_STATES, Engine, EngineState, Pool
from .plan import Plan, Refusal, RefusalKind, Sleep, Start, Step, Wake, gib
from .victims import eviction_blocker, eviction_key, eviction_reason, host_cost, sleep_level


def plan_wake(pool: Pool, replica: str, now: float) -> Plan | Refusal:
    """The plan to wake `replica` (or start it, when placed but not started yet)."""
    e = pool.engine_by_replica.get(replica)
    if e is None:
        raise KeyError(f"unknown replica {replica}")
    if e.device is None:
        return Refusal(replica, RefusalKind.NOT_NOW, f"{replica} is not placed on a device yet")
    if e.state == EngineState.AWAKE:
        return Plan(replica, e.device, ())
    if e.state in BUSY_STATES:
        return Refusal(replica, RefusalKind.NOT_NOW, f"{replica} is {e.state}")
    final: Step = Wake(replica) if e.state == EngineState.ASLEEP else Start(replica, e.device)
    return make_room(pool, e, e.device, final, now)


def make_room(pool: Pool, e: Engine, device: str, final: Step, now: float) -> Plan | Refusal:
    """Evictions on `device` so that `e` fits awake there, then `final` (Wake or Start)."""
    verb = "wake" if isinstance(final, Wake) else "start"
    memory = pool.device_by_id[device].memory
    if e.share > memory:
        return Refusal(
            e.replica,
            RefusalKind.NEVER,
            f"{e.replica} needs {gib(e.share)}, more than device {device} ({gib(memory)})",
        )
    others = [o for o in pool.on_device(device) if o.replica != e.replica]
    for o in others:
        if o.state in BUSY_STATES:
            return Refusal(
                e.replica, RefusalKind.NOT_NOW, f"device {device} is busy: {o.replica} is {o.state}"
            )
    held_now = device_bytes(e, pool.default_residual) if e.device == device else 0
    need = e.share - held_now
    free = memory - device_committed(pool, device)
    if free >= need:
        return Plan(e.replica, device, (final,))

    # The least the neighbours can hold: evictable awake engines at their residual.
    floor = sum(_floor(o, pool.default_residual) for o in others)
    if floor + e.share > memory:
        keeping = [o for o in others if _kv_only_asleep(o)]
        deepest = floor - sum(_kv_only_extra(o, pool.default_residual) for o in keeping)
        if keeping and deepest + e.share <= memory:
            names = ", ".join(o.replica for o in keeping)
            return Refusal(
                e.replica,
                RefusalKind.NOT_NOW,
                f"{e.replica} needs {gib(e.share)} but device {device} keeps {gib(floor)} for "
                f"neighbours, with the weights of KV-only sleepers ({names}): they free them "
                "only after their next wake",
            )
        return Refusal(
            e.replica,
            RefusalKind.NEVER,
            f"{e.replica} needs {gib(e.share)} but device {device} keeps {gib(floor)} for "
            f"neighbours that cannot sleep further ({gib(memory)} in all): nothing evicted",
        )

    candidates: list[Engine] = []
    blocked: list[str] = []
    for o in sorted(others, key=eviction_key):
        if o.state != EngineState.AWAKE:
            continue
        why = eviction_blocker(o, now)
        if why is None:
            candidates.append(o)
        else:
            blocked.append(why)

    victims: list[Engine] = []
    for o in candidates:
        if free >= need:
            break
        victims.append(o)
        free += _gain(o, pool.default_residual)
    if free < need:
        return Refusal(
            e.replica,
            RefusalKind.NOT_NOW,
            f"{e.replica} needs {gib(need - free)} more on device {device}; "
            f"protected: {'; '.join(blocked)}",
        )
    # Keep any victim whose sleep turned out not to be needed (the last one always is).
    for o in reversed(victims[:-1]):
        if free - _gain(o, pool.default_residual) >= need:
            victims.remove(o)
            free -= _gain(o, pool.default_residual)

    node = pool.node_of(device)
    host_used = host_committed(pool, node.name)
    kv_only: set[str] = set()
    steps: list[Step] = []
    for o in victims:
        # A level-0 model keeps its weights when the room is there without them and the
        # device can still wake any of its replicas with them kept.
        spare = free - need
        if (
            o.level == 0
            and _kv_only_extra(o, pool.default_residual) <= spare
            and _kv_only_fits(pool, device, frozenset({*kv_only, o.replica}), e)
        ):
            kv_only.add(o.replica)
            free -= _kv_only_extra(o, pool.default_residual)
            level = 0
        else:
            level = sleep_level(o, host_used, node.host_budget)
        host_used += host_cost(o, level)
        steps.append(Sleep(o.replica, level, eviction_reason(o, now, verb, e.replica)))
    steps.append(final)
    return Plan(e.replica, device, tuple(steps))


def _gain(o: Engine, default_residual: int) -> int:
    return o.share - residual(o, default_residual)


def _floor(o: Engine, default_residual: int) -> int:
    if o.state == EngineState.AWAKE and o.evictable:
        return residual(o, default_residual)
    return device_bytes(o, default_residual)


def _kv_only_asleep(o: Engine) -> bool:
    return o.state == EngineState.ASLEEP and o.sleep_level == 0 and o.evictable


def _kv_only_extra(o: Engine, default_residual: int) -> int:
    """What a KV-only sleeper holds beyond its residual: its weights, until its next wake."""
    return asleep_bytes(o, 0, default_residual) - residual(o, default_residual)


def _kv_only_fits(
    pool: Pool, device: str, kv_only: frozenset[str], arriving: Engine | None = None
) -> bool:
    """Any replica on the device (and `arriving`, one being started there) can still be woken
    with `kv_only` asleep at level 0, keeping their weights (sleepers at level 0 free them
    only after their next wake)."""
    engines = list(pool.on_device(device))
    if arriving is not None and arriving.device != device:
        engines.append(arriving)
    need = capacity_need(engines, pool.default_residual, kv_only)
    return need <= pool.device_by_id[device].memory


def level_for_sleep(pool: Pool, replica: str) -> int:
    """The level for any other sleep of `replica` (idle timeout, pre-warm, on request): 1 while
    its node's host budget has room, else 2. A level-0 (KV-only) model: 0 while the device can
    still wake each of its replicas with those weights kept, else 2."""
    e = pool.engine_by_replica[replica]
    if e.device is None:
        return e.level
    if e.level == 0 and _kv_only_fits(pool, e.device, frozenset({e.replica})):
        return 0
    node = pool.node_of(e.device)
    return sleep_level(e, host_committed(pool, node.name), node.host_budget)
