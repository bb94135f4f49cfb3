"""A model the operator says no wake can serve is answered at once, not held for wake.timeout.

Only when no replica is awake and none can hold the request (the refusal is decided where the
gateway would otherwise start holding), or, when the problem is the whole model's (its GPUPool
is gone: no replica wakes), whatever the pods, and then a request already held at an agent is
answered too. Everything else (asleep, a pod whose agent holds) is held as before. Which
statuses set `cannot_wake` is test_kube_parse_cannot_wake.py's subject.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from vllm_sleep.api.openai_errors import ErrorCode
from vllm_sleep.gateway import MemoryDemand, StaticSource
from vllm_sleep.gateway.dispatch import Dispatcher
from vllm_sleep.gateway.metrics import GatewayMetrics
from vllm_sleep.gateway.router import Router
from vllm_sleep.gateway.routing import CannotWake, ModelKey, WakePolicy
from vllm_sleep.h1 import Response

KEY = ModelKey("team", "m")
WAKE = WakePolicy(timeout=30.0)  # far longer than any test runs: a hold shows as a queued request
ZERO = CannotWake("ScaledToZero", "it has 0 replicas (spec.replicas is 0)")
NO_POOL = CannotWake(
    "NoPlacement",
    "GPUPool 'gpus' does not exist; create it or fix spec.placement.pool",
    whole_model=True,
)
NO_DEVICE = CannotWake("CannotPlace", "team/m-1 needs 92.0 GiB: the largest device (80.0 GiB)")


class FakeReply:
    def __init__(self) -> None:
        self.status: int | None = None

    @property
    def started(self) -> bool:
        return self.status is not None

    def start(self, status: int, *_: Any) -> None:
        self.status = status

    def abort(self) -> None:
        pass


class FakeExchange:
    def __init__(self, status: int) -> None:
        self.status = status
        self.complete = True
        self.head_at = time.monotonic()

    async def finished(self) -> None:
        return None

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakePool:
    def __init__(self, behaviour: Callable[[FakeReply], Awaitable[FakeExchange]]) -> None:
        self.behaviour = behaviour
        self.calls = 0
        self.read_timeout: float | None = None

    async def request(self, host: str, port: int, head: bytes, body: bytes, **kw: Any) -> Any:
        self.calls += 1
        return await self.behaviour(kw["sink"])


async def answer_200(sink: FakeReply) -> FakeExchange:
    sink.start(200)
    return FakeExchange(200)


class HeldAtAgent:
    """An agent holding the request (its engine asleep) until the gateway closes it."""

    def __init__(self) -> None:
        self.closed = 0

    async def __call__(self, sink: FakeReply) -> FakeExchange:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.closed += 1
            raise
        raise AssertionError("unreachable")


class World:
    def __init__(self) -> None:
        self.source = StaticSource("team")
        self.demand = MemoryDemand()
        self.router = Router(self.demand, GatewayMetrics(), demand_interval=10.0)
        self.metrics = GatewayMetrics()
        self.pool = FakePool(answer_200)

    def dispatch(self) -> asyncio.Task[Response | None]:
        d = Dispatcher(self.router, self.pool, self.metrics, retry_after=7, clock=time.monotonic)  # type: ignore[arg-type]
        spec = self.router.table.lookup_key(KEY)
        assert spec is not None
        return asyncio.create_task(d.dispatch(FakeReply(), spec, b"/", b"", b"{}"))  # type: ignore[arg-type]

    def held(self) -> bool:
        return self.router.table.queued(KEY) > 0

    def hold_outcomes(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "vllm_sleep_gateway_hold_seconds_count", {"outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    await w.router.start()
    await w.source.start(w.router)
    yield w
    await w.router.stop()


async def settled(task: asyncio.Task[Any], also: Callable[[], bool]) -> None:
    """Until the request is answered or `also` holds (it is held), whichever comes first."""
    async with asyncio.timeout(5.0):
        while not task.done() and not also():  # noqa: ASYNC110 - gateway state has no event
            await asyncio.sleep(0.005)


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def refusal(response: Response | None) -> dict[str, Any]:
    assert isinstance(response, Response)
    assert response.status == 503
    assert dict(response.headers)["Retry-After"] == "7"
    error = json.loads(response.body)["error"]
    assert (error["code"], error["type"]) == (ErrorCode.MODEL_UNAVAILABLE, "server_error")
    return dict(error)


@pytest.mark.parametrize(
    "why", [ZERO, NO_POOL, NO_DEVICE], ids=["replicas-0", "no-pool", "no-device"]
)
async def test_a_model_that_cannot_wake_is_answered_at_once_with_the_operators_reason(
    world: World, why: CannotWake
) -> None:
    world.source.add_model("m", [], awake=False, wake=WAKE, cannot_wake=why)
    task = world.dispatch()
    try:
        await settled(task, world.held)
        assert task.done(), "held for wake.timeout instead of answered"
        error = refusal(task.result())
    finally:
        await cancelled(task)
    assert why.reason in error["message"] and why.message in error["message"]
    assert "`m`" in error["message"]
    # No wake is asked for and no slot is left behind.
    assert world.demand.count("m") == 0 and world.router.table.queued(KEY) == 0
    assert world.pool.calls == 0


async def test_an_asleep_model_is_still_held(world: World) -> None:
    world.source.add_model("m", ["http://127.0.0.1:9"], awake=False, wake=WAKE)
    task = world.dispatch()
    try:
        await settled(task, world.held)
        assert not task.done() and world.held()
    finally:
        await cancelled(task)


async def test_a_pod_whose_agent_can_hold_takes_the_request_despite_a_replicas_problem(
    world: World,
) -> None:
    # One replica fits no device; the placed one sleeps and its agent holds the request.
    world.source.add_model(
        "m", ["http://127.0.0.1:9"], awake=False, can_hold=True, wake=WAKE, cannot_wake=NO_DEVICE
    )
    task = world.dispatch()
    try:
        await settled(task, lambda: world.pool.calls > 0)
        assert world.pool.calls == 1
    finally:
        await cancelled(task)


async def test_an_awake_replica_serves_whatever_the_status(world: World) -> None:
    world.source.add_model("m", ["http://127.0.0.1:9"], awake=True, wake=WAKE, cannot_wake=ZERO)
    assert await world.dispatch() is None  # relayed
    assert world.pool.calls == 1


async def test_a_pool_gone_refuses_even_where_a_pod_could_hold(world: World) -> None:
    # The GPUPool was deleted while the replica sleeps: its agent could hold the request, but
    # the operator wakes no replica of the model, so holding only waits out wake.timeout.
    world.source.add_model(
        "m", ["http://127.0.0.1:9"], awake=False, can_hold=True, wake=WAKE, cannot_wake=NO_POOL
    )
    task = world.dispatch()
    try:
        await settled(task, lambda: world.pool.calls > 0 or world.held())
        assert task.done(), "sent to the agent to wait for a wake that never comes"
        error = refusal(task.result())
    finally:
        await cancelled(task)
    assert NO_POOL.reason in error["message"] and NO_POOL.message in error["message"]
    assert world.pool.calls == 0 and world.demand.count("m") == 0


async def test_an_awake_replica_serves_whatever_the_pool(world: World) -> None:
    world.source.add_model("m", ["http://127.0.0.1:9"], awake=True, wake=WAKE, cannot_wake=NO_POOL)
    assert await world.dispatch() is None  # relayed
    assert world.pool.calls == 1


async def test_a_request_held_at_an_agent_is_answered_when_the_pool_goes(world: World) -> None:
    agent = HeldAtAgent()
    world.pool.behaviour = agent
    world.source.add_model("m", ["http://127.0.0.1:9"], awake=False, can_hold=True, wake=WAKE)
    task = world.dispatch()
    try:
        await settled(task, lambda: world.pool.calls > 0)
        # A replica's problem arriving leaves it held: its agent's pod is placed and may wake.
        world.source.set_cannot_wake("m", NO_DEVICE)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done() and agent.closed == 0
        world.source.set_cannot_wake("m", NO_POOL)
        await settled(task, lambda: False)
        error = refusal(task.result())
    finally:
        await cancelled(task)
    assert NO_POOL.message in error["message"]
    assert agent.closed == 1  # the upstream request is closed: the agent drops it
    assert world.router.table.queued(KEY) == 0
    assert world.hold_outcomes("rejected") == 1


async def test_a_recreated_pool_holds_again(world: World) -> None:
    agent = HeldAtAgent()
    world.pool.behaviour = agent
    world.source.add_model(
        "m", ["http://127.0.0.1:9"], awake=False, can_hold=True, wake=WAKE, cannot_wake=NO_POOL
    )
    refusal(await world.dispatch())
    world.source.set_cannot_wake("m", None)  # the operator's status once the pool is back
    task = world.dispatch()
    try:
        await settled(task, lambda: world.pool.calls > 0)
        assert not task.done() and world.pool.calls == 1 and world.held()
        assert world.demand.count("m") == 1  # a wake is asked for again
    finally:
        await cancelled(task)


@pytest.mark.parametrize("why", [ZERO, NO_POOL], ids=["replicas-0", "no-pool"])
async def test_a_held_request_is_answered_when_the_status_says_it_cannot_wake(
    world: World, why: CannotWake
) -> None:
    # Scaled to zero, or its pool deleted, while a request waits in the gateway's queue: the
    # operator's status write ends the hold at once, not at the deadline.
    world.source.add_model("m", [], awake=False, wake=WAKE)
    task = world.dispatch()
    try:
        await settled(task, world.held)
        assert world.held()
        world.source.set_cannot_wake("m", why)
        await settled(task, lambda: False)
        error = refusal(task.result())
    finally:
        await cancelled(task)
    assert why.message in error["message"]
    assert world.router.table.queued(KEY) == 0
    assert world.hold_outcomes("rejected") == 1
