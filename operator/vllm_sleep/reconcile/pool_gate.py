"""What one pooled model may do this pass, given its pool's snapshot. Pure.

Every member of a pool derives the same plans from the same snapshot (`pool_plans`): wake
plans for as many of the replicas its model wants awake (held requests, demand, AlwaysAwake) as
its demand needs (`wake_options`) and a placement
for each replica without a pod, at most one plan per device, highest priority first. A model
then runs only the *first step* of the plans that concern it, and only when its device's turn is
free:

- `Sleep(victim)` of one of its replicas: the eviction (leave routing, drain, sleep);
- `Wake(replica)`: its lifecycle's wake;
- `Start(replica, device)`: create the pod seated there (it loads, then pre-warms).

Its own sleeps (idle, pre-warm, policy) wait while another replica's step runs on the device.
Nothing is stored: once a step settles, every member re-derives the next plan from what is then
observed, so an operator restarted mid-plan continues from the engines' real states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..api.gpu_pool import Sharing
from ..scheduler import (
    Engine,
    EngineState,
    Plan,
    Pool,
    Refusal,
    RefusalKind,
    Sleep,
    Start,
    Wake,
    level_for_sleep,
    place,
    plan_demand,
    plan_wake,
)
from .lifecycle import Action, ReplicaObservation, Route
from .lifecycle import Sleep as SleepAction
from .observe import ObservedPod


@dataclass(frozen=True)
class PoolView:
    """The pool as one pass of one member sees it."""

    pool: Pool  # every member's replicas (this model's as observed this pass)
    sharing: Sharing = Sharing.DRA
    turns: Mapping[str, str] = field(default_factory=dict)  # device -> replica whose step runs
    wants: frozenset[str] = frozenset()  # replicas their models want awake now


@dataclass(frozen=True)
class PoolRequest:
    """What a pooled model asks its pool's gate in one pass."""

    live: Sequence[ObservedPod]  # its pods (those deleted this pass marked deleting)
    observations: Mapping[str, ReplicaObservation]  # pod name -> replica as observed
    indexes: Mapping[int, str]  # replica index -> pod name: replicas the pool may act on
    actions: tuple[Action, ...]  # the lifecycle's sleeps, wakes and routes that could run


@dataclass(frozen=True)
class Gate:
    actions: tuple[Action, ...]  # the lifecycle's actions that may run now, and evictions
    seats: Mapping[int, str]  # replica index -> device: pods to create now
    turns: Mapping[str, str]  # device -> replica: the steps this pass starts
    waiting: Mapping[str, str]  # replica -> why it cannot fit now (protected neighbours, full)
    never: Mapping[str, str]  # replica -> why it can never fit (nothing is evicted for it)
    evictions: tuple[str, ...]  # Event messages: "evicted ns/a-0 (priority 0, idle 4m) to wake .."
    queued: Mapping[str, str] = field(default_factory=dict)  # replica -> waits for a busy device
    # Other models' replicas whose step is next on a device free for it (an eviction this
    # pass's wake waits on, a wake a settled neighbour made room for): the pool hands the turn
    # to their models at once instead of waiting for their next pass.
    next_steps: tuple[str, ...] = ()


# A start-up's profiling fails when a neighbour releases memory meanwhile (vLLM's "Error in
# memory profiling"), which a deleted pod's engine does when it exits: its deletion waits while
# the device's turn is a start-up's, but no longer than this (a start that never loads, e.g. a
# crash loop, must not hold a rollout on its device for good).
START_UP_WAIT = 120.0


def starting_up(holder: EngineState | None, turn_held_for: float) -> bool:
    """Whether the holder of a device's turn, in state `holder` (None: not a replica the pool
    knows), is starting up there (seated, loading) and a pod deleted beside it should wait: see
    START_UP_WAIT."""
    return holder == EngineState.LOADING and turn_held_for < START_UP_WAIT


def namespace_of(replica: str) -> str:
    return replica.split("/", 1)[0]


# Requests (held + in flight) one awake replica of a model with several is meant to carry
# before demand wakes another (docs/scheduler.md, "Demand-proportional wake").
WAKE_PER_REPLICA = 8


def wake_options(view: PoolView, now: float) -> tuple[list[Plan | Refusal], frozenset[str]]:
    """The wakes the pool plans now, and the replicas wanted awake that demand does not need.

    A model's replicas wake in proportion to its demand (`scheduler.plan_demand`): the first
    wanted one as soon as anything asks (the lifecycle wants a wake only then), another for
    every WAKE_PER_REPLICA held and in-flight requests, instead of every replica at once and
    the neighbours evicted for them. AlwaysAwake models (never evicted) wake every replica."""
    pool = view.pool
    wanted: dict[str, list[Engine]] = {}
    for e in pool.engines:
        if e.replica in view.wants and e.state == EngineState.ASLEEP:
            wanted.setdefault(e.model, []).append(e)
    options: list[Plan | Refusal] = []
    for model, es in sorted(wanted.items()):
        if not all(e.evictable for e in es):
            options += [plan_wake(pool, e.replica, now) for e in es]
            continue
        candidates = frozenset(e.replica for e in es)
        options += plan_demand(pool, model, WAKE_PER_REPLICA, now, 1, candidates)
    considered = {o.replica for o in options}
    spare = frozenset(e.replica for es in wanted.values() for e in es) - considered
    return options, spare


def pool_plans(
    view: PoolView, now: float, wakes: list[Plan | Refusal] | None = None
) -> tuple[list[Plan], list[Refusal]]:
    """Every plan the pool wants now, at most one per device, most important first.
    `wakes`: `wake_options`, when the caller already has them."""
    pool = view.pool
    options = list(wake_options(view, now)[0] if wakes is None else wakes)
    pending = [e for e in pool.engines if e.state == EngineState.PENDING and e.device is None]
    # A device whose turn is taken runs a step already (perhaps of a model outside the pool,
    # which none of its engines shows): no start-up there now, another device if one fits.
    held = frozenset(view.turns)
    if view.sharing == Sharing.DRA:
        # A namespace's pods reference its own claim of a device, and a device is allocated to
        # one claim: a device serves one namespace at a time.
        for ns in sorted({namespace_of(e.replica) for e in pending}):
            placed = place(_for_namespace(pool, ns), now, held)
            options += [*placed.plans, *placed.refusals]
    elif pending:
        placed = place(pool, now, held)
        options += [*placed.plans, *placed.refusals]
    engines = pool.engine_by_replica
    plans = sorted(
        (p for p in options if isinstance(p, Plan) and p.steps),
        # Highest priority first, then the replica that has waited longest since it was last
        # awake, so equal neighbours take turns instead of the first name winning every time.
        key=lambda p: (-engines[p.replica].priority, engines[p.replica].woken_at or 0.0, p.replica),
    )
    out: list[Plan] = []
    used: set[str] = set()
    for p in plans:
        if p.device not in used:
            used.add(p.device)
            out.append(p)
    return out, [r for r in options if isinstance(r, Refusal)]


def _for_namespace(pool: Pool, ns: str) -> Pool:
    foreign = {
        e.device for e in pool.engines if e.device is not None and namespace_of(e.replica) != ns
    }
    devices = tuple(d for d in pool.devices if d.id not in foreign)
    keep = {d.id for d in devices}
    engines = tuple(
        e
        for e in pool.engines
        if (e.device in keep) or (e.device is None and namespace_of(e.replica) == ns)
    )
    return Pool(
        devices=devices,
        nodes=pool.nodes,
        engines=engines,
        default_residual=pool.default_residual,
        slots_per_device=pool.slots_per_device,
    )


def gate(view: PoolView, namespace: str, request: PoolRequest, now: float) -> Gate:
    """The model's part of the pool's plans; `view.pool` already holds its replicas as
    observed this pass (the actor published them)."""
    pool = view.pool
    pods = {f"{namespace}/{p.name}": p for p in request.live}
    indexes = {f"{namespace}/{name}": i for i, name in request.indexes.items()}
    actions = request.actions
    wakes, spare = wake_options(view, now)
    plans, refusals = pool_plans(view, now, wakes)
    turns: dict[str, str] = {}

    def free(device: str | None, replica: str) -> bool:
        """The device's turn is free for `replica`: no other step runs or starts there."""
        if device is None:
            return False
        holder = view.turns.get(device) or turns.get(device)
        if holder is not None and holder != replica:
            return False
        busy = pool.busy(device)
        return busy is None or busy.replica == replica

    out: list[Action] = []
    wake_ok: set[str] = set()
    seats: dict[int, str] = {}
    evictions: list[str] = []
    claimed: set[str] = set()  # devices whose next step is another replica's plan
    others: list[str] = []
    for p in plans:
        first = p.steps[0]
        replica = first.replica
        if replica not in indexes:
            claimed.add(p.device)
            if free(p.device, replica):
                others.append(replica)
            continue
        if not free(p.device, replica):
            continue
        if isinstance(first, Sleep):
            pod = pods.get(replica)
            if pod is None or not pod.ip or pod.deleting:
                continue
            out.append(Route(pod.name, False))  # out of routing first, even if not seen in
            victim, _, target = first.reason.rpartition(", to ")
            out.append(SleepAction(pod.name, first.level, f"evicted: {first.reason}"))
            evictions.append(f"evicted {replica} ({victim}) to {target}")
        elif isinstance(first, Wake):
            wake_ok.add(replica)
        elif isinstance(first, Start):
            seats[indexes[replica]] = first.device
        turns[p.device] = replica

    evicted = {a.pod for a in out if isinstance(a, SleepAction)}

    def sleep_ok(a: SleepAction, device: str | None, replica: str) -> bool:
        return device is not None and device not in claimed and free(device, replica)

    for i, a in enumerate(actions):
        replica = f"{namespace}/{a.pod}"
        device = _device(pool, replica)
        if a.pod in evicted:
            continue  # the eviction replaces whatever its lifecycle wanted this pass
        if isinstance(a, Route):
            nxt = actions[i + 1] if i + 1 < len(actions) else None
            if (
                not a.routed
                and isinstance(nxt, SleepAction)
                and nxt.pod == a.pod
                and not sleep_ok(nxt, device, replica)
            ):
                continue  # the sleep it prepares waits: stay routed meanwhile
            if a not in out:
                out.append(a)
        elif isinstance(a, SleepAction):
            if sleep_ok(a, device, replica):
                # Past the node's host offload budget a level-1 sleep would pin more than it
                # may: the pool says level 2 (idle sleeps and the pre-warm alike).
                level = max(a.level, level_for_sleep(pool, replica))
                out.append(a if level == a.level else replace(a, level=level))
                if device is not None:
                    turns[device] = replica
        elif replica in wake_ok:
            out.append(a)

    waiting: dict[str, str] = {}
    queued: dict[str, str] = {}
    for r in refusals:
        if r.kind == RefusalKind.NOT_NOW and r.replica in indexes:
            # A busy device clears by itself in seconds; protected neighbours or a full pool
            # may not: only those are worth an Event.
            transient = "is busy" in r.reason or r.reason.startswith(f"{r.replica} is ")
            (queued if transient else waiting)[r.replica] = r.reason
    for a in actions:  # wakes wanted but not planned now: their device runs something else
        replica = f"{namespace}/{a.pod}"
        wake = not isinstance(a, (SleepAction, Route))
        if wake and replica not in wake_ok and replica not in waiting and replica not in spare:
            queued.setdefault(replica, f"{replica} waits for its device's turn")
    never = {
        r.replica: r.reason
        for r in refusals
        if r.kind == RefusalKind.NEVER and r.replica in indexes
    }
    return Gate(tuple(out), seats, turns, waiting, never, tuple(evictions), queued, tuple(others))


def _device(pool: Pool, replica: str) -> str | None:
    e: Engine | None = pool.engine_by_replica.get(replica)
    return e.device if e is not None else None
