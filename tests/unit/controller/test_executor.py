"""The controller's executor and its I/O helpers, against in-memory fakes (no Kubernetes)."""

from __future__ import annotations

import asyncio
from typing import Any

from vllm_sleep.api.agent_protocol import UNREACHABLE_REPORT, AgentState, StateReport
from vllm_sleep.api.model_deployment import ModelDeployment
from vllm_sleep.controller.agents import AgentClient, AgentError
from vllm_sleep.controller.children import Children
from vllm_sleep.controller.context import Context, Settings
from vllm_sleep.controller.model import ModelController
from vllm_sleep.controller.spec import parse_model
from vllm_sleep.controller.watchers import AgentWatchers
from vllm_sleep.metrics import OperatorMetrics
from vllm_sleep.reconcile.lifecycle import Route, Sleep, Wake
from vllm_sleep.reconcile.observe import observe_pod
from vllm_sleep.reconcile.plan import CreatePod, DeletePod, Event, Plan, Reported, Transition

BODY: dict[str, Any] = {
    "apiVersion": "vllm-sleep.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "m", "namespace": "ns", "uid": "uid-m", "generation": 1},
    "spec": {
        "model": "org/model",
        "image": "vllm/vllm-openai:v0.33.0",
        "replicas": 1,
        "resources": {"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi"},
    },
}


class FakeKube:
    def __init__(self, pods: list[dict[str, Any]] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.pods = pods or []
        self.pools: dict[str, dict[str, Any]] = {}
        self.superseded: list[bool] = []  # each status write's flag

    async def create_if_missing(self, manifest: dict[str, Any]) -> bool:
        self.calls.append(("create", manifest["kind"], manifest["metadata"]["name"]))
        return True

    async def delete_pod(
        self, namespace: str, name: str, uid: str | None = None, *, force: bool = False
    ) -> None:
        self.calls.append(("delete", name, uid, "force") if force else ("delete", name, uid))

    async def get_node(self, name: str) -> dict[str, Any] | None:
        self.calls.append(("get_node", name))
        return {
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    async def list_nodes(self) -> list[dict[str, Any]]:
        return [await self.get_node("n")]

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.pods

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        return "token"

    async def set_routed(self, namespace: str, pod: str, routed: bool, reason: str) -> None:
        self.calls.append(("route", pod, routed))

    async def annotate_pod(self, namespace: str, pod: str, annotations: dict[str, Any]) -> None:
        self.calls.append(("annotate", pod, tuple(sorted(annotations))))

    async def patch_model_status(
        self, namespace: str, name: str, status: dict[str, Any], *, superseded: bool = False
    ) -> None:
        self.superseded.append(superseded)
        self.calls.append(("status", status["phase"]))

    async def get_cluster_object(
        self, group: str, version: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        self.calls.append(("get-pool", name))
        return self.pools.get(name)


class FakeAgents:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.granted: list[bool] = []  # each sleep's wake_on_request
        self.grant_only: list[bool] = []  # ...and its grant_only

    async def wake(self, pod_ip: str, token: str) -> StateReport:
        self.calls.append(("wake", pod_ip))
        return StateReport(state=AgentState.AWAKE, version=5)

    async def state(self, pod_ip: str, token: str, **_: Any) -> StateReport:
        await asyncio.sleep(3600)  # the long-poll never answers in these tests
        return UNREACHABLE_REPORT


def controller(kube: FakeKube) -> tuple[ModelController, list[tuple[str, str, str]]]:
    ctx = Context(
        settings=Settings(agent_image="agent:test"),
        kube=kube,  # type: ignore[arg-type]
        agents=FakeAgents(),  # type: ignore[arg-type]
        metrics=OperatorMetrics(),
        children=Children(kube),  # type: ignore[arg-type]
        parse=parse_model,
    )
    events: list[tuple[str, str, str]] = []
    return ModelController(ctx, "ns", "m", lambda *e: events.append(e)), events


def empty_plan(**kw: Any) -> Plan:
    base: dict[str, Any] = {
        "delete": (),
        "create": (),
        "watch": {},
        "actions": (),
        "events": (),
        "reported": Reported(),
        "status": {"phase": "Pending"},
        "next_check_in": None,
    }
    return Plan(**{**base, **kw})


async def test_apply_carries_out_the_plan_in_order_and_writes_status_once() -> None:
    kube = FakeKube()
    ctl, events = controller(kube)
    model = ModelDeployment.from_body(BODY)
    manifest = {"kind": "Pod", "metadata": {"name": "m-0"}}
    the_plan = empty_plan(
        delete=(DeletePod("m-9", "u9", "surplus replica"),),
        create=(CreatePod(manifest),),
        actions=(Route("m-0", False),),
        events=(Event("Warning", "EngineFailed", "m-0: boom"),),
        reported=Reported({"u0": 1}),
    )
    await ctl.apply(the_plan, model)
    assert kube.calls == [
        ("delete", "m-9", "u9"),
        ("create", "Pod", "m-0"),
        ("route", "m-0", False),
        ("status", "Pending"),
    ]
    assert events == [("Warning", "EngineFailed", "m-0: boom")]
    assert ctl.reported == Reported({"u0": 1})
    kube.calls.clear()
    await ctl.apply(empty_plan(), model)  # same status: no write
    assert kube.calls == []
    await ctl.watchers.close()


class SlowRouteKube(FakeKube):
    """Readiness-gate PATCHes that only finish when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def set_routed(self, namespace: str, pod: str, routed: bool, reason: str) -> None:
        await self.release.wait()
        await super().set_routed(namespace, pod, routed, reason)


class SleepingAgents(FakeAgents):
    def __init__(self) -> None:
        super().__init__()
        self.slept = asyncio.Event()

    async def sleep(
        self,
        pod_ip: str,
        token: str,
        level: int,
        drain: float,
        *,
        idle: bool = False,
        wake_on_request: bool = False,
        grant_only: bool = False,
    ) -> StateReport:
        self.calls.append(("sleep", pod_ip))
        self.granted.append(wake_on_request)
        self.grant_only.append(grant_only)
        self.slept.set()
        return StateReport(state=AgentState.ASLEEP, version=6, level=level)


async def test_a_sleep_does_not_wait_for_its_readiness_gate_patch() -> None:
    # An eviction is on the waking model's request path: the agent's /sleep starts while the
    # gate's PATCH is still in flight (the agent, not the gate, keeps requests off the engine).
    kube = SlowRouteKube()
    ctl, _ = controller(kube)
    agents = SleepingAgents()
    ctl.ctx.agents = agents  # type: ignore[assignment]
    model = ModelDeployment.from_body(BODY)
    the_plan = empty_plan(
        actions=(Route("m-0", False), Sleep("m-0", 1, "evicted")),
        watch={"m-0": "10.0.0.1"},
    )
    applying = asyncio.create_task(ctl.apply(the_plan, model))
    await asyncio.wait_for(agents.slept.wait(), timeout=5)
    assert not applying.done()  # the pass still waits for its gate write
    assert ("route", "m-0", False) not in kube.calls
    kube.release.set()
    await applying
    assert ("route", "m-0", False) in kube.calls
    await asyncio.gather(*ctl.transitions.values())
    await ctl.watchers.close()


class RefusingAgents(FakeAgents):
    async def sleep(
        self,
        pod_ip: str,
        token: str,
        level: int,
        drain: float,
        *,
        idle: bool = False,
        wake_on_request: bool = False,
        grant_only: bool = False,
    ) -> StateReport:
        self.calls.append(("sleep", pod_ip))
        self.granted.append(wake_on_request)
        self.grant_only.append(grant_only)
        raise AgentError(409, "requests in flight")


async def test_a_refused_idle_sleep_leaves_no_trace_a_done_one_is_told_not_annotated() -> None:
    kube = FakeKube()
    ctl, events = controller(kube)
    ctl.ctx.agents = RefusingAgents()  # type: ignore[assignment]
    model = ModelDeployment.from_body(BODY)
    idle = empty_plan(actions=(Sleep("m-0", 1, "idle for 300s", idle=True),), watch={"m-0": "ip"})
    await ctl.apply(idle, model)
    await asyncio.gather(*ctl.transitions.values())
    assert [c for c in kube.calls if c[0] == "annotate"] == []
    assert events == []
    ctl.ctx.agents = SleepingAgents()  # type: ignore[assignment]
    await ctl.apply(idle, model)
    await asyncio.gather(*ctl.transitions.values())
    # The agent's report carries an idle sleep's memory (`plan.replica_memory`): no pod write.
    assert [c for c in kube.calls if c[0] == "annotate"] == []
    assert [(e[1], "idle for 300s" in e[2]) for e in events] == [("Slept", True)]
    forced = empty_plan(actions=(Sleep("m-0", 1, "evicted"),), watch={"m-0": "ip"})
    await ctl.apply(forced, model)
    await asyncio.gather(*ctl.transitions.values())
    assert [c[:2] for c in kube.calls if c[0] == "annotate"] == [("annotate", "m-0")]
    await ctl.watchers.close()


async def test_a_wake_runs_as_a_task_then_routes_and_remembers() -> None:
    kube = FakeKube()
    ctl, events = controller(kube)
    model = ModelDeployment.from_body(BODY)
    await ctl.apply(empty_plan(actions=(Wake("m-0", "demand"),), watch={"m-0": "10.0.0.1"}), model)
    assert ctl.transition_kind == {"m-0": Transition.WAKE}
    await asyncio.gather(*ctl.transitions.values())
    await asyncio.sleep(0)  # the done callback
    assert ctl.transitions == {} and ctl.transition_kind == {} and ctl.kick.is_set()
    assert ("route", "m-0", True) in kube.calls
    assert [e[1] for e in events] == ["Waking", "Woke"]
    assert ctl.last_wake_seconds is not None
    pod = observe_pod({"metadata": {"name": "m-0"}, "status": {"podIP": "10.0.0.1"}})
    assert ctl.watchers.report(pod).state is AgentState.AWAKE
    await ctl.watchers.close()


async def test_a_pass_observes_plans_and_creates_the_missing_pod() -> None:
    kube = FakeKube()
    ctl, events = controller(kube)
    next_in = await ctl.reconcile_once(BODY)
    await ctl.ctx.children.drain()  # the Service is created by a task of its own
    created = [c for c in kube.calls if c[0] == "create"]
    assert ("create", "Pod", "m-0") in created
    assert {c[1] for c in created} == {"Secret", "Lease", "Service", "Pod"}
    assert ("status", "Pending") in kube.calls
    assert next_in is None and events == []
    await ctl.watchers.close()


async def test_a_missing_pool_is_looked_up_once_found_pools_are_kept() -> None:
    kube = FakeKube()
    children = Children(kube)  # type: ignore[arg-type]
    pooled = ModelDeployment.from_body(
        {**BODY, "spec": {**BODY["spec"], "placement": {"pool": "p"}}}
    )
    missing = await children.placement(pooled)
    assert missing.gpu is None and missing.problem and "does not exist" in missing.problem
    kube.pools["p"] = {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": "p"},
        "spec": {"sharing": "TimeSlicing", "deviceMemory": "80Gi"},
    }
    found = await children.placement(pooled)
    again = await children.placement(pooled)
    assert found.gpu is not None and found == again
    assert kube.calls.count(("get-pool", "p")) == 2  # the miss, then the find; then cached


def test_a_report_belongs_to_the_pod_at_its_ip() -> None:
    watchers = AgentWatchers(AgentClient(None), asyncio.Event())  # type: ignore[arg-type]
    watchers.set_report("m-0", "10.0.0.1", StateReport(state=AgentState.ASLEEP))
    old = observe_pod({"metadata": {"name": "m-0"}, "status": {"podIP": "10.0.0.1"}})
    successor = observe_pod({"metadata": {"name": "m-0"}, "status": {"podIP": "10.0.0.2"}})
    no_ip = observe_pod({"metadata": {"name": "m-0"}})
    assert watchers.report(old).state is AgentState.ASLEEP
    assert watchers.report(successor) is UNREACHABLE_REPORT
    assert watchers.report(no_ip) is UNREACHABLE_REPORT


async def test_the_control_token_is_read_again_once_an_agent_refuses_it() -> None:
    class RotatingKube(FakeKube):
        def __init__(self) -> None:
            super().__init__()
            self.token = "old"
            self.reads = 0

        async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
            self.reads += 1
            return self.token

    kube = RotatingKube()
    ctl, _ = controller(kube)
    assert await ctl._control_token() == "old"
    kube.token = "new"
    assert await ctl._control_token() == "old"  # cached: no read per pass
    ctl.watchers.token_rejected = True  # a long-poll got 401
    assert await ctl._control_token() == "new"
    assert not ctl.watchers.token_rejected and kube.reads == 2
    kube.token = "newer"
    ctl._failed("wake", "m-0", AgentError(401, "bad token"))  # a transition got 401
    assert await ctl._control_token() == "newer"
    await ctl.watchers.close()


async def test_a_failed_memory_write_does_not_fail_the_transition() -> None:
    class RefusingKube(FakeKube):
        async def annotate_pod(self, namespace: str, pod: str, annotations: Any) -> None:
            raise RuntimeError("403 right after an apiserver restart")

    ctl, events = controller(RefusingKube())
    ctl.ctx.agents = SleepingAgents()  # type: ignore[assignment]
    model = ModelDeployment.from_body(BODY)
    for idle in (False, True):
        await ctl.apply(
            empty_plan(actions=(Sleep("m-0", 1, "evicted", idle=idle),), watch={"m-0": "ip"}),
            model,
        )
        await asyncio.gather(*ctl.transitions.values())  # raises if the task did
    assert [e[1] for e in events] == ["Sleeping", "Slept", "Slept"]
    await ctl.watchers.close()


async def test_the_status_of_a_pass_that_starts_a_sleep_or_wake_is_submitted_as_superseded() -> (
    None
):
    # The transition changes the state this status shows: the coalescer writes it only if
    # nothing follows within the window (the next pass's status supersedes it).
    kube = FakeKube()
    ctl, _ = controller(kube)
    ctl.ctx.agents = SleepingAgents()  # type: ignore[assignment]
    model = ModelDeployment.from_body(BODY)
    watch = {"m-0": "10.0.0.1"}
    plans = [
        empty_plan(actions=(Sleep("m-0", 1, "pre-warm after load", idle=True),), watch=watch),
        empty_plan(actions=(Route("m-0", True),), watch=watch, status={"phase": "Awake"}),
        empty_plan(actions=(Wake("m-0", "demand"),), watch=watch, status={"phase": "Asleep"}),
        empty_plan(
            actions=(Sleep("m-0", 1, "grant", grant_only=True),),
            watch=watch,
            status={"phase": "Awake"},
        ),
    ]
    for the_plan in plans:
        await ctl.apply(the_plan, model)
        await asyncio.gather(*ctl.transitions.values())
    assert kube.superseded == [True, False, True, False]
    await ctl.watchers.close()
