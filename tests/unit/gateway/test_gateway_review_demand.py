"""LeaseDemand against a fake CoordinationV1Api: a hung Lease write must not stop demand."""

from __future__ import annotations

import asyncio
from typing import Any

from vllm_sleep.gateway.demand import LeaseDemand
from vllm_sleep.gateway.routing import ModelKey, ModelSpec


class FakeLeases:
    """Patches of `hang` never answer (an apiserver that accepted the connection and stalled)."""

    def __init__(self, hang: set[str]) -> None:
        self.hang = hang
        self.patched: list[str] = []
        self.stalled = asyncio.Event()

    async def patch_namespaced_lease(self, name: str, ns: str, body: Any, **_: Any) -> None:
        if name in self.hang:
            self.stalled.set()
            await asyncio.Event().wait()
        self.patched.append(name)

    async def create_namespaced_lease(self, ns: str, body: Any, **_: Any) -> None:
        raise AssertionError("the Lease exists")


def spec(name: str) -> ModelSpec:
    return ModelSpec(ModelKey("team", name), name)


async def test_a_hung_lease_write_fails_in_time_and_does_not_block_other_models() -> None:
    # Without a bound a stalled write never returned: the Router allows one signal per model
    # in flight, so that model's Lease was never renewed again, and the one lock shared by
    # every model stopped the demand of all models behind it.
    demand = LeaseDemand(object(), "gw-0", timeout=0.2)
    fake = FakeLeases(hang={"a-demand"})
    demand._api = fake
    hung = asyncio.create_task(demand.signal(spec("a")))
    async with asyncio.timeout(5):
        await fake.stalled.wait()
        await demand.signal(spec("b"))
    assert fake.patched == ["b-demand"]
    await asyncio.wait({hung}, timeout=5)
    assert hung.done() and isinstance(hung.exception(), TimeoutError)
