"""The acceptance scenarios of issue 11 as scheduler examples, plus the rules one by one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vllm_sleep.scheduler import (
    Device,
    Engine,
    EngineState,
    Node,
    Plan,
    Pool,
    Refusal,
    RefusalKind,
    Sleep,
    Start,
    Wake,
    apply,
    awake_wanted,
    device_states,
    level_for_sleep,
    place,
    plan_demand,
    plan_wake,
    violations,
)

G = 1 << 30
DEVICE = 80 * G
NOW = 100_000.0


def awake(name: str, frac: float, **kw: object) -> Engine:
    fields: dict[str, object] = {"device": "gpu0", "woken_at": NOW - 3600, "weights": 16 * G}
    fields.update(kw)
    return Engine(name, name, int(frac * DEVICE), state=EngineState.AWAKE, **fields)


def asleep(name: str, frac: float, level: int = 1, **kw: object) -> Engine:
    fields: dict[str, object] = {"device": "gpu0", "weights": 16 * G, "residual": G}
    fields.update(kw)
    return Engine(
        name,
        name,
        int(frac * DEVICE),
        state=EngineState.ASLEEP,
        sleep_level=level,
        **fields,
    )


def pool(*engines: Engine, budget: int | None = None, devices: int = 1, slots: int = 4) -> Pool:
    return Pool(
        tuple(Device(f"gpu{i}", "node-a", DEVICE) for i in range(devices)),
        (Node("node-a", budget),),
        engines,
        slots_per_device=slots,
    )


def steps(result: Plan | Refusal) -> list[object]:
    assert isinstance(result, Plan), result
    return list(result.steps)


def run(p: Pool, plan: Plan | Refusal, now: float = NOW) -> Pool:
    assert isinstance(plan, Plan), plan
    for s in plan.steps:
        p = apply(p, s, now)
        assert violations(p) == [], s
    return p


# --- 4 models on one 80 GiB GPU that holds one awake at a time --------------------------------


def test_four_models_share_one_gpu_one_awake_at_a_time() -> None:
    models = [Engine(f"m{i}", f"m{i}", int(0.9 * DEVICE), weights=16 * G) for i in range(4)]
    p = pool(*models)
    # Start-up is serialised: one placement per pass; each new engine sleeps once (pre-warm),
    # and its measured residual replaces the default.
    for i in range(4):
        result = place(p, NOW)
        assert len(result.plans) == 1 and result.plans[0].replica == f"m{i}"
        assert {r.kind for r in result.refusals} <= {RefusalKind.NOT_NOW}
        p = run(p, result.plans[0])
        e = p.engine_by_replica[f"m{i}"]
        p = p.replace(replace(e, state=EngineState.ASLEEP, sleep_level=1, residual=13 * G // 10))
        assert violations(p) == []
    assert place(p, NOW).plans == ()
    # Random-ish wakes: each evicts exactly the one awake engine, at most one is ever awake.
    previous = None
    for t, name in enumerate(["m2", "m0", "m3", "m1", "m2", "m3"]):
        plan = plan_wake(p, name, NOW + t)
        if previous is None:
            assert steps(plan) == [Wake(name)]
        else:
            assert [type(s) for s in steps(plan)] == [Sleep, Wake]
            assert steps(plan)[0] == Sleep(previous, 1, f"priority 0, idle 1s, to wake {name}")
        p = run(p, plan, NOW + t)
        assert [e.replica for e in p.engines if e.state == EngineState.AWAKE] == [name]
        previous = name


# --- 2 small models awake together, a third evicts the right one ------------------------------


def test_two_small_models_fit_awake_together() -> None:
    p = pool(awake("a", 0.45), asleep("b", 0.45))
    assert steps(plan_wake(p, "b", NOW)) == [Wake("b")]


def test_third_model_evicts_the_lowest_priority() -> None:
    p = pool(awake("a", 0.45, priority=5), awake("b", 0.45, priority=0), asleep("c", 0.45))
    plan = steps(plan_wake(p, "c", NOW))
    assert [type(s) for s in plan] == [Sleep, Wake]
    assert plan[0].replica == "b"


def test_equal_priority_evicts_the_least_recently_active() -> None:
    p = pool(
        awake("a", 0.45, last_activity=NOW - 60),
        awake("b", 0.45, last_activity=NOW - 240),
        asleep("c", 0.45),
    )
    plan = steps(plan_wake(p, "c", NOW))
    assert plan[0] == Sleep("b", 1, "priority 0, idle 4m, to wake c")


def test_a_recent_wake_counts_as_activity() -> None:
    p = pool(
        awake("a", 0.45, last_activity=NOW - 600, woken_at=NOW - 5),
        awake("b", 0.45, last_activity=NOW - 300),
        asleep("c", 0.45),
    )
    assert steps(plan_wake(p, "c", NOW))[0].replica == "b"


def test_min_awake_prevents_thrash() -> None:
    young = awake("b", 0.45, priority=0, woken_at=NOW - 30, min_awake=300)
    p = pool(awake("a", 0.45, priority=5), young, asleep("c", 0.45))
    assert steps(plan_wake(p, "c", NOW))[0].replica == "a"
    both = pool(
        replace(awake("a", 0.45), woken_at=NOW - 10, min_awake=300), young, asleep("c", 0.45)
    )
    refusal = plan_wake(both, "c", NOW)
    assert isinstance(refusal, Refusal) and refusal.kind == RefusalKind.NOT_NOW
    assert "minAwake 5m" in refusal.reason and "awake for 30s" in refusal.reason


@pytest.mark.parametrize("busy", [{"inflight": 1}, {"held": 2}])
def test_a_model_with_requests_in_flight_or_held_is_never_evicted(busy: dict[str, int]) -> None:
    p = pool(awake("a", 0.45, priority=5), awake("b", 0.45, **busy), asleep("c", 0.45))
    assert steps(plan_wake(p, "c", NOW))[0].replica == "a"
    both = pool(awake("a", 0.45, **busy), awake("b", 0.45, **busy), asleep("c", 0.45))
    refusal = plan_wake(both, "c", NOW)
    assert isinstance(refusal, Refusal) and refusal.kind == RefusalKind.NOT_NOW
    assert ("in flight" if "inflight" in busy else "held") in refusal.reason


def test_always_awake_is_never_evicted() -> None:
    p = pool(awake("a", 0.45, priority=5), awake("b", 0.45, evictable=False), asleep("c", 0.45))
    assert steps(plan_wake(p, "c", NOW))[0].replica == "a"


def test_only_the_victims_needed_sleep() -> None:
    # a is first in line (lowest priority) but sleeping it alone frees too little, and once b
    # sleeps there is room without it: a stays awake.
    p = pool(
        awake("a", 0.1, priority=0), awake("b", 0.8, priority=1), asleep("c", 0.75, residual=0)
    )
    assert steps(plan_wake(p, "c", NOW)) == [
        Sleep("b", 1, "priority 1, idle 1h00m, to wake c"),
        Wake("c"),
    ]


def test_several_victims_in_eviction_order() -> None:
    p = pool(
        awake("a", 0.3, priority=2),
        awake("b", 0.3, priority=1),
        asleep("c", 0.9, residual=0),
        awake("d", 0.3, priority=1, last_activity=NOW - 10),
    )
    plan = steps(plan_wake(p, "c", NOW))
    assert [s.replica for s in plan] == ["b", "d", "a", "c"]
    run(p, plan_wake(p, "c", NOW))


# --- host budget: level 2 once the node's level-1 budget is spent ------------------------------


def test_host_budget_spent_means_level_2() -> None:
    sleeper = asleep("x", 0.1, holds_backup=True)  # already pins its 16 GiB
    p = pool(sleeper, awake("a", 0.9), asleep("c", 0.9, 2, residual=0), budget=20 * G)
    assert steps(plan_wake(p, "c", NOW))[0] == Sleep("a", 2, "priority 0, idle 1h00m, to wake c")
    roomy = pool(sleeper, awake("a", 0.9), asleep("c", 0.9, 2, residual=0), budget=40 * G)
    assert steps(plan_wake(roomy, "c", NOW))[0].level == 1
    assert level_for_sleep(p, "a") == 2 and level_for_sleep(roomy, "a") == 1


def test_a_pinned_backup_kept_awake_is_charged_and_reused() -> None:
    # vLLM 0.34 keeps the backup of its first level-1 sleep while awake: it already counts
    # against the budget, and sleeping at level 1 again costs nothing more.
    kept = awake("a", 0.45, holds_backup=True, keeps_backup=True)
    p = pool(kept, awake("b", 0.45, priority=1), asleep("c", 0.45, 2), budget=16 * G)
    assert violations(p) == []
    assert steps(plan_wake(p, "c", NOW))[0] == Sleep("a", 1, "priority 0, idle 1h00m, to wake c")
    assert level_for_sleep(p, "b") == 2  # b would pin 16 GiB more: over the budget
    after = run(p, plan_wake(p, "c", NOW))
    assert after.engine_by_replica["a"].holds_backup


def test_a_level_2_model_always_sleeps_at_level_2() -> None:
    p = pool(awake("a", 0.9, level=2), asleep("c", 0.9, residual=0))
    assert steps(plan_wake(p, "c", NOW))[0].level == 2


# --- level 0 (KV-only): the weights stay on the device ----------------------------------------


def kv_only(name: str, frac: float, state: str, **kw: object) -> Engine:
    """A level-0 model whose weights (20 GiB) fit beside a neighbour's, its KV cache not."""
    share = int(frac * DEVICE)
    fields: dict[str, object] = {"weights": 20 * G, "kv": share - 20 * G, "level": 0}
    fields |= {"device": "gpu0", "residual": G}
    if state == "awake":
        fields |= {"state": EngineState.AWAKE, "woken_at": NOW - 3600}
    else:
        fields |= {"state": EngineState.ASLEEP, "sleep_level": 0}
    fields.update(kw)
    return Engine(name, name, share, **fields)  # type: ignore[arg-type]


def test_kv_only_models_swap_by_releasing_their_kv_cache_only() -> None:
    p = pool(kv_only("a", 0.6, "awake"), kv_only("b", 0.6, "asleep"), budget=0)  # fmt: skip
    assert violations(p) == []  # b holds its weights asleep: 48 + 20 of 80 GiB
    assert steps(plan_wake(p, "b", NOW)) == [Sleep("a", 0, "priority 0, idle 1h00m, to wake b"), Wake("b")]  # fmt: skip
    after = run(p, plan_wake(p, "b", NOW))  # no host memory: the budget of 0 holds
    a = after.engine_by_replica["a"]
    assert (a.state, a.sleep_level, a.holds_backup) == (EngineState.ASLEEP, 0, False)
    assert level_for_sleep(pool(kv_only("a", 0.6, "awake")), "a") == 0


def test_a_kv_only_model_frees_its_weights_when_the_room_needs_them() -> None:
    # The neighbour's share does not fit beside a's weights: a sleeps at level 2 (its pod has
    # no room for pinned weights), although its model says level 0.
    p = pool(kv_only("a", 0.6, "awake"), asleep("c", 0.9, 2, residual=0))
    assert steps(plan_wake(p, "c", NOW))[0] == Sleep("a", 2, "priority 0, idle 1h00m, to wake c")
    # Idle sleeps too: with c placed there, a kept at level 0 (48 GiB) would block c's wake.
    assert level_for_sleep(p, "a") == 2


def test_without_a_kv_size_a_kv_only_sleeper_is_counted_with_its_weights_and_residual() -> None:
    sized = kv_only("a", 0.6, "asleep")
    unsized = replace(sized, kv=None)
    nothing_known = replace(unsized, weights=0)
    p = pool(sized)
    assert device_states(p)[0].committed_bytes == 20 * G  # share - KV cache
    assert device_states(pool(unsized))[0].committed_bytes == 21 * G  # weights + 1 GiB residual
    assert device_states(pool(nothing_known))[0].committed_bytes == int(0.6 * DEVICE)


def test_a_kv_only_sleeper_in_the_way_is_not_now_not_never() -> None:
    # a keeps 47 GiB of weights asleep; d (60 GiB) fits only once a frees them after a wake.
    a = kv_only("a", 0.6, "asleep", weights=47 * G, kv=1 * G)
    p = pool(a, asleep("d", 0.75, 2, residual=0))
    refusal = plan_wake(p, "d", NOW)
    assert isinstance(refusal, Refusal) and refusal.kind == RefusalKind.NOT_NOW
    assert "KV-only" in refusal.reason and "a" in refusal.reason
    # Placement prefers a device without it.
    placed = place(pool(a, Engine("e", "e", int(0.75 * DEVICE)), devices=2), NOW)
    assert placed.assignments == {"e": "gpu1"}


# --- never fits, busy devices, placement ------------------------------------------------------


def test_a_model_that_can_never_fit_is_refused_and_evicts_nothing() -> None:
    huge = Engine("huge", "huge", int(1.1 * DEVICE))
    result = place(pool(awake("a", 0.45), huge), NOW)
    assert result.plans == ()
    (refusal,) = result.refusals
    assert refusal.kind == RefusalKind.NEVER
    assert refusal.reason == "huge needs 88.0 GiB: the largest device (80.0 GiB)"
    # Placed, but neighbours that may never sleep leave no room: refused, nothing evicted.
    p = pool(awake("a", 0.5, evictable=False), asleep("c", 0.6))
    refusal = plan_wake(p, "c", NOW)
    assert isinstance(refusal, Refusal) and refusal.kind == RefusalKind.NEVER
    assert "nothing evicted" in refusal.reason


def test_one_transition_per_device() -> None:
    going = replace(awake("a", 0.45), state=EngineState.SLEEPING, sleep_level=1)
    p = pool(going, awake("b", 0.45), asleep("c", 0.45))
    refusal = plan_wake(p, "c", NOW)
    assert isinstance(refusal, Refusal) and refusal.kind == RefusalKind.NOT_NOW
    assert refusal.reason == "device gpu0 is busy: a is sleeping"
    assert place(pool(going, Engine("n", "n", G)), NOW).refusals[0].reason == (
        "no device can take n now: 1 busy (a start-up or transition in progress)"
    )


def test_a_plan_interrupted_after_a_step_is_re_derived_without_repeating_it() -> None:
    p = pool(awake("a", 0.45, priority=0), awake("b", 0.45, priority=1), asleep("c", 0.45))
    plan = plan_wake(p, "c", NOW)
    assert [s.replica for s in steps(plan)] == ["a", "c"]
    # The operator dies while a sleeps: the device is busy, nothing new starts.
    sleeping = p.replace(
        replace(p.engine_by_replica["a"], state=EngineState.SLEEPING, sleep_level=1)
    )
    assert isinstance(plan_wake(sleeping, "c", NOW), Refusal)
    # Once a is observed asleep the new plan only wakes c: a is not slept twice, b untouched.
    settled = apply(p, steps(plan)[0], NOW)
    assert steps(plan_wake(settled, "c", NOW)) == [Wake("c")]


def test_placement_prefers_a_device_where_all_fit_awake() -> None:
    p = pool(
        awake("a", 0.45),
        Engine("big", "big", int(0.9 * DEVICE)),
        Engine("small", "small", int(0.45 * DEVICE)),
        devices=2,
    )
    result = place(p, NOW)
    assert dict(result.assignments) == {"big": "gpu1", "small": "gpu0"}
    assert all(len(plan.steps) == 1 for plan in result.plans)


def test_placement_is_stable_and_starts_after_evicting_when_the_device_is_full() -> None:
    p = pool(awake("a", 0.9), Engine("b", "b", int(0.9 * DEVICE)))
    result = place(p, NOW)
    (plan,) = result.plans
    assert plan.steps == (Sleep("a", 1, "priority 0, idle 1h00m, to start b"), Start("b", "gpu0"))
    placed = run(p, plan)
    assert placed.engine_by_replica["a"].device == "gpu0"
    assert place(placed, NOW).plans == ()


def test_placement_refuses_a_full_device_with_the_reason() -> None:
    p = pool(asleep("a", 0.45), asleep("b", 0.45), Engine("c", "c", G), slots=2)
    (refusal,) = place(p, NOW).refusals
    assert refusal.kind == RefusalKind.NOT_NOW and "1 full (2 replicas)" in refusal.reason


def test_placement_never_leaves_a_neighbour_unable_to_wake() -> None:
    # Two engines that may never sleep take 70 GiB: a 0.3 model could start while one of them
    # sleeps, but then one of them could never wake again.
    p = pool(
        awake("a", 0.5, evictable=False),
        asleep("b", 0.375, evictable=False),
        Engine("n", "n", int(0.3 * DEVICE)),
    )
    (refusal,) = place(p, NOW).refusals
    assert "without room" in refusal.reason


# --- demand-proportional wake -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "inflight", "wanted"),
    [(0, 0, 0), (1, 0, 1), (8, 0, 1), (9, 0, 2), (10, 14, 3), (500, 0, 4)],
)
def test_awake_wanted_is_proportional_to_demand(held: int, inflight: int, wanted: int) -> None:
    assert awake_wanted(held, inflight, replicas=4, per_replica=8) == wanted


def test_demand_wakes_the_cheapest_replica_first() -> None:
    r0 = replace(asleep("m-0", 0.45), model="m", held=1)
    r1 = replace(asleep("m-1", 0.45, device="gpu1"), model="m")
    p = pool(awake("x", 0.6), r0, r1, devices=2)
    (plan,) = plan_demand(p, "m", per_replica=8, now=NOW)
    assert isinstance(plan, Plan) and plan.replica == "m-1" and plan.steps == (Wake("m-1"),)
    more = p.replace(replace(r0, held=12))
    plans = plan_demand(more, "m", per_replica=8, now=NOW)
    assert [pl.replica for pl in plans] == ["m-1", "m-0"]


def test_device_states_for_the_pool_status() -> None:
    p = pool(awake("a", 0.45), asleep("b", 0.45, residual=2 * G), devices=2)
    first, second = device_states(p)
    assert (first.node, first.device, first.models, first.awake) == (
        "node-a",
        "gpu0",
        ["a", "b"],
        ["a"],
    )
    assert first.committed_bytes == int(0.45 * DEVICE) + 2 * G
    assert (second.models, second.committed_bytes) == ([], 0)


def test_placement_packs_small_models_tightly_then_swaps_where_fewest_live() -> None:
    p = pool(awake("a", 0.45), Engine("s", "s", int(0.3 * DEVICE)), devices=2)
    assert dict(place(p, NOW).assignments) == {"s": "gpu0"}  # 20 GiB left there, not 56
    # No device holds it awake beside its neighbours: it swaps where the fewest replicas are.
    crowded = pool(
        asleep("a", 0.6),
        asleep("b", 0.3),
        asleep("c", 0.7, device="gpu1"),
        Engine("n", "n", int(0.5 * DEVICE)),
        devices=2,
    )
    assert dict(place(crowded, NOW).assignments) == {"n": "gpu1"}
