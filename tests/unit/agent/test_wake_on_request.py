"""The agent's own wake for a held request, under the grant of the sleep (docs/agent.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from test_transitions import FakeVLLM, Rig

from vllm_sleep.agent.clock import Clock
from vllm_sleep.agent.config import AgentConfig
from vllm_sleep.agent.control import ControlAPI
from vllm_sleep.agent.gate import Admission, Mode
from vllm_sleep.api.agent_protocol import AgentState, WakeOrigin


class SlowWake:
    """The fake vLLM, with `/wake_up` waiting until the test lets it go."""

    def __init__(self, fake: FakeVLLM) -> None:
        self.fake = fake
        self.go = asyncio.Event()
        self.go.set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/wake_up":
            await self.go.wait()
        return self.fake(request)


@pytest.fixture
async def slow() -> AsyncIterator[tuple[Rig, SlowWake]]:
    fake = FakeVLLM()
    handler = SlowWake(fake)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        yield Rig(fake, http), handler


@pytest.fixture
def rig(slow: tuple[Rig, SlowWake]) -> Rig:
    return slow[0]


async def asleep(rig: Rig, level: int = 1, *, grant: bool) -> None:
    rig.set(AgentState.AWAKE)
    assert (await rig.t.sleep(level, drain_timeout=1, grant=grant)).status == 200
    assert rig.board.state is AgentState.ASLEEP and rig.board.wake_grant is grant
    rig.fake.log.clear()


def report(rig: Rig, wall_offset: float = 0.0) -> dict[str, object]:
    """`/state` as the control API answers it; `wall_offset`: the wall clock stepped since."""
    clock = Clock(rig.clock.monotonic, lambda: rig.clock.wall() + wall_offset, rig.clock.sleep)
    api = ControlAPI(
        AgentConfig(control_token="t"), rig.board, rig.gate, rig.t, rig.metrics, clock=clock
    )
    return api.snapshot()


def count(rig: Rig, result: str) -> float:
    value = rig.metrics.registry.get_sample_value(
        "vllm_sleep_agent_transitions_total", {"kind": "wake", "result": result}
    )
    return value or 0.0


async def test_a_held_request_wakes_a_granted_engine_at_once(rig: Rig) -> None:
    await asleep(rig, grant=True)
    assert report(rig)["wake_on_request"] is True
    request = asyncio.create_task(rig.gate.acquire(10))
    await asyncio.sleep(0)
    # Waking already when anyone can read the held report: the operator sees no wake to order.
    assert rig.board.state is AgentState.WAKING
    seen = report(rig)
    assert (seen["state"], seen["held"], seen["woken_by"]) == ("waking", 1, "request")
    assert seen["wake_on_request"] is False  # consumed by this wake
    assert await request is Admission.ADMITTED  # released only once confirmed awake
    assert rig.fake.log == ["/wake_up", "/is_sleeping"]
    assert rig.gate.mode is Mode.OPEN and rig.gate.inflight == 1
    awake = report(rig)
    assert (awake["state"], awake["woken_by"]) == ("awake", "request")
    assert awake["wake_started"] is not None and awake["since"] is not None
    assert count(rig, "ok") == 1


async def test_without_the_grant_a_held_request_waits_for_the_operator(rig: Rig) -> None:
    await asleep(rig, grant=False)
    request = asyncio.create_task(rig.gate.acquire(10))
    await asyncio.sleep(0.01)
    assert rig.board.state is AgentState.ASLEEP and rig.fake.log == []
    assert (await rig.t.wake()).status == 200
    assert await request is Admission.ADMITTED
    assert rig.board.woken_by is WakeOrigin.OPERATOR


async def test_a_level_2_wake_on_request_reloads_the_weights(rig: Rig) -> None:
    await asleep(rig, 2, grant=True)
    assert await rig.gate.acquire(10) is Admission.ADMITTED
    assert rig.fake.log == [
        "/wake_up?tags=weights",
        "/collective_rpc",
        "/wake_up?tags=kv_cache",
        "/is_sleeping",
    ]


async def test_an_operator_wake_meanwhile_joins_the_agents_wake(
    slow: tuple[Rig, SlowWake],
) -> None:
    rig, vllm = slow
    await asleep(rig, grant=True)
    vllm.go.clear()
    request = asyncio.create_task(rig.gate.acquire(10))
    await asyncio.sleep(0.01)
    assert rig.board.state is AgentState.WAKING
    operator = asyncio.create_task(rig.t.wake())
    await asyncio.sleep(0.01)
    assert not operator.done()  # joined: neither 409 nor a second wake
    assert (await rig.t.sleep(1, drain_timeout=1)).status == 409  # still one at a time
    vllm.go.set()
    assert (await operator).status == 200
    assert await request is Admission.ADMITTED
    assert rig.fake.log.count("/wake_up") == 1
    assert (count(rig, "ok"), count(rig, "joined")) == (1, 1)
    # The operator counts the wake it joined (its Woke Event, its metric): the report says so,
    # or the operator's next pass would count the same wake a second time as the agent's.
    assert report(rig)["woken_by"] == "operator"


async def test_an_operator_wake_that_finds_the_agents_wake_done_takes_it_over(rig: Rig) -> None:
    await asleep(rig, grant=True)
    assert await rig.gate.acquire(10) is Admission.ADMITTED
    assert report(rig)["woken_by"] == "request"
    # The operator ordered its wake from a report older than the agent's: it counts that wake.
    assert (await rig.t.wake()).status == 200
    assert report(rig)["woken_by"] == "operator"
    assert rig.fake.log.count("/wake_up") == 1


async def test_the_wake_start_reported_is_the_same_in_every_report(rig: Rig) -> None:
    """The operator keys the wake by its start: re-derived from the monotonic clock at every
    report, a wall clock that stepped (or two readings straddling a millisecond) would make
    the same wake look new, counted and announced again."""
    await asleep(rig, grant=True)
    assert await rig.gate.acquire(10) is Admission.ADMITTED
    first = report(rig)["wake_started"]
    rig.clock.now += 600
    assert report(rig, wall_offset=0.25)["wake_started"] == first
    assert report(rig, wall_offset=-0.0004)["wake_started"] == first


async def test_requests_held_during_a_granted_sleep_wake_it_when_it_is_done(
    slow: tuple[Rig, SlowWake],
) -> None:
    rig, _ = slow
    rig.set(AgentState.AWAKE)
    assert await rig.gate.acquire(0) is Admission.ADMITTED  # keeps the drain going
    sleeping = asyncio.create_task(rig.t.sleep(1, drain_timeout=30, grant=True))
    await asyncio.sleep(0.01)
    assert rig.board.state is AgentState.DRAINING
    held = asyncio.create_task(rig.gate.acquire(10))
    await asyncio.sleep(0.01)
    assert rig.board.state is AgentState.DRAINING  # no grant yet: the sleep has not happened
    rig.gate.release()
    assert (await sleeping).status == 200
    assert await held is Admission.ADMITTED
    assert rig.fake.log == ["/sleep?level=1&mode=wait", "/is_sleeping", "/wake_up", "/is_sleeping"]
    assert rig.board.woken_by is WakeOrigin.REQUEST


async def test_a_failed_wake_on_request_consumes_the_grant(rig: Rig) -> None:
    await asleep(rig, grant=True)
    rig.fake.fail["/wake_up"] = 500
    request = asyncio.create_task(rig.gate.acquire(10))
    async with asyncio.timeout(5):
        while rig.board.state is not AgentState.ASLEEP or count(rig, "error") == 0:
            await rig.board.wait_change(rig.board.version, 1.0)
    assert rig.board.last_error and "/wake_up" in rig.board.last_error
    assert not rig.board.wake_grant and rig.gate.mode is Mode.HOLD
    another = asyncio.create_task(rig.gate.acquire(10))
    await asyncio.sleep(0.01)
    assert rig.fake.log.count("/wake_up") == 1  # the operator's retry, not the agent's loop
    del rig.fake.fail["/wake_up"]
    assert (await rig.t.wake()).status == 200
    assert await request is Admission.ADMITTED and await another is Admission.ADMITTED


async def test_the_grant_is_each_sleeps_own(rig: Rig) -> None:
    await asleep(rig, grant=True)
    assert (await rig.t.wake()).status == 200  # the operator's wake consumes it too
    assert not rig.board.wake_grant and rig.board.woken_by is WakeOrigin.OPERATOR
    assert (await rig.t.sleep(1, drain_timeout=1)).status == 200
    assert not rig.board.wake_grant  # a sleep without it does not inherit the last one's
    # A sleep order that finds the engine asleep sets the grant as it says, and acts on it.
    request = asyncio.create_task(rig.gate.acquire(10))
    await asyncio.sleep(0.01)
    assert rig.board.state is AgentState.ASLEEP
    assert (await rig.t.sleep(1, drain_timeout=1, grant=True)).status == 200
    assert rig.board.state is AgentState.WAKING
    assert await request is Admission.ADMITTED


async def test_a_sleep_that_failed_grants_nothing(rig: Rig) -> None:
    rig.set(AgentState.AWAKE)
    rig.fake.fail["/sleep"] = 400
    assert (await rig.t.sleep(1, drain_timeout=1, grant=True)).status == 502
    assert rig.board.state is AgentState.AWAKE and not rig.board.wake_grant
    assert report(rig)["woken_by"] is None  # awake, but not by a wake


async def test_a_grant_only_order_never_sleeps_an_engine_that_woke_meanwhile(rig: Rig) -> None:
    """The operator takes a grant back (its policy changed) from a report that said asleep; the
    agent may have woken the engine for a request since. That order must not become a sleep
    of an engine that just woke (minAwake, the idle timer): it changes the grant or nothing."""
    await asleep(rig, grant=True)
    assert await rig.gate.acquire(10) is Admission.ADMITTED
    rig.gate.release()
    rig.fake.log.clear()
    refused = await rig.t.sleep(1, drain_timeout=1, idle=True, grant_only=True)
    assert refused.status == 409 and "not asleep" in refused.message
    assert rig.board.state is AgentState.AWAKE and rig.fake.log == []
    assert rig.gate.mode is Mode.OPEN
    # Asleep, it takes the grant back without touching the engine.
    assert (await rig.t.sleep(1, drain_timeout=1)).status == 200
    assert (await rig.t.sleep(1, drain_timeout=1, grant=True, grant_only=True)).status == 200
    assert rig.board.wake_grant
    rig.fake.log.clear()
    assert (await rig.t.sleep(2, drain_timeout=1, grant_only=True)).status == 200
    assert not rig.board.wake_grant and rig.board.level == 1 and rig.fake.log == []


async def test_an_engine_lost_during_the_agents_wake_refuses_the_held_requests(rig: Rig) -> None:
    """Not a hang until the hold timeout, and never a request forwarded: the state is
    unknowable, so `failed`, which answers the held requests 503 at once."""
    await asleep(rig, grant=True)
    lost = httpx.ConnectError("connection refused")
    rig.fake.then["/wake_up"] = [lost]
    rig.fake.then["/is_sleeping"] = [lost]
    async with asyncio.timeout(5):
        assert await rig.gate.acquire(600) is Admission.REFUSED
    assert rig.board.state is AgentState.FAILED and not rig.board.wake_grant
    assert rig.gate.mode is Mode.REFUSE and rig.board.woken_by is None
