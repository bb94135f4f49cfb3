"""The pool actor: members publish their replicas, device turns serialise steps across models,
and a turn is released once its holder is observed settled."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from vllm_sleep.api.agent_protocol import AgentState, StateReport
from vllm_sleep.api.gpu_pool import GPUPoolSpec
from vllm_sleep.api.model_deployment import ModelDeployment
from vllm_sleep.controller.pools import PoolActor
from vllm_sleep.metrics import OperatorMetrics
from vllm_sleep.reconcile.lifecycle import Sleep
from vllm_sleep.reconcile.observe import observe_pod
from vllm_sleep.reconcile.plan import observe_replica
from vllm_sleep.reconcile.pool_devices import PoolDevice
from vllm_sleep.reconcile.pool_gate import PoolRequest

GIB = 1 << 30
NOW = 1_800_000_000.0


def model(name: str, util: float = 0.3) -> ModelDeployment:
    return ModelDeployment.from_body(
        {
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
            "spec": {
                "model": "org/model",
                "image": "vllm/vllm-openai:v0.33.0",
                "resources": {"gpuMemoryUtilization": util, "weightsSize": "2Gi"},
                "placement": {"pool": "p"},
            },
        }
    )


class FakeKube:
    def __init__(self) -> None:
        self.status: list[dict[str, Any]] = []

    async def patch_pool_status(self, name: str, status: dict[str, Any]) -> None:
        self.status.append(status)


def actor() -> PoolActor:
    a = PoolActor("p", FakeKube(), OperatorMetrics())  # type: ignore[arg-type]
    a.spec = GPUPoolSpec.model_validate({"sharing": "TimeSlicing", "deviceMemory": "80Gi"})
    a.devices = (PoolDevice("n/gpu-0", "n", "gpu-0", 80 * GIB),)
    return a


def member(
    name: str, state: AgentState, actions: tuple = (), util: float = 0.3
) -> tuple[Any, PoolRequest, Any]:  # type: ignore[type-arg]
    p = observe_pod(
        {
            "metadata": {
                "name": f"{name}-0",
                "uid": f"uid-{name}-0",
                "labels": {"vllm-sleep.io/replica": "0"},
                "annotations": {"vllm-sleep.io/device": "n/gpu-0"},
            },
            "spec": {"nodeName": "n"},
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        }
    )
    rep = StateReport(state=state, version=1, level=1 if state == AgentState.ASLEEP else None)
    req = PoolRequest(
        live=[p],
        observations={p.name: observe_replica(p, rep)},
        indexes={0: p.name},
        actions=actions,
    )
    return model(name, util), req, {p.name: rep}


def test_two_models_cannot_start_steps_on_one_device_at_once_until_the_first_settles() -> None:
    async def run() -> None:
        a = actor()
        ma, ra, rep_a = member("a", AgentState.AWAKE, (Sleep("a-0", 1, "idle"),))
        mb, rb, rep_b = member("b", AgentState.AWAKE, (Sleep("b-0", 1, "idle"),))
        first = a.gatekeeper("ns", ma, rep_a, NOW)(ra)
        assert first.actions == (Sleep("a-0", 1, "idle"),)
        assert a.turns == {"n/gpu-0": "ns/a-0"}
        # b's pass comes before a's sleep was even observed: the device's turn is a's.
        assert a.gatekeeper("ns", mb, rep_b, NOW)(rb).actions == ()
        # a's next pass sees it asleep (settled): the turn is released, b may go.
        ma2, ra2, rep_a2 = member("a", AgentState.ASLEEP)
        a.gatekeeper("ns", ma2, rep_a2, NOW)(ra2)
        assert a.turns == {}
        assert a.gatekeeper("ns", mb, rep_b, NOW)(rb).actions == (Sleep("b-0", 1, "idle"),)
        await asyncio.sleep(1.2)  # the coalesced status write
        states = a._kube.status[-1]["deviceStates"]  # type: ignore[attr-defined]
        assert states[0]["device"] == "n/gpu-0" and sorted(states[0]["models"]) == [
            "ns/a-0",
            "ns/b-0",
        ]

    asyncio.run(run())


def test_a_member_that_leaves_releases_its_turns() -> None:
    async def run() -> None:
        a = actor()
        ma, ra, rep_a = member("a", AgentState.AWAKE, (Sleep("a-0", 1, "idle"),))
        a.gatekeeper("ns", ma, rep_a, NOW)(ra)
        assert a.turns
        a.leave("ns/a")
        assert a.turns == {} and "ns/a" not in a.engines

    asyncio.run(run())


def test_an_eviction_counts_a_swap_whose_duration_ends_when_its_target_is_awake() -> None:
    async def run() -> None:
        a = actor()
        m = a._metrics
        # b-0 asleep and wanted; a-0 awake and idle: b's wake needs a's eviction.
        a.occupants = {"n/gpu-0": {"ns/a", "ns/b"}}  # both have pods there (a restart)
        mb, rb, rep_b = member("b", AgentState.ASLEEP, util=0.8)
        from vllm_sleep.reconcile.lifecycle import Wake

        rb = PoolRequest(rb.live, rb.observations, rb.indexes, (Wake("b-0", "held"),))
        ma, ra, rep_a = member("a", AgentState.AWAKE, util=0.8)
        # b publishes first: a (awake) is not known yet, so b's device runs nothing.
        assert a.gatekeeper("ns", mb, rep_b, NOW)(rb).actions == ()
        victim = a.gatekeeper("ns", ma, rep_a, NOW)(ra)
        assert [type(x).__name__ for x in victim.actions] == ["Route", "Sleep"]
        value = m.registry.get_sample_value
        assert value("vllm_sleep_pool_evictions_total", {"pool": "p"}) == 1
        assert value("vllm_sleep_pool_swaps_total", {"pool": "p"}) == 1
        mb2, rb2, rep_b2 = member("b", AgentState.AWAKE, util=0.8)
        a.gatekeeper("ns", mb2, rep_b2, NOW + 2.5)(rb2)
        assert value("vllm_sleep_pool_swap_duration_seconds_sum", {"pool": "p"}) == 2.5

    asyncio.run(run())


def test_exclusive_pools_seat_one_replica_per_device() -> None:
    async def run() -> None:
        a = actor()
        a.spec = GPUPoolSpec.model_validate(
            {"sharing": "Exclusive", "deviceMemory": "80Gi", "slotsPerDevice": 1}
        )
        assert a.snapshot().slots_per_device == 1
        ma, ra, rep_a = member("a", AgentState.ASLEEP)
        a.gatekeeper("ns", ma, rep_a, NOW)(ra)
        pending = PoolRequest(live=[], observations={}, indexes={0: "c-0"}, actions=())
        g = a.gatekeeper("ns", model("c"), {}, NOW)(pending)
        assert g.seats == {} and "full" in g.waiting["ns/c-0"]

    asyncio.run(run())


def test_the_backup_kept_while_awake_follows_the_agents_version_else_the_image_tag() -> None:
    from vllm_sleep.controller.pools import backup_kept_while_awake

    awake = AgentState.AWAKE
    assert backup_kept_while_awake(StateReport(state=awake), "vllm/vllm-openai:v0.34.0")
    assert not backup_kept_while_awake(StateReport(state=awake), "reg:5000/vllm-openai:v0.33.1")
    reported = StateReport(state=awake, engine_version="0.16.0")
    assert not backup_kept_while_awake(reported, "vllm/vllm-openai:v0.34.0")  # the agent knows
    # Neither says: counted as kept, the reading that never under-counts host memory.
    assert backup_kept_while_awake(StateReport(state=awake), "vllm/vllm-openai:latest")


class ClaimKube(FakeKube):
    def __init__(self, claims: list[dict[str, Any]]) -> None:
        super().__init__()
        self.claims = claims
        self.deleted: list[tuple[str, str]] = []
        self.created: list[dict[str, Any]] = []

    async def list_claims(self, label_selector: str) -> list[dict[str, Any]]:
        assert label_selector == "vllm-sleep.io/pool=p"
        return self.claims

    async def delete_claim(self, namespace: str, name: str) -> None:
        self.deleted.append((namespace, name))

    async def create_if_missing(self, manifest: dict[str, Any]) -> bool:
        self.created.append(manifest)
        return True


def test_a_claim_is_deleted_once_no_pod_of_its_namespace_references_it_and_made_again() -> None:
    from vllm_sleep.reconcile.pool_devices import claim_name

    a = actor()
    name = claim_name("n/gpu-0")
    labels = {"vllm-sleep.io/pool": "p"}
    kube = ClaimKube([{"metadata": {"namespace": "ns", "name": name, "labels": labels}}])
    a._kube = kube  # type: ignore[assignment]
    pod = {
        "metadata": {"namespace": "ns"},
        "spec": {"resourceClaims": [{"resourceClaimName": name}]},
    }

    async def run() -> None:
        await a.ensure_claim("ns", "n/gpu-0")
        await a.collect_claims([])  # just handed out: its pod is about to be created
        assert kube.deleted == []
        a._claim_used.clear()  # (as if handed out long ago)
        await a.collect_claims([pod])
        assert kube.deleted == []
        await a.collect_claims([])
        assert kube.deleted == [("ns", name)]
        await a.ensure_claim("ns", "n/gpu-0")  # a later pod there gets it created again
        assert len(kube.created) == 2

    asyncio.run(run())


def test_a_neighbour_going_idle_kicks_the_members_waiting_to_evict_it() -> None:
    async def run() -> None:
        a = actor()
        kick_b = asyncio.Event()
        a.join("ns/b", kick_b)
        ma, ra, _ = member("a", AgentState.AWAKE)
        busy = {"a-0": StateReport(state=AgentState.AWAKE, version=2, inflight=1)}
        busy_req = PoolRequest(
            ra.live, {"a-0": observe_replica(ra.live[0], busy["a-0"])}, ra.indexes, ()
        )
        a.gatekeeper("ns", ma, busy, NOW)(busy_req)
        kick_b.clear()
        a.gatekeeper("ns", ma, busy, NOW)(busy_req)  # nothing changed: no kick
        assert not kick_b.is_set()
        idle = {"a-0": StateReport(state=AgentState.AWAKE, version=3, inflight=0)}
        idle_req = PoolRequest(
            ra.live, {"a-0": observe_replica(ra.live[0], idle["a-0"])}, ra.indexes, ()
        )
        a.gatekeeper("ns", ma, idle, NOW)(idle_req)  # its requests finished: b may evict it
        assert kick_b.is_set()

    asyncio.run(run())


def test_a_change_that_makes_another_models_step_next_hands_that_model_the_turn() -> None:
    async def run() -> None:
        a = actor()
        handed: list[str] = []
        for name in ("a", "b"):
            a.join(f"ns/{name}", asyncio.Event(), lambda name=name: handed.append(name))
        from vllm_sleep.reconcile.lifecycle import Wake

        ma, ra, rep_a = member("a", AgentState.AWAKE, util=0.8)
        a.gatekeeper("ns", ma, rep_a, NOW)(ra)
        mb, rb, rep_b = member("b", AgentState.ASLEEP, util=0.8)
        rb = PoolRequest(rb.live, rb.observations, rb.indexes, (Wake("b-0", "held"),))
        # b now wants its wake, which needs a's eviction first: a's model gets the turn.
        a.gatekeeper("ns", mb, rep_b, NOW)(rb)
        await asyncio.sleep(0)
        assert handed == ["a"]
        # The same pass again changes nothing: nobody is handed anything twice.
        a.gatekeeper("ns", mb, rep_b, NOW)(rb)
        await asyncio.sleep(0)
        assert handed == ["a"]
        # a is published asleep: b's wake is next, b's model gets the turn.
        ma2, ra2, rep_a2 = member("a", AgentState.ASLEEP, util=0.8)
        a.gatekeeper("ns", ma2, rep_a2, NOW)(ra2)
        await asyncio.sleep(0)
        assert handed == ["a", "b"]
        a.leave("ns/a")
        assert "ns/a" not in a.hand_offs

    asyncio.run(run())


def test_a_step_that_becomes_next_as_time_passes_is_handed_over_by_the_waiting_recheck() -> None:
    """A wake that waits on a neighbour's minAwake: when it ends nothing is published (time
    passed, no state changed), so only the waiting model's recheck sees the eviction is now
    next. It must hand it over (at most every REHAND_SECONDS), not leave it to the
    neighbour's resync 30 s later."""

    async def run() -> None:
        from vllm_sleep.controller.pools import REHAND_SECONDS
        from vllm_sleep.reconcile.lifecycle import Wake

        a = actor()
        handed: list[str] = []
        for name in ("a", "b"):
            a.join(f"ns/{name}", asyncio.Event(), lambda name=name: handed.append(name))
        raw = model("a", util=0.8).model_dump(by_alias=True, mode="json")
        raw["spec"]["placement"]["minAwake"] = "10s"
        ma = ModelDeployment.model_validate(raw)
        _, ra, rep_a = member("a", AgentState.AWAKE, util=0.8)
        pod = ra.live[0]
        woke = replace(pod, memory=replace(pod.memory, woken_at=NOW - 5))  # minAwake: 5 s to go
        ra = PoolRequest(
            [woke], {woke.name: observe_replica(woke, rep_a[woke.name])}, ra.indexes, ()
        )
        a.gatekeeper("ns", ma, rep_a, NOW)(ra)
        mb, rb, rep_b = member("b", AgentState.ASLEEP, util=0.8)
        rb = PoolRequest(rb.live, rb.observations, rb.indexes, (Wake("b-0", "held"),))
        waiting = a.gatekeeper("ns", mb, rep_b, NOW)(rb)
        assert waiting.waiting and not waiting.actions  # a is protected for 5 s more
        await asyncio.sleep(0)
        assert handed == []
        # b's rechecks: same inputs; a's minAwake ends at NOW + 5.
        for t, expect in (
            (NOW + 6, ["a"]),
            (NOW + 6 + REHAND_SECONDS / 2, ["a"]),  # not again at once
            (NOW + 6 + REHAND_SECONDS, ["a", "a"]),  # still next, still not taken: again
        ):
            a.gatekeeper("ns", mb, rep_b, t)(rb)
            await asyncio.sleep(0)
            assert handed == expect, t - NOW

    asyncio.run(run())


class SlowNodesKube(FakeKube):
    """Nodes listed only once `answer` is set; one node with one shared GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()
        self.node_lists = 0

    async def list_nodes(self) -> list[dict[str, Any]]:
        self.node_lists += 1
        await self.answer.wait()
        node = {
            "metadata": {"name": "n", "labels": {}},
            "status": {
                "allocatable": {"nvidia.com/gpu": "1"},
                "capacity": {"nvidia.com/gpu": "1"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        return [node, {**node, "metadata": {"name": "m", "labels": {}}}]

    async def list_model_pods(self) -> list[dict[str, Any]]:
        return []


def test_the_periodic_re_read_of_the_devices_never_holds_a_members_pass() -> None:
    async def run() -> None:
        a = actor()
        kube = SlowNodesKube()
        a._kube = kube  # type: ignore[assignment]
        spec = a.spec
        assert spec is not None
        a._inventory_at = -1e9  # the last read is old
        before = a.devices
        refresh = asyncio.create_task(a.refresh(spec))
        for _ in range(5):
            await asyncio.sleep(0)
        # The pass goes on with the devices read before while the re-read waits on the API.
        assert refresh.done() and a.devices == before and kube.node_lists == 1
        await a.refresh(spec)  # a second pass meanwhile starts no second re-read
        assert kube.node_lists == 1
        kube.answer.set()
        assert a._rereading is not None
        await a._rereading
        assert {d.node for d in a.devices} == {"n", "m"}  # a node joined
        # A changed spec is read before the pass goes on.
        kube.answer.clear()
        changed = spec.model_copy(update={"slots_per_device": 2})
        blocked = asyncio.create_task(a.refresh(changed))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not blocked.done()
        kube.answer.set()
        await blocked
        assert a.spec == changed
        await a.close()

    asyncio.run(run())


def test_a_pool_without_devices_says_what_it_looks_for() -> None:
    """A GPUPool whose nodeSelector or resource matches no node: the member's problem names the
    pool and what it looks for, not only "a pool without devices"."""

    async def run() -> None:
        a = actor()
        a.spec = GPUPoolSpec.model_validate(
            {
                "sharing": "TimeSlicing",
                "deviceMemory": "80Gi",
                "deviceResourceName": "nvidia.com/gpu.shared",
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100"},
            }
        )
        a.devices = ()
        m, req, reps = member("a", AgentState.UNREACHABLE)
        req = PoolRequest([], {}, {0: "a-0"}, ())
        never = a.gatekeeper("ns", m, reps, NOW)(req).never
        assert never == {
            "ns/a-0": "ns/a-0 cannot be placed: GPUPool 'p' has no devices: no Ready node "
            "matching nodeSelector {'nvidia.com/gpu.product': 'NVIDIA-A100'} advertises "
            "nvidia.com/gpu.shared"
        }

    asyncio.run(run())


def test_a_dra_pool_without_devices_names_its_device_class() -> None:
    from vllm_sleep.reconcile.pool_devices import no_devices

    spec = GPUPoolSpec.model_validate({"deviceMemory": "80Gi"})
    assert no_devices("p", spec) == (
        "GPUPool 'p' has no devices: no Ready node publishes a ResourceSlice of the driver "
        "of DeviceClass 'gpu.nvidia.com'"
    )


def test_a_dra_pool_whose_device_class_is_missing_says_so() -> None:
    from vllm_sleep.reconcile.pool_devices import no_devices

    spec = GPUPoolSpec.model_validate({"deviceMemory": "80Gi"})
    assert no_devices("p", spec, class_found=False) == (
        "GPUPool 'p' has no devices: DeviceClass 'gpu.nvidia.com' does not exist (is its DRA "
        "driver installed? or fix spec.deviceClassName)"
    )


def test_the_actor_remembers_whether_the_device_class_exists() -> None:
    class Kube(FakeKube):
        async def list_nodes(self) -> list[Any]:
            return []

        async def list_resource_slices(self) -> list[Any]:
            return []

        async def get_cluster_object(self, *args: Any) -> Any:
            return None  # no such DeviceClass

        async def list_model_pods(self) -> list[Any]:
            return []

        async def list_claims(self, selector: str) -> list[Any]:
            return []

    async def run() -> None:
        a = PoolActor("p", Kube(), OperatorMetrics())  # type: ignore[arg-type]
        await a.refresh(GPUPoolSpec.model_validate({"deviceMemory": "80Gi"}))
        assert a.devices == () and a.class_found is False
        m, _, reps = member("a", AgentState.UNREACHABLE)
        never = a.gatekeeper("ns", m, reps, NOW)(PoolRequest([], {}, {0: "a-0"}, ())).never
        assert "DeviceClass 'gpu.nvidia.com' does not exist" in never["ns/a-0"]

    asyncio.run(run())


def test_a_member_that_leaves_holds_its_devices_until_a_re_read_shows_its_pods_gone() -> None:
    """A model deleted, moved out of the pool, or whose GPUPool was deleted stops publishing,
    but its pods hold their memory until they are gone (a drain of up to the grace period):
    a neighbour woken into that memory runs out of it (seen as a wake OOM in the e2e edits
    test). Its device runs nothing new until the pods are re-read, which happens within
    DEPARTED_REREAD rather than the 30 s inventory period."""
    import time

    from vllm_sleep.controller.pools import DEPARTED_REREAD
    from vllm_sleep.reconcile.lifecycle import Wake

    async def run() -> None:
        a = actor()
        kube = SlowNodesKube()  # lists no model pods: a's pod is gone by then
        kube.answer.set()
        a._kube = kube  # type: ignore[assignment]
        ma, ra, rep_a = member("a", AgentState.AWAKE, util=0.8)
        a.gatekeeper("ns", ma, rep_a, NOW)(ra)
        a.leave("ns/a")
        mb, rb, rep_b = member("b", AgentState.ASLEEP, util=0.8)
        rb = PoolRequest(rb.live, rb.observations, rb.indexes, (Wake("b-0", "held"),))
        assert a.gatekeeper("ns", mb, rep_b, NOW)(rb).actions == ()
        a._inventory_at = time.monotonic() - DEPARTED_REREAD - 0.1  # well within 30 s
        spec = a.spec
        assert spec is not None
        await a.refresh(spec)
        assert a._rereading is not None
        await a._rereading
        assert a.gatekeeper("ns", mb, rep_b, NOW)(rb).actions == (Wake("b-0", "held"),)
        await a.close()

    asyncio.run(run())


def test_a_start_up_on_a_device_is_known_to_any_pod_deleted_beside_it() -> None:
    """`Pools.start_up_beside`: the replica seated on a device holds its turn while it loads; a
    pod of another model on that device (still a member, or one that left the pool) waits."""
    from vllm_sleep.controller.pools import Pools

    async def run() -> None:
        pools = Pools(FakeKube(), OperatorMetrics())  # type: ignore[arg-type]
        a = pools.actors["p"] = actor()
        mb, rb, rep_b = member("b", AgentState.ASLEEP)
        a.gatekeeper("ns", mb, rep_b, NOW)(rb)
        pending = PoolRequest(live=[], observations={}, indexes={0: "c-0"}, actions=())
        seated = a.gatekeeper("ns", model("c"), {}, NOW)(pending)
        assert seated.seats == {0: "n/gpu-0"}  # c-0 starts there: the turn is its
        assert pools.start_up_beside("n/gpu-0", "ns/b-0")
        assert not pools.start_up_beside("n/gpu-0", "ns/c-0")  # its own
        assert not pools.start_up_beside("m/gpu-0", "ns/b-0")  # another device
        a.leave("ns/b")  # b moved out of the pool: its pod there still waits
        assert pools.start_up_beside("n/gpu-0", "ns/b-0")

    asyncio.run(run())
