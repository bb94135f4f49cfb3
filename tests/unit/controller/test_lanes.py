"""When the operator's API connections are all busy, the most urgent waiting request gets the
next one: a model's start (its Secret, Lease, pods) before status writes and reads, and those
before Services, first come first served within a lane (controller/lanes.py)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from test_kube_client import Answer

from vllm_sleep.controller.kube import Kube, api_client
from vllm_sleep.controller.lanes import Lane, PriorityGate


async def _hold(
    gate: PriorityGate, lane: Lane, order: list[str], name: str, release: asyncio.Event
) -> None:
    async with gate.slot(lane):
        order.append(name)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_freed_slot_goes_to_the_most_urgent_waiter_first_come_first_served() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    go = asyncio.Event()
    first = asyncio.create_task(_hold(gate, Lane.NORMAL, order, "holder", go))
    await _settle()
    waiters = [
        asyncio.create_task(_hold(gate, lane, order, name, go))
        for lane, name in (
            (Lane.BACKGROUND, "service"),
            (Lane.NORMAL, "status 1"),
            (Lane.START, "secret"),
            (Lane.PODS, "pod 1"),
            (Lane.NORMAL, "status 2"),
            (Lane.PODS, "pod 2"),
        )
    ]
    await _settle()
    assert order == ["holder"] and gate.waiting == 6
    go.set()
    await asyncio.gather(first, *waiters)
    assert order == ["holder", "pod 1", "pod 2", "secret", "status 1", "status 2", "service"]


async def test_without_waiters_a_request_goes_at_once_up_to_capacity() -> None:
    gate = PriorityGate(3)
    order: list[str] = []
    go = asyncio.Event()
    held = [asyncio.create_task(_hold(gate, Lane.BACKGROUND, order, f"s{i}", go)) for i in range(3)]
    await _settle()
    assert len(order) == 3  # the least urgent lane is not held back when nothing waits
    fourth = asyncio.create_task(_hold(gate, Lane.START, order, "pod", go))
    await _settle()
    assert "pod" not in order and gate.waiting == 1
    go.set()
    await asyncio.gather(*held, fourth)
    assert order[-1] == "pod"


async def test_a_cancelled_waiter_gives_its_turn_on_and_no_slot_is_lost() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    go = asyncio.Event()
    holder = asyncio.create_task(_hold(gate, Lane.NORMAL, order, "holder", go))
    await _settle()
    gone = asyncio.create_task(_hold(gate, Lane.START, order, "gone", go))
    after = asyncio.create_task(_hold(gate, Lane.BACKGROUND, order, "after", go))
    await _settle()
    gone.cancel()
    go.set()
    await asyncio.gather(holder, after)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert order == ["holder", "after"]
    async with gate.slot(Lane.BACKGROUND):  # the slot came back free
        assert gate.waiting == 0


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    go = asyncio.Event()
    holder = asyncio.create_task(_hold(gate, Lane.NORMAL, order, "holder", go))
    await _settle()
    handed = asyncio.create_task(_hold(gate, Lane.START, order, "handed", go))
    later = asyncio.create_task(_hold(gate, Lane.BACKGROUND, order, "later", go))
    await _settle()
    go.set()
    await asyncio.sleep(0)  # the holder leaves: the slot is handed to "handed"'s future...
    handed.cancel()  # ...which is cancelled before it runs
    # Bounded: a slot kept by the cancelled waiter would leave "later" waiting for good.
    await asyncio.wait_for(asyncio.gather(holder, later, return_exceptions=True), timeout=10)
    assert "later" in order  # the slot was passed on, not kept by the cancelled one


async def test_never_more_holders_than_capacity_under_random_load() -> None:
    rng = random.Random(7)
    gate = PriorityGate(4)
    inside = 0
    most = 0

    async def one() -> None:
        nonlocal inside, most
        async with gate.slot(rng.choice(list(Lane))):
            inside += 1
            most = max(most, inside)
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
            inside -= 1

    tasks = [asyncio.create_task(one()) for _ in range(300)]
    for t in rng.sample(tasks, 30):
        t.cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
    assert most == 4 and inside == 0
    assert gate.waiting == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        PriorityGate(0)


class Creates:
    """The generated client's create and patch calls, each answering when told to."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.answer = asyncio.Event()

    async def _answer(self, what: str) -> Answer:
        self.order.append(what)
        await self.answer.wait()
        return Answer({})

    def create_namespaced_pod(self, ns: str, body: Any, **_: Any) -> Any:
        return self._answer("Pod")

    def create_namespaced_service(self, ns: str, body: Any, **_: Any) -> Any:
        return self._answer("Service")

    def create_namespaced_secret(self, ns: str, body: Any, **_: Any) -> Any:
        return self._answer("Secret")

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> Any:
        return self._answer("status")


def _manifest(kind: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "m", "namespace": "ns"}}


async def test_the_operators_requests_wait_for_a_connection_in_lane_order() -> None:
    order: list[str] = []
    kube = Kube(api_client(), status_window=0, connections=1)
    try:
        fake = Creates(order)
        kube.core = kube.objects = fake  # type: ignore[assignment]
        first = asyncio.create_task(kube.create_if_missing(_manifest("Secret")))
        await _settle()
        queued = [
            asyncio.create_task(kube.create_if_missing(_manifest("Service"))),
            asyncio.create_task(kube.patch_model_status("ns", "m", {"phase": "Asleep"})),
            asyncio.create_task(kube.create_if_missing(_manifest("Secret"))),
            asyncio.create_task(kube.create_if_missing(_manifest("Pod"))),
        ]
        await _settle()
        assert order == ["Secret"]  # one connection: the others wait at the gate
        fake.answer.set()
        await asyncio.gather(first, *queued)
        await asyncio.wait_for(kube.model_status.drain(), timeout=10)
        assert order == ["Secret", "Pod", "Secret", "status", "Service"]
    finally:
        await kube.api.close()
