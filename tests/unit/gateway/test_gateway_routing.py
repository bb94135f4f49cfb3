"""The pure routing core: replica choice, hold-queue bounds, demand throttle, relists."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_sleep.gateway.routing import (
    ModelKey,
    ModelSpec,
    ModelTable,
    PodState,
    Replica,
    WakePolicy,
)

NS = "team"
KEY = ModelKey(NS, "m")


def pod(
    i: int, awake: bool = True, model: str = "m", url: bool = True, hold: bool = False
) -> PodState:
    address = f"http://127.0.0.{i + 1}:8000" if url else ""
    return PodState(NS, f"{model}-{i}", model, address, awake, hold and not awake)


def table_with(*pods: PodState) -> ModelTable:
    t = ModelTable()
    t.upsert_model(ModelSpec(KEY, "served-m"))
    for p in pods:
        t.upsert_pod(p)
    return t


def test_lookup_by_served_name_and_unknown() -> None:
    t = table_with()
    assert t.lookup("served-m") is not None
    assert t.lookup("m") is None
    assert t.lookup("nope") is None


def test_only_awake_replicas_with_an_ip_are_chosen() -> None:
    t = table_with(pod(0, awake=False), pod(1, url=False), pod(2))
    assert {t.choose(KEY).pod for _ in range(5)} == {(NS, "m-2")}  # type: ignore[union-attr]


def test_no_awake_replica_means_none() -> None:
    t = table_with(pod(0, awake=False))
    assert t.choose(KEY) is None
    assert t.choose(ModelKey(NS, "other")) is None


def test_ties_rotate_and_exclude_is_respected() -> None:
    t = table_with(pod(0), pod(1))
    picks = {t.choose(KEY).pod for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {(NS, "m-0"), (NS, "m-1")}
    assert t.choose(KEY, frozenset({(NS, "m-0")})).pod == (NS, "m-1")  # type: ignore[union-attr]
    assert t.choose(KEY, frozenset({(NS, "m-0"), (NS, "m-1")})) is None


@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), max_size=40), st.integers(1, 5))
def test_choice_is_least_in_flight(ops: list[tuple[int, bool]], n: int) -> None:
    t = table_with(*(pod(i) for i in range(n)))
    held: list[Replica] = []
    for _, release in ops:
        if release and held:
            t.release(held.pop(0))
            continue
        low = min(t.inflight((NS, f"m-{i}")) for i in range(n))
        r = t.choose(KEY)
        assert r is not None and t.inflight(r.pod) == low
        t.acquire(r)
        held.append(r)
    assert sum(t.inflight((NS, f"m-{i}")) for i in range(n)) == len(held)


def test_release_of_a_vanished_pod_is_harmless() -> None:
    t = table_with(pod(0))
    r = t.choose(KEY)
    assert r is not None
    t.acquire(r)
    t.remove_pod(NS, "m-0")
    t.release(r)
    t.release(r)
    assert t.inflight(r.pod) == 0


@given(st.lists(st.booleans(), max_size=200), st.integers(0, 10))
def test_queue_never_exceeds_its_bound(ops: list[bool], limit: int) -> None:
    t = table_with()
    expected = 0
    for enqueue in ops:
        if enqueue:
            ok = t.try_enqueue(KEY, limit)
            assert ok == (expected < limit)
            expected += ok
        else:
            t.dequeue(KEY)
            expected = max(0, expected - 1)
        assert t.queued(KEY) == expected <= limit


@settings(max_examples=200)
@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=50), st.floats(0.5, 20))
def test_demand_is_throttled_per_model(times: list[float], interval: float) -> None:
    t = table_with()
    t.try_enqueue(KEY, 10)
    sent: list[float] = []
    for now in sorted(times):
        if t.demand_due(KEY, now, interval):
            sent.append(now)
    assert sent and sent[0] == min(times)
    assert all(b - a >= interval for a, b in itertools.pairwise(sent))


def test_no_demand_without_held_requests_and_reset_on_wake() -> None:
    t = table_with(pod(0, awake=False))
    assert not t.demand_due(KEY, 0.0, 10.0)
    t.try_enqueue(KEY, 10)
    assert t.demand_due(KEY, 0.0, 10.0)
    assert not t.demand_due(KEY, 1.0, 10.0)
    t.upsert_pod(pod(0, awake=True))  # the wake answered the demand
    assert t.demand_due(KEY, 2.0, 10.0)


def test_failed_demand_is_retried_sooner() -> None:
    t = table_with()
    t.try_enqueue(KEY, 10)
    assert t.demand_due(KEY, 0.0, 10.0)
    t.demand_failed(KEY, 0.0, 10.0, retry=1.0)
    assert not t.demand_due(KEY, 0.5, 10.0)
    assert t.demand_due(KEY, 1.0, 10.0)


@given(st.permutations(["a", "b", "c"]))
def test_served_name_conflicts_resolve_the_same_way_in_any_order(order: list[str]) -> None:
    t = ModelTable()
    for ns in order:
        t.upsert_model(ModelSpec(ModelKey(ns, "x"), "shared"))
    assert t.lookup("shared").key == ModelKey("a", "x")  # type: ignore[union-attr]
    t.remove_model(ModelKey("a", "x"))
    assert t.lookup("shared").key == ModelKey("b", "x")  # type: ignore[union-attr]


def test_relist_replaces_state_and_keeps_queues() -> None:
    t = table_with(pod(0), pod(1))
    t.try_enqueue(KEY, 5)
    t.replace_all([ModelSpec(KEY, "served-m", wake=WakePolicy(max_queued=3))], [pod(1)])
    assert [r.pod for r in t.awake_replicas(KEY)] == [(NS, "m-1")]
    assert t.queued(KEY) == 1
    t.replace_all([], [])
    assert t.lookup("served-m") is None and t.queued(KEY) == 1
    t.dequeue(KEY)
    assert t.held_models() == []


@given(
    st.lists(
        st.tuples(st.sampled_from(["m", "n"]), st.integers(0, 3), st.booleans(), st.booleans()),
        max_size=30,
    )
)
def test_awake_replicas_match_the_latest_pod_state(
    events: list[tuple[str, int, bool, bool]],
) -> None:
    t = ModelTable()
    latest: dict[tuple[str, str], PodState] = {}
    for model, i, awake, delete in events:
        p = pod(i, awake, model)
        if delete:
            t.remove_pod(NS, p.name)
            latest.pop(p.key, None)
        else:
            t.upsert_pod(p)
            latest[p.key] = p
    for model in ("m", "n"):
        want = {p.key for p in latest.values() if p.model == model and p.awake}
        assert {r.pod for r in t.awake_replicas(ModelKey(NS, model))} == want


def test_holders_are_pods_whose_agent_can_hold_with_an_ip() -> None:
    t = table_with(pod(0, awake=False), pod(1, awake=False, hold=True, url=False), pod(2))
    assert t.choose_holder(KEY) is None
    t.upsert_pod(pod(3, awake=False, hold=True))
    assert t.choose_holder(KEY) == Replica((NS, "m-3"), "http://127.0.0.4:8000")
    assert t.choose_holder(KEY, frozenset({(NS, "m-3")})) is None
    assert t.choose_holder(ModelKey(NS, "other")) is None
    assert t.is_awake(KEY, (NS, "m-2")) and not t.is_awake(KEY, (NS, "m-3"))
    t.upsert_pod(pod(3, awake=True, hold=True))  # woke: an awake replica, not a holder
    assert t.holding_replicas(KEY) == [] and t.is_awake(KEY, (NS, "m-3"))


@given(
    st.lists(st.tuples(st.integers(0, 4), st.booleans(), st.booleans()), max_size=20),
    st.lists(st.integers(0, 4), max_size=10),
    st.frozensets(st.integers(0, 4)),
)
def test_holder_choice_is_least_in_flight_then_name(
    pods: list[tuple[int, bool, bool]], loads: list[int], excluded: frozenset[int]
) -> None:
    t = table_with()
    for i, awake, hold in pods:
        t.upsert_pod(pod(i, awake, hold=hold))
    for i in loads:
        t.acquire(Replica((NS, f"m-{i}"), ""))
    exclude = frozenset((NS, f"m-{i}") for i in excluded)
    eligible = sorted(
        (t.inflight(r.pod), r.pod) for r in t.holding_replicas(KEY) if r.pod not in exclude
    )
    first = t.choose_holder(KEY, exclude)
    if not eligible:
        assert first is None
        return
    assert first is not None and first.pod == eligible[0][1]
    assert t.choose_holder(KEY, exclude) == first  # no rotation: the same on every call
    # A holder is never awake, and never a pod without an address.
    latest = {p.key: p for p in t_pods(pods)}
    assert not latest[first.pod].awake and latest[first.pod].can_hold and first.url


def t_pods(pods: list[tuple[int, bool, bool]]) -> list[PodState]:
    return [pod(i, awake, hold=hold) for i, awake, hold in pods]
