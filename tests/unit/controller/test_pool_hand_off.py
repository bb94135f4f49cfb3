"""A swap on one device hands its steps from model to model through the pool actor: a request
held at the sleeping model's agent (or that model's pass) plans the eviction and the victim's
model starts it at once, and the victim's finished sleep publishes it asleep (with its measured
residual) and starts the requested model's wake, with no reconcile pass of either loop between."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from vllm_sleep.api.agent_protocol import AgentState, StateReport
from vllm_sleep.api.gpu_pool import GPUPoolSpec
from vllm_sleep.api.names import CONDITION_AWAKE
from vllm_sleep.controller.children import Children
from vllm_sleep.controller.context import Context, Settings
from vllm_sleep.controller.model import WAITING_RECHECK_SECONDS, ModelController
from vllm_sleep.controller.pools import PoolActor, Pools
from vllm_sleep.controller.spec import parse_model
from vllm_sleep.metrics import OperatorMetrics
from vllm_sleep.reconcile.builders import GpuAttachment, owner_from_body
from vllm_sleep.reconcile.builders_pod import model_pod
from vllm_sleep.reconcile.plan import Transition, seated
from vllm_sleep.reconcile.pool_devices import PoolDevice
from vllm_sleep.scheduler import EngineState

GIB = 1 << 30
DEVICE = "n/gpu-0"
POOL: dict[str, Any] = {
    "apiVersion": "vllm-sleep.io/v1alpha1",
    "kind": "GPUPool",
    "metadata": {"name": "p"},
    "spec": {"sharing": "TimeSlicing", "deviceMemory": "80Gi"},
}
IPS = {"a": "10.0.0.1", "b": "10.0.0.2"}
RESIDUAL = 3 * GIB  # what the evicted engine still holds asleep, as its agent measured it


def body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "model": "org/model",
            "image": "vllm/vllm-openai:v0.33.0",
            "replicas": 1,
            # 0.6 of the device each: one awake at a time, so b's wake needs a's eviction.
            "resources": {"gpuMemoryUtilization": 0.6, "weightsSize": "16Gi"},
            "placement": {"pool": "p"},
        },
    }


def pod(name: str, awake: bool) -> dict[str, Any]:
    raw = body(name)
    spec = parse_model(raw).spec
    gpu = seated(GpuAttachment(pool=GPUPoolSpec.model_validate(POOL["spec"])), DEVICE)
    p = model_pod(owner_from_body(raw), spec, 0, agent_image="agent:test", gpu=gpu)
    p["metadata"]["uid"] = f"uid-{name}-0"
    p["metadata"]["namespace"] = "ns"
    p["metadata"]["annotations"]["vllm-sleep.io/prewarmed"] = "true"
    p["status"] = {
        "phase": "Running",
        "podIP": IPS[name],
        "conditions": [{"type": CONDITION_AWAKE, "status": "True" if awake else "False"}],
    }
    return p


class FakeKube:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.calls: list[tuple[Any, ...]] = []

    async def create_if_missing(self, manifest: dict[str, Any]) -> bool:
        return False

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.pods

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        return "token"

    async def read_lease_renew_time(self, namespace: str, name: str) -> float | None:
        return None

    async def set_routed(self, namespace: str, pod: str, routed: bool, reason: str) -> None:
        self.calls.append(("route", pod, routed))

    async def annotate_pod(self, namespace: str, pod: str, annotations: dict[str, Any]) -> None:
        self.calls.append(("annotate", pod))

    async def patch_model_status(
        self, namespace: str, name: str, status: dict[str, Any], **_: Any
    ) -> None:
        self.calls.append(("status", name))

    async def patch_pool_status(self, name: str, status: dict[str, Any]) -> None:
        pass

    async def get_node(self, name: str) -> dict[str, Any] | None:
        return {
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    async def list_nodes(self) -> list[dict[str, Any]]:
        return [
            {
                "metadata": {"name": "n"},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }
        ]


class FakeAgents:
    """Agents at IPS: a awake, b asleep. `tell` answers a long-poll; a's sleep waits for
    `release`."""

    def __init__(self, pool: PoolActor) -> None:
        self.pool = pool
        self.release = asyncio.Event()
        self.calls: list[tuple[str, str]] = []
        self.pool_at_wake: dict[str, tuple[EngineState, int | None]] = {}
        self.reports = {
            IPS["a"]: StateReport(
                state=AgentState.AWAKE,
                version=1,
                since=time.time() - 5,
                last_activity=time.time() - 5,
            ),
            IPS["b"]: StateReport(state=AgentState.ASLEEP, version=1, level=1),
        }
        self.news: dict[str, asyncio.Queue[StateReport]] = {
            ip: asyncio.Queue() for ip in IPS.values()
        }

    def tell(self, pod_ip: str, **report: Any) -> None:
        self.news[pod_ip].put_nowait(StateReport(**report))

    async def state(self, pod_ip: str, token: str, **kw: Any) -> StateReport:
        if kw.get("version") is not None:  # the long-poll: answers what a test tells
            return await self.news[pod_ip].get()
        return self.reports[pod_ip]

    async def sleep(self, pod_ip: str, token: str, level: int, *_: Any, **__: Any) -> StateReport:
        self.calls.append(("sleep", pod_ip))
        await self.release.wait()
        return StateReport(state=AgentState.ASLEEP, version=3, level=level, residual_bytes=RESIDUAL)

    async def wake(self, pod_ip: str, token: str) -> StateReport:
        self.calls.append(("wake", pod_ip))
        (a,) = self.pool.engines["ns/a"]
        self.pool_at_wake = {"a": (a.state, a.residual)}
        now = time.time()
        return StateReport(state=AgentState.AWAKE, version=3, level=1, since=now, last_activity=now)


def controllers() -> tuple[dict[str, ModelController], FakeAgents, FakeKube]:
    kube = FakeKube([pod("a", awake=True), pod("b", awake=False)])
    pools = Pools(kube, OperatorMetrics())  # type: ignore[arg-type]
    actor = pools.get("p")
    # The device inventory as the actor would have read it (no node or slice reads here).
    actor.spec = GPUPoolSpec.model_validate(POOL["spec"])
    actor.devices = (PoolDevice(DEVICE, "n", "gpu-0", 80 * GIB),)
    actor._inventory_at = time.monotonic()
    agents = FakeAgents(actor)
    children = Children(kube)  # type: ignore[arg-type]
    children.pools["p"] = POOL
    ctx = Context(
        settings=Settings(agent_image="agent:test"),
        kube=kube,  # type: ignore[arg-type]
        agents=agents,  # type: ignore[arg-type]
        metrics=OperatorMetrics(),
        children=children,
        parse=parse_model,
        pools=pools,
    )
    ctls = {n: ModelController(ctx, "ns", n, lambda *e: None) for n in ("a", "b")}
    return ctls, agents, kube


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def both_published(ctls: dict[str, ModelController]) -> None:
    """Each loop's pass once, so their agents are watched; then again with the reports in."""
    for _ in range(2):
        await ctls["a"].reconcile_once(body("a"))
        await ctls["b"].reconcile_once(body("b"))
        await settle()


async def test_a_swap_runs_the_eviction_and_then_the_wake_without_a_pass_between_them() -> None:
    ctls, agents, kube = controllers()
    a, b = ctls["a"], ctls["b"]
    try:
        await both_published(ctls)
        assert agents.calls == []  # a awake and idle for 5 s, b asleep: nothing to do
        # A request is held at b's agent: its report plans b's wake behind a's eviction, and
        # a's model starts that eviction at once (neither loop ran a pass since).
        agents.tell(IPS["b"], state=AgentState.ASLEEP, version=2, level=1, held=1)
        await settle()
        assert agents.calls == [("sleep", IPS["a"])]
        assert a.transition_kind == {"a-0": Transition.SLEEP}
        assert ("route", "a-0", False) in kube.calls
        # The eviction answers: a is published asleep and b's wake starts, still no pass.
        agents.release.set()
        await settle()
        assert agents.calls == [("sleep", IPS["a"]), ("wake", IPS["b"])]
        # When b woke, the pool counted a asleep holding what its agent measured.
        assert agents.pool_at_wake == {"a": (EngineState.ASLEEP, RESIDUAL)}
        assert b.transition_kind == {} and b.last_wake_seconds is not None
    finally:
        for c in ctls.values():
            await c.watchers.close()


async def test_a_pass_that_observed_before_a_hand_off_never_publishes_its_replica_settled() -> None:
    ctls, agents, _ = controllers()
    a, b = ctls["a"], ctls["b"]
    actor = a.ctx.pools.get("p")  # type: ignore[union-attr]
    evictions = actor._metrics.registry.get_sample_value
    try:
        await both_published(ctls)
        # a's next pass observes a-0 awake with nothing running, then awaits (an API read).
        observed = asyncio.Event()
        go_on = asyncio.Event()
        observe = a.observe

        async def slow_observe(*args: Any) -> Any:
            seen = await observe(*args)
            observed.set()
            await go_on.wait()
            return seen

        a.observe = slow_observe  # type: ignore[method-assign]
        stale = asyncio.create_task(a.reconcile_once(body("a")))
        await observed.wait()
        # Meanwhile the gateway signals demand for b: b's pass plans its wake, and a's
        # eviction starts by hand-off.
        b.ctx.signal_demand("ns", "b", time.time())
        await b.reconcile_once(body("b"))
        await settle()
        assert agents.calls == [("sleep", IPS["a"])]
        go_on.set()
        await stale
        # The pass published what runs now, not what it had observed: a-0 is being evicted,
        # its device's turn is still its own, and it was evicted once.
        (engine,) = actor.engines["ns/a"]
        assert engine.state == EngineState.SLEEPING
        assert actor.turns == {DEVICE: "ns/a-0"}
        assert evictions("vllm_sleep_pool_evictions_total", {"pool": "p"}) == 1
        agents.release.set()
        await settle()
        assert agents.calls == [("sleep", IPS["a"]), ("wake", IPS["b"])]
    finally:
        for c in ctls.values():
            await c.watchers.close()


async def test_a_wake_waiting_on_a_busy_neighbour_is_looked_at_again_soon() -> None:
    ctls, agents, _ = controllers()
    a, b = ctls["a"], ctls["b"]
    try:
        await both_published(ctls)
        # a runs a request (never evicted meanwhile); b gets one held: b's wake waits.
        agents.tell(IPS["a"], state=AgentState.AWAKE, version=2, inflight=1)
        agents.tell(IPS["b"], state=AgentState.ASLEEP, version=2, level=1, held=1)
        await settle()
        await a.reconcile_once(body("a"))
        next_in = await b.reconcile_once(body("b"))
        assert agents.calls == []
        # Nothing may kick b when what protects a ends (a timer, not an event): its loop looks
        # again well before the periodic resync.
        assert next_in is not None and next_in <= WAITING_RECHECK_SECONDS
        assert b.ctx.settings.resync_seconds > WAITING_RECHECK_SECONDS
    finally:
        for c in ctls.values():
            await c.watchers.close()


async def test_a_failing_hand_off_never_reaches_its_caller_and_kicks_the_loop() -> None:
    ctls, _, _ = controllers()
    b = ctls["b"]

    def broken() -> None:
        raise RuntimeError("boom")

    b._hand_off = broken  # type: ignore[method-assign]
    # Its callers are an agent's long-poll (which must keep polling) and the pool actor.
    b._reported("b-0", StateReport(state=AgentState.ASLEEP, version=2, held=1))
    b._pool_name = "p"
    b._reported("b-0", StateReport(state=AgentState.ASLEEP, version=3, held=1))
    assert b.kick.is_set()  # the loop's pass tries again
