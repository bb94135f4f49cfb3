"""Placement of unplaced replicas on the devices of their pool.

Bin packing by share with sleeping residuals counted. A device takes a replica when, with it,
any one of its replicas can be awake while the others sleep (those never evicted stay awake):
the sum of every replica's floor (its residual; its share when never evicted; its weights too
while asleep at level 0) plus the largest floor-to-share step fits the device. Among the
devices that can take it:

1. devices where every replica, the new one included, fits awake at once (no swap ever):
   the tightest fit first, so small models pack together and large ones keep whole devices;
2. then devices where it will have to swap: fewest replicas first, then the least total share.

Ties go to the device listed first. A placed replica never moves. Start-up is serialised per
device: a device with a loading engine or a transition takes no new replica until it settles,
and one pass places at most one replica per device. Each placement is a plan ending in Start
(evictions first when the device has no room for the share right now).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .accounting import device_bytes, floor_bytes, residual
from .model import BUSY_STATES, Device, Engine, Pool
from .plan import Plan, Refusal, RefusalKind, Start, gib
from .wake import make_room


@dataclass(frozen=True)
class Placement:
    plans: tuple[Plan, ...]  # one per placed replica: evictions, then Start on its device
    refusals: tuple[Refusal, ...]

    @property
    def assignments(self) -> Mapping[str, str]:
        return MappingProxyType({p.replica: p.device for p in self.plans})


@dataclass
class _Load:
    """Aggregates of one device's placed replicas, updated as the pass places more."""

    index: int
    device: Device
    count: int = 0
    shares: int = 0  # every replica awake at once
    floor: int = 0  # every replica at its floor
    widest: int = 0  # largest floor-to-share step of an evictable replica
    committed: int = 0
    busy: bool = False

    def add(self, e: Engine, default_residual: int) -> None:
        floor = floor_bytes(e, default_residual)
        self.count += 1
        self.shares += e.share
        self.floor += floor
        if e.evictable:
            self.widest = max(self.widest, e.share - floor)
        self.committed += device_bytes(e, default_residual)
        self.busy = self.busy or e.state in BUSY_STATES

    def capacity_with(self, e: Engine, default_residual: int) -> int:
        res = residual(e, default_residual)
        if e.evictable:
            return self.floor + res + max(self.widest, e.share - res)
        return self.floor + e.share + self.widest


def place(pool: Pool, now: float, busy: frozenset[str] = frozenset()) -> Placement:
    """`busy`: devices where a step outside `pool`'s engines runs (another model's turn): they
    take no replica now, like a device with a start-up or transition of its own."""
    loads = [_Load(i, d, busy=d.id in busy) for i, d in enumerate(pool.devices)]
    by_id = {ld.device.id: ld for ld in loads}
    for e in pool.engines:
        if e.device is not None:
            by_id[e.device].add(e, pool.default_residual)
    pending = sorted(
        (e for e in pool.engines if e.device is None),
        key=lambda e: (-e.priority, -e.share, e.replica),
    )
    largest = max((d.memory for d in pool.devices), default=0)
    plans: list[Plan] = []
    refusals: list[Refusal] = []
    for e in pending:
        if e.share > largest:
            refusals.append(_never(e, largest))
            continue
        placed = _place_one(pool, e, loads, now)
        if isinstance(placed, Refusal):
            refusals.append(placed)
            continue
        plans.append(placed)
        ld = by_id[placed.device]
        ld.add(e, pool.default_residual)
        ld.busy = True  # its start-up (and any eviction first) now runs there
    return Placement(tuple(plans), tuple(refusals))


def _never(e: Engine, largest: int) -> Refusal:
    where = f"the largest device ({gib(largest)})" if largest else "a pool without devices"
    return Refusal(e.replica, RefusalKind.NEVER, f"{e.replica} needs {gib(e.share)}: {where}")


def _place_one(pool: Pool, e: Engine, loads: list[_Load], now: float) -> Plan | Refusal:
    busy = full = no_room = 0
    keyed: list[tuple[tuple[int, int, int, int], _Load]] = []
    empty_seen: set[int] = set()  # empty devices of one size are alike: keep the first
    for ld in loads:
        if ld.busy:
            busy += 1
            continue
        if ld.count >= pool.slots_per_device:
            full += 1
            continue
        memory = ld.device.memory
        if ld.capacity_with(e, pool.default_residual) > memory:
            no_room += 1
            continue
        if ld.count == 0:
            if memory in empty_seen:
                continue
            empty_seen.add(memory)
        if ld.shares + e.share <= memory:
            keyed.append(((0, memory - ld.shares - e.share, 0, ld.index), ld))
        else:
            keyed.append(((1, ld.count, ld.shares, ld.index), ld))
    keyed.sort(key=lambda kv: kv[0])
    protected: list[str] = []
    for _, ld in keyed:
        if ld.device.memory - ld.committed >= e.share:
            return Plan(e.replica, ld.device.id, (Start(e.replica, ld.device.id),))
        plan = make_room(pool, e, ld.device.id, Start(e.replica, ld.device.id), now)
        if isinstance(plan, Plan):
            return plan
        protected.append(plan.reason)
    parts = [
        f"{n} {what}"
        for n, what in (
            (busy, "busy (a start-up or transition in progress)"),
            (full, f"full ({pool.slots_per_device} replicas)"),
            (no_room, "without room for its share beside the residuals already there"),
            (len(protected), "would need evicting protected replicas"),
        )
        if n
    ]
    detail = "; ".join(parts) if parts else "no devices"
    if protected:
        detail += f" (first: {protected[0]})"
    return Refusal(e.replica, RefusalKind.NOT_NOW, f"no device can take {e.replica} now: {detail}")
