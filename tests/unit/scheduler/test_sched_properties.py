"""Property tests of the scheduler: for any sound pool, no plan step breaks an invariant.

The checks here re-state the rules with their own arithmetic (bytes per state, what each step
does to an engine) instead of calling the scheduler's accounting, so a bug there shows up.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_sleep.scheduler import (
    Device,
    Engine,
    EngineState,
    Node,
    Placement,
    Plan,
    Pool,
    Refusal,
    RefusalKind,
    Sleep,
    Start,
    Wake,
    awake_wanted,
    level_for_sleep,
    place,
    plan_demand,
    plan_wake,
)

G = 1 << 30
NOW = 10_000.0
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the rules, restated independently -------------------------------------------------------


def res_of(pool: Pool, e: Engine) -> int:
    return min(pool.default_residual if e.residual is None else e.residual, e.share)


def kept(pool: Pool, e: Engine) -> int:
    """Level 0 (KV-only) keeps the weights: share - KV when sized, else weights + residual,
    else (nothing known) the share; never below the residual nor above the share."""
    r = res_of(pool, e)
    k = e.share - e.kv if e.kv is not None else (e.weights + r if e.weights else e.share)
    return min(e.share, max(k, r))


def dev_bytes(pool: Pool, e: Engine) -> int:
    if e.state == EngineState.PENDING:
        return 0
    if e.state == EngineState.ASLEEP:
        return kept(pool, e) if e.sleep_level == 0 else res_of(pool, e)
    return e.share  # loading, awake, sleeping, waking: the whole share, conservatively


def wakeable(pool: Pool, device: str) -> bool:
    """Any replica on the device can be awake with the others asleep as low as plans can bring
    them: residual, but a level-0 sleeper keeps its weights; never-evicted ones stay awake."""
    on = [e for e in pool.engines if e.device == device]
    floors = {
        e.replica: e.share
        if not e.evictable
        else kept(pool, e)
        if e.state == EngineState.ASLEEP and e.sleep_level == 0
        else res_of(pool, e)
        for e in on
    }
    return all(
        sum(f for r, f in floors.items() if r != e.replica) + e.share
        <= pool.device_by_id[device].memory
        for e in on
    )


def host_of(e: Engine) -> int:
    sleepy = e.state in (EngineState.SLEEPING, EngineState.ASLEEP, EngineState.WAKING)
    return e.weights if e.holds_backup or (sleepy and e.sleep_level == 1) else 0


def used(pool: Pool, device: str) -> int:
    return sum(dev_bytes(pool, e) for e in pool.engines if e.device == device)


def pinned(pool: Pool, node: str) -> int:
    devices = {d.id for d in pool.devices if d.node == node}
    return sum(host_of(e) for e in pool.engines if e.device in devices)


def sound(pool: Pool) -> bool:
    for d in pool.devices:
        on = [e for e in pool.engines if e.device == d.id]
        busy = [
            e
            for e in on
            if e.state in (EngineState.LOADING, EngineState.SLEEPING, EngineState.WAKING)
        ]
        if used(pool, d.id) > d.memory or len(busy) > 1 or len(on) > pool.slots_per_device:
            return False
    return all(n.host_budget is None or pinned(pool, n.name) <= n.host_budget for n in pool.nodes)


def step(pool: Pool, s: Sleep | Wake | Start) -> Pool:
    e = next(x for x in pool.engines if x.replica == s.replica)
    if isinstance(s, Sleep):
        assert e.state == EngineState.AWAKE, f"sleeping {e.replica} in state {e.state}"
        new = replace(
            e,
            state=EngineState.ASLEEP,
            sleep_level=s.level,
            holds_backup=e.holds_backup or (s.level == 1 and e.keeps_backup),
        )
    elif isinstance(s, Wake):
        assert e.state == EngineState.ASLEEP
        new = replace(
            e,
            state=EngineState.AWAKE,
            sleep_level=None,
            woken_at=NOW,
            holds_backup=e.holds_backup and e.keeps_backup,
        )
    else:
        assert e.state == EngineState.PENDING
        new = replace(e, state=EngineState.AWAKE, device=s.device, woken_at=NOW)
    return replace(pool, engines=tuple(new if x.replica == e.replica else x for x in pool.engines))


def may_evict(e: Engine) -> bool:
    return (
        e.state == EngineState.AWAKE
        and e.evictable
        and e.inflight == 0
        and e.held == 0
        and (e.woken_at is None or NOW - e.woken_at >= e.min_awake)
    )


def recency(e: Engine) -> float:
    return max((t for t in (e.last_activity, e.woken_at) if t is not None), default=-math.inf)


def gain(pool: Pool, e: Engine, level: int = 1) -> int:
    return e.share - (kept(pool, e) if level == 0 else res_of(pool, e))


# --- pools ------------------------------------------------------------------------------------

# Weighted towards what makes plans interesting: settled engines, most of them evictable.
SETTLED = [EngineState.AWAKE] * 4 + [EngineState.ASLEEP] * 4 + [EngineState.PENDING] * 2
STATES = [*SETTLED, EngineState.LOADING, EngineState.SLEEPING, EngineState.WAKING]
SHARES = [0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.9, 1.0, 1.2]  # of an 80 GiB device
# Crowded: several small awake engines, then larger sleeping, pending or busy ones.
SMALL = [0.1, 0.15, 0.2, 0.25, 0.3]
LARGE = [0.3, 0.45, 0.6, 0.9]
LATER = [EngineState.ASLEEP] * 3 + [EngineState.PENDING] * 2 + [*STATES[-3:]]


@st.composite
def pools(draw: st.DrawFn, max_engines: int = 12, mode: str = "any") -> Pool:
    """Any sound pool. `settled`: no transition anywhere, on one or two devices. `crowded`:
    devices full of small awake engines first, so most wakes and placements need evictions."""
    settled = mode != "any"
    n_small = draw(st.integers(2, 8)) if mode == "crowded" else 0
    n_nodes = draw(st.integers(1, 2))
    nodes = tuple(
        Node(f"n{i}", draw(st.one_of(st.none(), st.integers(0, 48).map(lambda g: g * G))))
        for i in range(n_nodes)
    )
    devices = tuple(
        Device(
            f"d{i}",
            f"n{draw(st.integers(0, n_nodes - 1))}",
            draw(st.sampled_from([40, 80, 80])) * G,
        )
        for i in range(draw(st.sampled_from([1, 1, 2] if settled else [1, 2, 3])))
    )
    pool = Pool(
        devices,
        nodes,
        (),
        default_residual=draw(st.sampled_from([G // 2, G, 2 * G])),
        slots_per_device=draw(st.integers(8, 12) if n_small else st.integers(1, 6)),
    )
    count = n_small + draw(st.integers(1, 4)) if n_small else draw(st.integers(0, max_engines))
    for i in range(count):
        state = draw(st.sampled_from(SETTLED if settled else STATES))
        shares = SHARES
        if mode == "crowded":
            state = EngineState.AWAKE if i < n_small else draw(st.sampled_from(LATER))
            shares = SMALL if i < n_small else LARGE
        device = None
        if state != EngineState.PENDING or draw(st.booleans()):
            device = draw(st.sampled_from([d.id for d in devices]))
        level = draw(st.sampled_from([0, 1, 1, 2]))
        sleep_level = None
        if state in (EngineState.SLEEPING, EngineState.ASLEEP, EngineState.WAKING):
            sleep_level = draw(st.sampled_from({0: [0, 2], 1: [1, 2], 2: [2]}[level]))
        share = int(draw(st.sampled_from(shares)) * 80 * G)
        kv = draw(st.one_of(st.none(), st.sampled_from([share * n // 8 for n in range(9)])))
        keeps = draw(st.booleans())
        rare = st.integers(0, 5).map(lambda n: max(0, n - 3))  # mostly 0
        e = Engine(
            replica=f"r{i}",
            model=f"m{draw(st.integers(0, 3))}",
            share=share,
            weights=draw(st.integers(0, 32)) * G // 2,
            device=device,
            state=state,
            level=level,
            sleep_level=sleep_level,
            priority=draw(st.integers(-2, 2)),
            min_awake=draw(st.sampled_from([0.0, 0.0, 60.0, 600.0])),
            evictable=draw(st.integers(0, 7)) > 0,
            woken_at=draw(st.one_of(st.none(), st.floats(NOW - 1200, NOW))),
            last_activity=draw(st.one_of(st.none(), st.floats(NOW - 1200, NOW))),
            inflight=draw(rare),
            held=draw(rare),
            residual=draw(st.one_of(st.none(), st.integers(0, 6).map(lambda g: g * G // 2))),
            holds_backup=keeps and state != EngineState.PENDING and draw(st.booleans()),
            keeps_backup=keeps,
            kv=kv,
        )
        # The scheduler is asked from sound (observed) states: an engine that would break
        # one is observed asleep instead, or not at all.
        for candidate in (e, _asleep(e)):
            bigger = replace(pool, engines=(*pool.engines, candidate))
            if sound(bigger):
                pool = bigger
                break
    return pool


def _asleep(e: Engine) -> Engine:
    if e.device is None:
        return e
    return replace(e, state=EngineState.ASLEEP, sleep_level=2, holds_backup=False)


# --- wake plans -------------------------------------------------------------------------------


def check_plan_steps(pool: Pool, plan: Plan) -> Pool:
    """Run the plan step by step; every intermediate (settled) state must be sound."""
    assert plan.steps, "an empty plan is only for an awake replica"
    for s in plan.steps:
        before_host = {n.name: pinned(pool, n.name) for n in pool.nodes}
        pool = step(pool, s)
        for d in pool.devices:
            assert used(pool, d.id) <= d.memory, f"{s}: device {d.id} over memory"
        for n in pool.nodes:
            if n.host_budget is not None:
                after = pinned(pool, n.name)
                assert after <= max(n.host_budget, before_host[n.name]), f"{s}: host over budget"
    return pool


@SETTINGS
@given(st.one_of(pools(), pools(mode="settled"), pools(mode="crowded")))
def test_wake_plans_keep_every_invariant(pool: Pool) -> None:
    for e in pool.engines:
        check_wake(pool, e.replica)


def check_wake(pool: Pool, target: str) -> None:
    e = pool.engine_by_replica[target]
    result = plan_wake(pool, target, NOW)

    if isinstance(result, Refusal):
        assert result.reason and result.replica == target
        if e.device is None or e.state in (
            EngineState.LOADING,
            EngineState.SLEEPING,
            EngineState.WAKING,
        ):
            assert result.kind == RefusalKind.NOT_NOW
            return
        memory = pool.device_by_id[e.device].memory
        if e.share > memory:
            assert result.kind == RefusalKind.NEVER
            return
        others = [o for o in pool.engines if o.device == e.device and o.replica != target]
        if any(
            o.state in (EngineState.LOADING, EngineState.SLEEPING, EngineState.WAKING)
            for o in others
        ):
            assert result.kind == RefusalKind.NOT_NOW
            return
        free_all = (
            memory
            - used(pool, e.device)
            + dev_bytes(pool, e)
            + sum(gain(pool, o) for o in others if may_evict(o))
        )
        assert free_all < e.share, "refused although evicting every allowed neighbour fits it"
        if result.kind == RefusalKind.NEVER:
            # Level-0 sleepers free their weights after their next wake: not "never" for them.
            floor = sum(
                res_of(pool, o)
                if o.evictable
                and (
                    o.state == EngineState.AWAKE
                    or (o.state == EngineState.ASLEEP and o.sleep_level == 0)
                )
                else dev_bytes(pool, o)
                for o in others
            )
            assert floor + e.share > memory, "'never' although sleeping neighbours would fit it"
        return

    assert result.replica == target
    if e.state == EngineState.AWAKE:
        assert result.steps == ()
        return
    assert e.device == result.device
    final = result.steps[-1]
    assert final.replica == target
    assert isinstance(final, Wake if e.state == EngineState.ASLEEP else Start)
    victims = [pool.engine_by_replica[s.replica] for s in result.steps[:-1]]
    assert all(isinstance(s, Sleep) for s in result.steps[:-1])
    assert len({v.replica for v in victims}) == len(victims)
    for v in victims:
        assert v.device == e.device and v.replica != target
        assert may_evict(v), f"evicted {v.replica}, which is protected"
    # Order: lowest priority first, then least recently active.
    keys = [(v.priority, recency(v), v.replica) for v in victims]
    assert keys == sorted(keys)
    # Only from the shortest prefix of the eviction order that makes room, and none spare.
    others = sorted(
        (o for o in pool.engines if o.device == e.device and o.replica != target and may_evict(o)),
        key=lambda o: (o.priority, recency(o), o.replica),
    )
    memory = pool.device_by_id[e.device].memory
    need = e.share - dev_bytes(pool, e)
    free = memory - used(pool, e.device)
    prefix: set[str] = set()
    for o in others:
        if free >= need:
            break
        prefix.add(o.replica)
        free += gain(pool, o)
    assert {v.replica for v in victims} <= prefix
    levels = {s.replica: s.level for s in result.steps[:-1] if isinstance(s, Sleep)}
    total = memory - used(pool, e.device) + sum(gain(pool, v, levels[v.replica]) for v in victims)
    assert total >= need
    for v in victims:
        assert total - gain(pool, v, levels[v.replica]) < need, f"{v.replica} evicted without need"
    # Levels: configured level 2 stays 2; level 2 for a level-1 model only when 1 did not fit;
    # a level-0 model sleeps at 0 (no host cost) or, when its weights must go, at 2.
    node = pool.node_of(e.device)
    host = pinned(pool, node.name)
    for s, v in zip(result.steps[:-1], victims, strict=True):
        assert isinstance(s, Sleep)
        extra = 0 if v.holds_backup else v.weights
        if v.level == 0:
            assert s.level in (0, 2)
        elif v.level == 2 or (node.host_budget is not None and host + extra > node.host_budget):
            assert s.level == 2
        else:
            assert s.level == 1
        host += extra if s.level == 1 else 0
        assert "priority" in s.reason and target in s.reason
    after = check_plan_steps(pool, result)
    if 0 in levels.values():  # weights kept only where every replica stays wakeable
        assert wakeable(after, e.device)


@SETTINGS
@given(pools(), st.integers(1, 200))
def test_a_model_that_can_never_fit_evicts_nothing(pool: Pool, extra_gib: int) -> None:
    largest = max(d.memory for d in pool.devices)
    giant = Engine("giant", "giant", share=largest + extra_gib * G // 2, weights=G)
    with_giant = replace(pool, engines=(giant, *pool.engines))
    result = place(with_giant, NOW)
    refusal = next(r for r in result.refusals if r.replica == "giant")
    assert refusal.kind == RefusalKind.NEVER and "giant" in refusal.reason
    assert "giant" not in result.assignments
    assert _without(result, "giant") == place(pool, NOW)
    # Placed on a device anyway (e.g. the pool shrank): waking it evicts no one.
    d = pool.devices[0].id
    placed_giant = replace(giant, device=d, state=EngineState.ASLEEP, sleep_level=2, residual=0)
    refused = plan_wake(replace(pool, engines=(placed_giant, *pool.engines)), "giant", NOW)
    assert isinstance(refused, Refusal) and refused.kind == RefusalKind.NEVER


def _without(p: Placement, replica: str) -> Placement:
    return Placement(p.plans, tuple(r for r in p.refusals if r.replica != replica))


# --- placement ------------------------------------------------------------------------------


@SETTINGS
@given(
    st.one_of(pools(), pools(mode="settled"), pools(mode="crowded")),
    st.randoms(use_true_random=False),
)
def test_placement_is_sound_stable_and_deterministic(pool: Pool, rnd: random.Random) -> None:
    result = place(pool, NOW)
    unplaced = {e.replica for e in pool.engines if e.device is None}
    assert set(result.assignments) | {r.replica for r in result.refusals} == unplaced
    assert not set(result.assignments) & {r.replica for r in result.refusals}
    assert all(r.reason for r in result.refusals)
    # One start-up per device per pass, never on a device already busy.
    devices = [p.device for p in result.plans]
    assert len(devices) == len(set(devices))
    for p in result.plans:
        assert not any(
            e.device == p.device
            and e.state in (EngineState.LOADING, EngineState.SLEEPING, EngineState.WAKING)
            for e in pool.engines
        )
        assert isinstance(p.steps[-1], Start) and p.steps[-1].device == p.device
    # Every plan, run in turn, keeps the invariants; placed replicas stay where they were.
    after = pool
    for p in result.plans:
        after = check_plan_steps(after, p)
    for e in pool.engines:
        if e.device is not None:
            assert after.engine_by_replica[e.replica].device == e.device
    for d in pool.devices:
        on = [e for e in after.engines if e.device == d.id]
        assert len(on) <= pool.slots_per_device or d.id not in devices
        if d.id in devices:  # each replica there can be awake while the others sleep
            assert wakeable(after, d.id)
    # The order engines are listed in does not matter.
    shuffled = list(pool.engines)
    rnd.shuffle(shuffled)
    assert place(replace(pool, engines=tuple(shuffled)), NOW) == result


# --- demand ---------------------------------------------------------------------------------


@given(st.integers(0, 500), st.integers(0, 500), st.integers(0, 16), st.integers(1, 64))
def test_awake_wanted_grows_with_demand(held: int, inflight: int, replicas: int, per: int) -> None:
    n = awake_wanted(held, inflight, replicas, per)
    assert 0 <= n <= replicas
    if held + inflight and replicas:
        assert n >= 1
        assert n == replicas or n * per >= held + inflight
        assert (n - 1) * per < held + inflight
    assert awake_wanted(held + 1, inflight, replicas, per) >= n
    if held + inflight == 0:
        assert n == 0


@SETTINGS
@given(pools(), st.integers(1, 4))
def test_demand_wakes_at_most_what_is_wanted_one_plan_per_device(pool: Pool, per: int) -> None:
    for model in sorted({e.model for e in pool.engines}):
        replicas = [e for e in pool.engines if e.model == model]
        out = plan_demand(pool, model, per, NOW)
        wanted = awake_wanted(
            sum(e.held for e in replicas), sum(e.inflight for e in replicas), len(replicas), per
        )
        assert len(out) <= max(0, wanted)
        plans = [p for p in out if isinstance(p, Plan)]
        assert len({p.device for p in plans}) == len(plans)
        for p in plans:
            assert pool.engine_by_replica[p.replica].model == model
            check_plan_steps(pool, p)


@SETTINGS
@given(st.one_of(pools(), pools(mode="settled"), pools(mode="crowded")))
def test_idle_sleeps_keep_weights_only_where_every_replica_stays_wakeable(pool: Pool) -> None:
    for e in pool.engines:
        if e.state != EngineState.AWAKE or e.device is None:
            continue
        level = level_for_sleep(pool, e.replica)
        if e.level == 0:
            assert level in (0, 2)
        else:
            assert level in (e.level, 2)
        if level == 0:  # kept weights never make a replica there unwakeable
            asleep = replace(e, state=EngineState.ASLEEP, sleep_level=0)
            after = replace(pool, engines=tuple(asleep if o is e else o for o in pool.engines))
            assert wakeable(after, e.device)
