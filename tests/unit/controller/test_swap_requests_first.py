"""A swap's sleep and wake orders reach their agents before the members' passes run: a pool
member's loop, kicked by the hand-off that started a step, waits until that step's agent
reported anything (it has the order) or the call ended; the hand-off's own kicks made both
members' passes run before the order's request left."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from test_pool_hand_off import IPS, body, both_published, controllers, settle

from vllm_sleep.api.agent_protocol import AgentState, StateReport
from vllm_sleep.controller import pools as pools_module
from vllm_sleep.controller.model import PROTECTION_MARGIN
from vllm_sleep.controller.pools import PoolActor
from vllm_sleep.metrics import OperatorMetrics
from vllm_sleep.reconcile.plan import Transition
from vllm_sleep.reconcile.pool_engines import DEMAND_FRESH

pytestmark = pytest.mark.unit


async def stop(ctls: dict[str, Any]) -> None:
    """As the loops' end does: watches closed, transitions and deferred writes cancelled."""
    for c in ctls.values():
        c._leave_pool()  # a cancelled transition then hands nothing off
        await c.watchers.close()
    tasks = [t for c in ctls.values() for t in (*c.transitions.values(), *c._later)]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_passes_wait_for_every_undelivered_order_and_not_beyond_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    actor = PoolActor("p", None, OperatorMetrics())  # type: ignore[arg-type]
    first, second = actor.ordering(), actor.ordering()
    waiting = asyncio.create_task(actor.delivered())
    await settle()
    first()
    first()  # idempotent: one order is told once
    await settle()
    assert not waiting.done()  # the second has not reached its agent yet
    second()
    await settle()
    assert waiting.done()
    # An order its agent never reports holds passes back at most ORDER_WAIT_SECONDS.
    monkeypatch.setattr(pools_module, "ORDER_WAIT_SECONDS", 0.01)
    actor.ordering()
    await asyncio.wait_for(actor.delivered(), 5)


async def test_an_order_never_reported_holds_passes_back_once_not_for_every_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An agent whose report watch is down is told only when its call ends (a drain can take
    # minutes): its order counts for ORDER_WAIT_SECONDS from when it was given, after which
    # a pass (or a write, or an Event) waits for it no more.
    monkeypatch.setattr(pools_module, "ORDER_WAIT_SECONDS", 0.05)
    actor = PoolActor("p", None, OperatorMetrics())  # type: ignore[arg-type]
    silent = actor.ordering()
    await asyncio.wait_for(actor.delivered(), 5)  # the first waiter waits out the bound
    later = asyncio.create_task(actor.delivered())
    await settle()
    assert later.done()  # a later one does not wait again for the same order
    # A new order counts again, for its own bound.
    fresh = actor.ordering()
    waiting = asyncio.create_task(actor.delivered())
    await settle()
    assert not waiting.done()
    fresh()
    await settle()
    assert waiting.done()
    silent()
    assert not actor._orders


async def test_a_kicked_member_passes_only_once_the_evicted_agent_has_its_order() -> None:
    ctls, agents, _ = controllers()
    a, b = ctls["a"], ctls["b"]
    actor = a.ctx.pools.get("p")  # type: ignore[union-attr]
    try:
        await both_published(ctls)
        # A request held at b's agent: the hand-offs order a's eviction and kick both loops.
        agents.tell(IPS["b"], state="asleep", version=2, level=1, held=1)
        await settle()
        assert agents.calls == [("sleep", IPS["a"])]
        assert b.kick.is_set()
        waited = asyncio.create_task(b._wait(None))
        await settle()
        assert not waited.done()  # a's agent has not said anything since the order
        # a's agent reports it drains: it has the order, b's pass may run (a still sleeps).
        agents.tell(IPS["a"], state="draining", version=2)
        await settle()
        assert waited.done() and not b.kick.is_set()
        assert a.transition_kind != {}
        # The wake that follows the eviction is an order too; its call ended, so it is told.
        agents.release.set()
        await settle()
        assert agents.calls[-1] == ("wake", IPS["b"])
        await asyncio.wait_for(b._wait(0.01), 5)
        assert not actor._orders
    finally:
        for c in ctls.values():
            await c.watchers.close()


async def test_a_swaps_writes_and_events_wait_until_its_order_reached_the_agent() -> None:
    ctls, agents, kube = controllers()
    a, b = ctls["a"], ctls["b"]
    events: list[tuple[str, str]] = []
    a.emit = lambda _kind, reason, message: events.append((reason, message))  # type: ignore[method-assign]
    b.emit = lambda _kind, reason, message: events.append((reason, message))  # type: ignore[method-assign]
    emitted_at_wake: list[list[str]] = []
    wake = agents.wake

    async def wake_and_look(pod_ip: str, token: str) -> Any:
        emitted_at_wake.append([reason for reason, _ in events])
        return await wake(pod_ip, token)

    agents.wake = wake_and_look  # type: ignore[method-assign]
    try:
        await both_published(ctls)
        kube.calls.clear()
        agents.tell(IPS["b"], state="asleep", version=2, level=1, held=1)
        await settle()
        assert agents.calls == [("sleep", IPS["a"])]
        # Ordered, not yet reported by a's agent: its readiness gate, its memory and the
        # eviction's Events wait (each is CPU on the loop the order's request needs).
        assert kube.calls == [] and events == []
        agents.tell(IPS["a"], state="draining", version=2)
        await settle()
        assert ("route", "a-0", False) in kube.calls and ("annotate", "a-0") in kube.calls
        assert {"Evicted", "Sleeping"} <= {reason for reason, _ in events}
        # The eviction answers: b's wake is ordered before a's closing Event is posted.
        agents.release.set()
        await settle()
        assert agents.calls[-1] == ("wake", IPS["b"])
        assert "Slept" not in emitted_at_wake[0]
        assert "Slept" in {reason for reason, _ in events}
    finally:
        for c in ctls.values():
            await c.watchers.close()


async def test_a_replica_protected_by_fresh_demand_publishes_again_when_it_goes_stale() -> None:
    ctls, agents, _ = controllers()
    a, b = ctls["a"], ctls["b"]
    try:
        await both_published(ctls)
        # The gateway renewed a's demand after a woke: a counts one held request for the pool
        # (the requests that woke it may still be on their way), so b's wake waits.
        a.ctx.signal_demand("ns", "a", time.time())
        agents.tell(IPS["b"], state="asleep", version=2, level=1, held=1)
        await settle()
        next_in = await a.reconcile_once(body("a"))
        await b.reconcile_once(body("b"))
        assert agents.calls == []
        # Nothing is published when that protection ends: a's loop looks again then, not at
        # its resync (30 s; the swap bench stalled 30.5 s on this, about once in 200 swaps).
        assert next_in is not None and next_in <= DEMAND_FRESH + PROTECTION_MARGIN
        assert a.ctx.settings.resync_seconds > DEMAND_FRESH + PROTECTION_MARGIN
        a.ctx.demand[("ns", "a")] = time.time() - DEMAND_FRESH  # what that pass finds
        await a.reconcile_once(body("a"))
        await settle()
        assert agents.calls == [("sleep", IPS["a"])]
    finally:
        await stop(ctls)


async def test_a_held_report_starts_the_eviction_in_the_same_event_loop_step() -> None:
    ctls, agents, _ = controllers()
    a, b = ctls["a"], ctls["b"]
    try:
        await both_published(ctls)
        # The report's callback (run by b's long-poll task) plans b's wake, which names a's
        # eviction: a's hand-off runs right after, not after the long-poll re-arms or any
        # other ready callback.
        held = StateReport(state=AgentState.ASLEEP, version=2, level=1, held=1)
        b.watchers.set_report("b-0", IPS["b"], held)
        b._reported("b-0", held)
        assert a.transition_kind == {"a-0": Transition.SLEEP}
        await settle()
        assert agents.calls == [("sleep", IPS["a"])]
    finally:
        await stop(ctls)


async def test_fresh_demand_stops_protecting_a_replica_once_it_served_a_request_since() -> None:
    ctls, agents, _ = controllers()
    a, b = ctls["a"], ctls["b"]
    try:
        await both_published(ctls)
        # The renewal was stamped after a's wake, but a has served a request since: the
        # requests that woke it arrived (the swap bench waited up to 2.55 s on this).
        renewed = time.time()
        a.ctx.signal_demand("ns", "a", renewed)
        agents.tell(
            IPS["a"], state="awake", version=2, since=renewed - 5, last_activity=renewed + 1
        )
        await settle()
        agents.tell(IPS["b"], state="asleep", version=2, level=1, held=1)
        await settle()
        await a.reconcile_once(body("a"))
        await b.reconcile_once(body("b"))
        await settle()
        assert agents.calls[:1] == [("sleep", IPS["a"])]
    finally:
        await stop(ctls)
