"""The pool gate: each member runs only the first step of the pool's plans that is its own, one
step per device at a time; evictions are the victim's actions; nothing is stored."""

from __future__ import annotations

from vllm_sleep.api.gpu_pool import Sharing
from vllm_sleep.reconcile.lifecycle import ReplicaMemory, Route, Sleep, Wake
from vllm_sleep.reconcile.lifecycle import Sleep as SleepAction
from vllm_sleep.reconcile.observe import ObservedPod
from vllm_sleep.reconcile.pool_gate import WAKE_PER_REPLICA, PoolRequest, PoolView, gate, pool_plans
from vllm_sleep.scheduler import Device, Engine, EngineState, Node, Pool
from vllm_sleep.scheduler import Wake as WakeStep

GIB = 1 << 30
NOW = 1_800_000_000.0


def pod(name: str, *, routed: bool = False, device: str | None = "n/gpu-0") -> ObservedPod:
    return ObservedPod(
        name=name,
        uid=f"uid-{name}",
        replica=int(name.rsplit("-", 1)[1]),
        spec_hash="h",
        phase="Running",
        deleting=False,
        ip="10.0.0.1",
        node="n",
        routed=routed,
        memory=ReplicaMemory(),
        device=device,
    )


def engine(replica: str, state: EngineState, **kw: object) -> Engine:
    base: dict[str, object] = {
        "model": replica.rsplit("-", 1)[0],
        "share": 64 * GIB,
        "device": "n/gpu-0",
        "state": state,
        "sleep_level": 1
        if state in (EngineState.ASLEEP, EngineState.SLEEPING, EngineState.WAKING)
        else None,
        "woken_at": NOW - 600,
        "last_activity": NOW - 300,
    }
    base.update(kw)
    return Engine(replica=replica, **base)  # type: ignore[arg-type]


def one_gpu(*engines: Engine, devices: int = 1) -> Pool:
    return Pool(
        devices=tuple(Device(f"n/gpu-{i}", "n", 80 * GIB) for i in range(devices)),
        nodes=(Node("n"),),
        engines=engines,
    )


def request(*pods: ObservedPod, actions: tuple = ()) -> PoolRequest:  # type: ignore[type-arg]
    return PoolRequest(
        live=pods,
        observations={},
        indexes={p.replica: p.name for p in pods},
        actions=actions,
    )


def test_a_wake_that_needs_room_is_held_and_the_victims_model_evicts_it() -> None:
    pool = one_gpu(
        engine("ns/a-0", EngineState.ASLEEP, held=1),
        engine("ns/b-0", EngineState.AWAKE, priority=10),
    )
    view = PoolView(pool, Sharing.TIME_SLICING, wants=frozenset({"ns/a-0"}))
    mine = gate(view, "ns", request(pod("a-0"), actions=(Wake("a-0", "held"),)), NOW)
    assert mine.actions == ()  # the wake waits for the eviction
    assert mine.turns == {}
    victim = gate(view, "ns", request(pod("b-0", routed=True)), NOW)
    assert victim.actions[0] == Route("b-0", False)  # out of routing before the drain
    assert isinstance(victim.actions[1], SleepAction) and victim.actions[1].pod == "b-0"
    assert victim.turns == {"n/gpu-0": "ns/b-0"}
    assert victim.evictions and victim.evictions[0].startswith("evicted ns/b-0 (priority 10")
    assert victim.evictions[0].endswith("to wake ns/a-0")


def test_once_the_victim_is_asleep_the_plan_rederived_is_the_wake_alone() -> None:
    pool = one_gpu(
        engine("ns/a-0", EngineState.ASLEEP, held=1),
        engine("ns/b-0", EngineState.ASLEEP),
    )
    view = PoolView(pool, Sharing.TIME_SLICING, wants=frozenset({"ns/a-0"}))
    wake = Wake("a-0", "held")
    g = gate(view, "ns", request(pod("a-0"), actions=(wake,)), NOW)
    assert g.actions == (wake,) and g.turns == {"n/gpu-0": "ns/a-0"}


def test_a_replica_with_requests_in_flight_is_never_the_victim() -> None:
    pool = one_gpu(
        engine("ns/a-0", EngineState.ASLEEP, held=1),
        engine("ns/b-0", EngineState.AWAKE, inflight=2),
    )
    view = PoolView(pool, Sharing.TIME_SLICING, wants=frozenset({"ns/a-0"}))
    assert gate(view, "ns", request(pod("b-0", routed=True)), NOW).actions == ()
    g = gate(view, "ns", request(pod("a-0"), actions=(Wake("a-0", "held"),)), NOW)
    assert "in flight" in g.waiting["ns/a-0"]


def test_a_step_of_another_replica_on_the_device_holds_my_idle_sleep_and_its_unroute() -> None:
    pool = one_gpu(
        engine("ns/a-0", EngineState.AWAKE, share=30 * GIB),
        engine("ns/b-0", EngineState.WAKING, share=30 * GIB),
    )
    view = PoolView(pool, Sharing.TIME_SLICING)
    acts = (Route("a-0", False), Sleep("a-0", 1, "idle for 60s"))
    assert gate(view, "ns", request(pod("a-0", routed=True), actions=acts), NOW).actions == ()
    settled = one_gpu(
        engine("ns/a-0", EngineState.AWAKE, share=30 * GIB),
        engine("ns/b-0", EngineState.AWAKE, share=30 * GIB),
    )
    turn_taken = PoolView(settled, Sharing.TIME_SLICING, turns={"n/gpu-0": "ns/b-0"})
    assert gate(turn_taken, "ns", request(pod("a-0", routed=True), actions=acts), NOW).actions == ()
    free = gate(
        PoolView(settled, Sharing.TIME_SLICING), "ns", request(pod("a-0"), actions=acts), NOW
    )
    assert free.actions == acts and free.turns == {"n/gpu-0": "ns/a-0"}


def test_a_missing_replica_is_seated_on_a_device_one_start_per_device() -> None:
    pool = one_gpu(
        engine("ns/a-0", EngineState.PENDING, device=None),
        engine("ns/b-0", EngineState.PENDING, device=None),
        devices=1,
    )
    req_a = PoolRequest(live=(), observations={}, indexes={0: "a-0"}, actions=())
    req_b = PoolRequest(live=(), observations={}, indexes={0: "b-0"}, actions=())
    view = PoolView(pool, Sharing.TIME_SLICING)
    seated = [gate(view, "ns", r, NOW).seats for r in (req_a, req_b)]
    assert sorted(len(s) for s in seated) == [0, 1]  # the device takes one start-up at a time
    assert [d for s in seated for d in s.values()] == ["n/gpu-0"]


def test_a_model_larger_than_the_device_is_refused_for_good_and_nothing_is_evicted() -> None:
    pool = one_gpu(
        engine("ns/big-0", EngineState.PENDING, device=None, share=90 * GIB),
        engine("ns/b-0", EngineState.AWAKE),
    )
    view = PoolView(pool, Sharing.TIME_SLICING)
    req = PoolRequest(live=(), observations={}, indexes={0: "big-0"}, actions=())
    g = gate(view, "ns", req, NOW)
    assert g.seats == {} and "ns/big-0" in g.never and "90.0 GiB" in g.never["ns/big-0"]
    assert gate(view, "ns", request(pod("b-0", routed=True)), NOW).actions == ()


def test_under_dra_a_device_serves_one_namespace_at_a_time() -> None:
    pool = one_gpu(
        engine("ns1/a-0", EngineState.ASLEEP, share=10 * GIB),
        engine("ns2/b-0", EngineState.PENDING, device=None, share=10 * GIB),
        devices=2,
    )
    plans, _ = pool_plans(PoolView(pool, Sharing.DRA), NOW)
    assert [p.device for p in plans] == ["n/gpu-1"]
    plans, _ = pool_plans(PoolView(pool, Sharing.TIME_SLICING), NOW)
    assert [p.device for p in plans] == ["n/gpu-0"]  # time slicing packs them together


def test_an_idle_sleep_past_the_nodes_host_budget_is_level_2() -> None:
    pool = Pool(
        devices=(Device("n/gpu-0", "n", 80 * GIB),),
        nodes=(Node("n", host_budget=20 * GIB),),
        engines=(
            engine("ns/a-0", EngineState.AWAKE, share=30 * GIB, weights=16 * GIB),
            engine("ns/b-0", EngineState.ASLEEP, share=30 * GIB, weights=16 * GIB),
        ),
    )
    idle = Sleep("a-0", 1, "idle for 60s")
    g = gate(PoolView(pool, Sharing.TIME_SLICING), "ns", request(pod("a-0"), actions=(idle,)), NOW)
    assert g.actions == (Sleep("a-0", 2, "idle for 60s"),)


def two_replicas(first: Engine, devices: int = 2) -> Pool:
    second = engine("ns/m-1", EngineState.ASLEEP, device="n/gpu-1")
    return one_gpu(first, second, devices=devices)


def woken(plans: list) -> list[str]:  # type: ignore[type-arg]
    return [p.replica for p in plans if isinstance(p.steps[-1], WakeStep)]


def test_one_request_for_a_model_with_two_sleeping_replicas_wakes_one() -> None:
    pool = two_replicas(engine("ns/m-0", EngineState.ASLEEP))
    view = PoolView(pool, Sharing.TIME_SLICING, wants=frozenset({"ns/m-0", "ns/m-1"}))
    plans, refusals = pool_plans(view, NOW)
    assert woken(plans) == ["ns/m-0"] and refusals == []
    g = gate(
        view,
        "ns",
        request(
            pod("m-0"), pod("m-1", device="n/gpu-1"), actions=(Wake("m-0", "d"), Wake("m-1", "d"))
        ),
        NOW,
    )
    assert [a.pod for a in g.actions] == ["m-0"]
    assert "ns/m-1" not in g.queued  # not waiting for anything: its model does not need it


def test_another_replica_wakes_once_the_awake_ones_carry_their_share_of_requests() -> None:
    wants = frozenset({"ns/m-1"})
    light = two_replicas(engine("ns/m-0", EngineState.AWAKE, inflight=WAKE_PER_REPLICA))
    assert woken(pool_plans(PoolView(light, Sharing.TIME_SLICING, wants=wants), NOW)[0]) == []
    busy = two_replicas(engine("ns/m-0", EngineState.AWAKE, inflight=WAKE_PER_REPLICA, held=1))
    assert woken(pool_plans(PoolView(busy, Sharing.TIME_SLICING, wants=wants), NOW)[0]) == [
        "ns/m-1"
    ]


def test_an_always_awake_model_wakes_every_replica() -> None:
    first = engine("ns/m-0", EngineState.ASLEEP, evictable=False)
    pool = one_gpu(
        first, engine("ns/m-1", EngineState.ASLEEP, device="n/gpu-1", evictable=False), devices=2
    )
    view = PoolView(pool, Sharing.TIME_SLICING, wants=frozenset({"ns/m-0", "ns/m-1"}))
    assert sorted(woken(pool_plans(view, NOW)[0])) == ["ns/m-0", "ns/m-1"]


def test_the_gate_names_the_other_models_step_that_is_next_on_a_free_device() -> None:
    # a-0's wake waits on b-0's eviction: a's gate names it, so the pool hands b the turn.
    pool = one_gpu(
        engine("ns/a-0", EngineState.ASLEEP, held=1),
        engine("ns/b-0", EngineState.AWAKE, priority=10),
    )
    view = PoolView(pool, Sharing.TIME_SLICING, wants=frozenset({"ns/a-0"}))
    mine = gate(view, "ns", request(pod("a-0"), actions=(Wake("a-0", "held"),)), NOW)
    assert mine.next_steps == ("ns/b-0",)
    # b-0 asleep: the plan is a-0's wake alone; b's gate names it.
    asleep = one_gpu(
        engine("ns/a-0", EngineState.ASLEEP, held=1), engine("ns/b-0", EngineState.ASLEEP)
    )
    view = PoolView(asleep, Sharing.TIME_SLICING, wants=frozenset({"ns/a-0"}))
    assert gate(view, "ns", request(pod("b-0")), NOW).next_steps == ("ns/a-0",)
    # Nothing is named while another step runs on the device: its end hands the turn on.
    busy = PoolView(asleep, Sharing.TIME_SLICING, {"n/gpu-0": "ns/c-0"}, frozenset({"ns/a-0"}))
    assert gate(busy, "ns", request(pod("b-0")), NOW).next_steps == ()
    # A member's own step is its own to run, never named.
    assert (
        gate(view, "ns", request(pod("a-0"), actions=(Wake("a-0", "held"),)), NOW).next_steps == ()
    )


def test_a_new_replica_is_seated_beside_a_device_held_by_a_model_outside_the_pool() -> None:
    """A device whose turn another model holds (a model not yet observed, or one of an
    overlapping pool that never will be) is busy for placement: the replica goes to another
    empty device. It was planned onto the held device (the first of the empty ones alike) and
    never seated, silently, for as long as the holder stayed."""
    pool = one_gpu(engine("ns/m-0", EngineState.PENDING, device=None), devices=2)
    view = PoolView(pool, Sharing.TIME_SLICING, turns={"n/gpu-0": "(a model not yet observed)"})
    req = PoolRequest(live=(), observations={}, indexes={0: "m-0"}, actions=())
    g = gate(view, "ns", req, NOW)
    assert g.seats == {0: "n/gpu-1"}


def test_with_every_device_held_the_replica_waits_saying_so() -> None:
    pool = one_gpu(engine("ns/m-0", EngineState.PENDING, device=None), devices=1)
    view = PoolView(pool, Sharing.TIME_SLICING, turns={"n/gpu-0": "(a model not yet observed)"})
    req = PoolRequest(live=(), observations={}, indexes={0: "m-0"}, actions=())
    g = gate(view, "ns", req, NOW)
    assert g.seats == {} and g.never == {}
    assert "busy" in {**g.queued, **g.waiting}["ns/m-0"]


def test_a_start_up_holds_deletions_beside_it_but_not_for_ever() -> None:
    """An outdated or surplus pod's engine releases its memory when it exits, which fails a
    neighbour's start-up profiling (vLLM's "Error in memory profiling"): a deletion waits while
    the device's turn is held by a replica still loading, at most START_UP_WAIT."""
    from vllm_sleep.reconcile.pool_gate import START_UP_WAIT, starting_up

    assert starting_up(EngineState.LOADING, 5.0)
    assert not starting_up(EngineState.SLEEPING, 5.0)  # frees memory: no profiling to break
    assert not starting_up(EngineState.AWAKE, 5.0)
    assert not starting_up(None, 5.0)  # a turn of a model not observed
    assert not starting_up(EngineState.LOADING, START_UP_WAIT + 1)  # a start that never loads
