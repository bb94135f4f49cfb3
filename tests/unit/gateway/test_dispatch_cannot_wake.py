"""A model the operator says no wake can serve is answered at once, not held for wake.timeout.

Only when no replica is awake or can hold the request: the refusal is decided where the gateway
would otherwise start holding. Everything else (asleep, a pod whose agent holds) is held as
before. Which statuses set `cannot_wake` is test_kube_parse_cannot_wake.py's subject.
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
    "CannotPlace", "GPUPool 'gpus' does not exist; create it or fix spec.placement.pool"
)


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


@pytest.mark.parametrize("why", [ZERO, NO_POOL], ids=["replicas-0", "no-pool"])
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


async def test_a_pod_whose_agent_can_hold_takes_the_request_whatever_the_status(
    world: World,
) -> None:
    # The pool went away while the pod sleeps: its agent still holds the request, as before.
    world.source.add_model(
        "m", ["http://127.0.0.1:9"], awake=False, can_hold=True, wake=WAKE, cannot_wake=NO_POOL
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


async def test_a_held_request_is_answered_when_the_status_says_it_cannot_wake(
    world: World,
) -> None:
    # Scaled to zero while a request waits in the gateway's queue: the operator's status write
    # ends the hold at once, not at the deadline.
    world.source.add_model("m", [], awake=False, wake=WAKE)
    task = world.dispatch()
    try:
        await settled(task, world.held)
        assert world.held()
        world.source.set_cannot_wake("m", ZERO)
        await settled(task, lambda: False)
        error = refusal(task.result())
    finally:
        await cancelled(task)
    assert ZERO.message in error["message"]
    assert world.router.table.queued(KEY) == 0
    assert world.hold_outcomes("rejected") == 1
