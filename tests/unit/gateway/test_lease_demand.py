"""LeaseDemand against a fake CoordinationV1Api: the bodies it writes, and bounded writes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import ApiException

from vllm_sleep.api.demand import demand_lease, renew_patch
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
    # The Router allows one signal per model in flight: an unbounded write would end that
    # model's renewals, and it must not hold back any other model.
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


NOW = datetime(2026, 5, 1, 8, 0, 0, 250000, tzinfo=UTC)


class MissingLease:
    """The Lease does not exist yet: patches answer 404, creates are recorded."""

    def __init__(self) -> None:
        self.patches: list[Any] = []
        self.created: list[Any] = []

    async def patch_namespaced_lease(self, name: str, ns: str, body: Any, **_: Any) -> None:
        self.patches.append(body)
        raise ApiException(status=404)

    async def create_namespaced_lease(self, ns: str, body: Any, **_: Any) -> None:
        self.created.append(body)


async def test_a_missing_lease_is_created_in_the_shape_the_operator_builds() -> None:
    demand = LeaseDemand(object(), "gw-0", wall_clock=lambda: NOW)
    fake = MissingLease()
    demand._api = fake
    await demand.signal(ModelSpec(ModelKey("team", "a"), "a", uid="uid-a"))
    assert fake.patches == [renew_patch("gw-0", NOW)]
    (body,) = fake.created
    assert body == demand_lease(
        "a", "team", "uid-a", holder="gw-0", now=NOW, block_owner_deletion=False
    )
