"""Held requests in the Dispatcher: slots, deadlines and refusals, raced deterministically.

The fake pool's `request` runs inside the dispatcher's send task, so a test can make the watch
change or the clock jump at the exact await point where a race would bite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from vllm_sleep.api.openai_errors import AGENT_REFUSALS
from vllm_sleep.gateway import MemoryDemand, StaticSource
from vllm_sleep.gateway.dispatch import Dispatcher
from vllm_sleep.gateway.metrics import GatewayMetrics
from vllm_sleep.gateway.router import Router
from vllm_sleep.gateway.routing import ModelKey, WakePolicy
from vllm_sleep.h1 import Response

KEY = ModelKey("team", "m")


class FakeReply:
    def __init__(self) -> None:
        self.status: int | None = None
        self.aborted = False

    @property
    def started(self) -> bool:
        return self.status is not None

    def start(self, status: int, *_: Any) -> None:
        assert self.status is None, "response already started"
        self.status = status

    def abort(self) -> None:
        self.aborted = True


class FakeExchange:
    def __init__(self, status: int) -> None:
        self.status = status
        self.complete = False  # the body still to come: the dispatcher awaits finished()
        self.released = self.closed = False

    async def finished(self) -> None:
        return None

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True
        self.release()


class FakePool:
    """`behaviour(sink)` plays the upstream: it runs where the real pool awaits the head."""

    def __init__(self, behaviour: Callable[[FakeReply], Awaitable[FakeExchange]]) -> None:
        self.behaviour = behaviour
        self.calls = 0
        self.read_timeout: float | None = None  # UpstreamPool's: none

    async def request(self, host: str, port: int, head: bytes, body: bytes, **kw: Any) -> Any:
        self.calls += 1
        return await self.behaviour(kw["sink"])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def world() -> AsyncIterator[tuple[StaticSource, Router]]:
    source = StaticSource("team")
    router = Router(MemoryDemand(), GatewayMetrics(), demand_interval=10.0)
    await router.start()
    await source.start(router)
    yield source, router
    await router.stop()


def dispatcher(router: Router, pool: FakePool, clock: Callable[[], float] = Clock()) -> Dispatcher:
    return Dispatcher(router, pool, GatewayMetrics(), retry_after=1, clock=clock)  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - gateway state has no public event
            await asyncio.sleep(0.005)


async def test_a_pod_shown_awake_as_the_request_reaches_its_agent_frees_the_slot(
    world: tuple[StaticSource, Router],
) -> None:
    # The watch shows the holding pod awake in the same loop turn the request is sent to its
    # agent (before the dispatcher's change-waiter ran). That change must not be lost: the
    # request is running now, so it must leave the hold queue (and stop counting as demand)
    # at once, not when the wake deadline (here 30 s) passes.
    source, router = world
    answer = asyncio.Event()

    async def agent(sink: FakeReply) -> FakeExchange:
        source.set_awake("m", True)  # the agent released it; the operator marked the pod awake
        await answer.wait()  # a long non-streamed answer: no head until it is done
        sink.start(200)
        return FakeExchange(200)

    source.add_model(
        "m", ["http://127.0.0.1:9"], awake=False, can_hold=True, wake=WakePolicy(timeout=30.0)
    )
    pool = FakePool(agent)
    d = dispatcher(router, pool, time.monotonic)
    task = asyncio.create_task(
        d.dispatch(FakeReply(), router.table.lookup_key(KEY), b"/", b"", b"{}")
    )  # type: ignore[arg-type]
    try:
        await until(lambda: pool.calls == 1)
        await until(lambda: router.table.queued(KEY) == 0)
    finally:
        answer.set()
    assert await task is None


async def test_an_answer_whose_head_is_out_at_the_wake_deadline_is_not_replaced_by_a_503(
    world: tuple[StaticSource, Router],
) -> None:
    # The agent released the request and its answer's head was spliced into the client's reply
    # (from the upstream protocol's callback) in the same loop turn as the wake deadline
    # passed, before the send task itself finished. The answer is going out: cutting it and
    # answering 503 on a started reply is a second response on one request.
    source, router = world
    clock = Clock()
    proceed = asyncio.Event()

    async def agent(sink: FakeReply) -> FakeExchange:
        await asyncio.sleep(0)  # the dispatcher waits for a change (or its deadline)
        sink.start(200)  # head arrived and spliced
        clock.now = 1000.0  # ... just as the deadline passes
        router.upsert_model(router.table.lookup_key(KEY))  # type: ignore[arg-type]  # and a change wakes the waiter
        await proceed.wait()  # the send task finishes a loop turn later
        return FakeExchange(200)

    source.add_model(
        "m", ["http://127.0.0.1:9"], awake=False, can_hold=True, wake=WakePolicy(timeout=10.0)
    )
    reply = FakeReply()
    pool = FakePool(agent)
    d = dispatcher(router, pool, clock)
    task = asyncio.create_task(d.dispatch(reply, router.table.lookup_key(KEY), b"/", b"", b"{}"))  # type: ignore[arg-type]
    try:
        await until(lambda: pool.calls == 1)
        await until(lambda: task.done() or router.table.queued(KEY) == 0)
    finally:
        proceed.set()
    result = await task
    assert not isinstance(result, Response), "a second answer on a started reply"
    assert result is None and reply.status == 200 and not reply.aborted
    assert router.table.inflight(("team", "m-0")) == 0


class Refusal(FakeExchange):
    """An agent refusal, as `send` peeks at it."""

    def __init__(self, code: str) -> None:
        super().__init__(AGENT_REFUSALS[code])
        self.headers: list[tuple[bytes, bytes]] = []
        self._body = b'{"error": {"message": "no", "type": "x", "param": null, "code": "%s"}}' % (
            code.encode()
        )

    async def read(self, limit: int) -> tuple[bytes, bool]:
        return self._body, True


async def test_a_refusing_replica_is_tried_again_on_the_next_change_of_the_model(
    world: tuple[StaticSource, Router], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The documented rule: after every replica refused, the request waits for the next change
    # of the model's pods (at most REFUSED_PAUSE) and tries them all again, the refusing pods
    # included: the change is usually that pod itself (the watch catches up, the pod is asleep
    # and its agent can hold). The pause is made endless so only the change can retry.
    monkeypatch.setattr("vllm_sleep.gateway.dispatch.REFUSED_PAUSE", 3600.0)
    source, router = world

    async def agent(sink: FakeReply) -> FakeExchange:
        if pool.calls == 1:
            return Refusal("engine_unavailable")  # the engine fell asleep; the watch lags
        sink.start(200)
        return FakeExchange(200)

    pool = FakePool(agent)
    source.add_model("m", ["http://127.0.0.1:9"], awake=True, can_hold=True)
    d = dispatcher(router, pool, time.monotonic)
    task = asyncio.create_task(
        d.dispatch(FakeReply(), router.table.lookup_key(KEY), b"/", b"", b"{}")
    )  # type: ignore[arg-type]
    await until(lambda: pool.calls == 1 and router.table.queued(KEY) == 1)
    source.set_awake("m", False)  # the watch catches up: asleep, its agent holds
    await until(lambda: task.done())
    assert await task is None and pool.calls == 2
    assert router.table.queued(KEY) == 0 and router.table.inflight(("team", "m-0")) == 0
