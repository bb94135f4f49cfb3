from __future__ import annotations

import asyncio

from vllm_sleep.agent.gate import Admission, Gate


async def test_open_gate_admits_and_counts() -> None:
    gate = Gate(max_held=10)
    gate.open()
    assert await gate.acquire(1) is Admission.ADMITTED
    assert await gate.acquire(1) is Admission.ADMITTED
    assert gate.inflight == 2 and gate.last_activity is not None
    gate.release()
    gate.release()
    assert gate.inflight == 0 and await gate.wait_idle(0)


async def test_held_requests_are_released_in_order_with_their_slots() -> None:
    gate = Gate(max_held=10)
    order: list[int] = []

    async def request(i: int) -> None:
        assert await gate.acquire(5) is Admission.ADMITTED
        order.append(i)

    tasks = [asyncio.create_task(request(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert gate.held == 5 and gate.inflight == 0
    gate.open()
    assert gate.held == 0 and gate.inflight == 5  # counted before any waiter runs
    gate.hold()  # closing again at once cannot un-admit or lose them
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_first_held_request_signals_demand_once() -> None:
    signals: list[int] = []
    gate = Gate(max_held=10, on_edge=lambda: signals.append(1))
    tasks = [asyncio.create_task(gate.acquire(5)) for _ in range(3)]
    await asyncio.sleep(0)
    assert signals == [1]
    gate.open()
    await asyncio.gather(*tasks)


async def test_busy_and_idle_edges_signal_once_per_burst() -> None:
    signals: list[str] = []
    gate = Gate(max_held=10, on_edge=lambda: signals.append(f"inflight={gate.inflight}"))
    gate.open()
    for _ in range(3):
        assert await gate.acquire(1) is Admission.ADMITTED
    assert signals == ["inflight=1"]  # the busy edge only
    for _ in range(3):
        gate.release()
    assert signals == ["inflight=1", "inflight=0"]  # then the idle edge only


async def test_hold_timeout_and_full_queue() -> None:
    gate = Gate(max_held=1)
    waiter = asyncio.create_task(gate.acquire(0.01))
    await asyncio.sleep(0)
    assert await gate.acquire(5) is Admission.FULL
    assert await waiter is Admission.TIMEOUT
    assert gate.held == 0 and gate.inflight == 0


async def test_refuse_fails_waiters_and_new_requests() -> None:
    gate = Gate(max_held=10)
    waiter = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    gate.refuse()
    assert await waiter is Admission.REFUSED
    assert await gate.acquire(5) is Admission.REFUSED


async def test_cancelled_waiter_leaves_no_trace() -> None:
    gate = Gate(max_held=10)
    waiter = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert gate.held == 0
    gate.open()
    assert gate.inflight == 0


async def test_waiter_cancelled_after_release_gives_its_slot_back() -> None:
    gate = Gate(max_held=10)
    waiter = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    gate.open()  # slot taken on the waiter's behalf ...
    waiter.cancel()  # ... which goes away before running
    await asyncio.gather(waiter, return_exceptions=True)
    assert gate.inflight == 0


async def test_wait_idle_bounded() -> None:
    gate = Gate(max_held=10)
    gate.open()
    await gate.acquire(0)
    assert await gate.wait_idle(0.01) is False
    asyncio.get_running_loop().call_later(0.01, gate.release)
    assert await gate.wait_idle(5) is True


async def test_try_admit_takes_a_slot_only_while_open() -> None:
    """The proxy's coroutine-free path: an awake engine's request is counted (and the busy
    edge told) exactly as by acquire; a held or refusing gate leaves the decision to acquire,
    untouched."""
    edges: list[int] = []
    gate = Gate(max_held=10, on_edge=lambda: edges.append(gate.inflight))
    assert not gate.try_admit()  # HOLD
    gate.refuse()
    assert not gate.try_admit()
    assert gate.inflight == 0 and gate.held == 0 and edges == [] and gate.last_activity is None
    gate.open()
    assert gate.try_admit() and gate.try_admit()
    assert gate.inflight == 2 and edges == [1] and gate.last_activity is not None
    assert not await gate.wait_idle(0)
    gate.release()
    gate.release()
    assert edges == [1, 0] and await gate.wait_idle(0)
