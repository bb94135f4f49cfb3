"""Node heartbeats go out for all nodes at once, a bounded few in flight (sequential renewals of
200 nodes on a busy apiserver outlasted the 40 s Lease)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vllm_sleep.testing.kubelet import nodes
from vllm_sleep.testing.kubelet.nodes import BEAT_CONCURRENCY, NodeRegistrar, NodeSpec


class Answer:
    """An unread answer (`_preload_content=False`): the status only."""

    status = 200

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(self, *_: object) -> None:
        pass


class FakeCoord:
    in_flight = 0
    most = 0
    renewed: list[str] = []

    def __init__(self, _api: Any) -> None:
        pass

    async def patch_namespaced_lease(
        self, name: str, namespace: str, body: Any, **_: Any
    ) -> Answer:
        FakeCoord.in_flight += 1
        FakeCoord.most = max(FakeCoord.most, FakeCoord.in_flight)
        await asyncio.sleep(0.01)  # a slow apiserver
        FakeCoord.in_flight -= 1
        FakeCoord.renewed.append(name)
        return Answer()


async def test_leases_are_renewed_concurrently_within_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nodes.client, "CoordinationV1Api", FakeCoord)
    specs = [NodeSpec(f"n{i}", 1, 80 << 30) for i in range(3 * BEAT_CONCURRENCY)]
    registrar = NodeRegistrar(None, specs)  # type: ignore[arg-type]
    registrar.lost.add("n0")  # a lost node's kubelet sends nothing
    await registrar._renew_leases()
    assert sorted(FakeCoord.renewed) == sorted(s.name for s in specs[1:])
    assert FakeCoord.most == BEAT_CONCURRENCY


class FlakyCoord:
    calls = 0

    def __init__(self, _api: Any) -> None:
        pass

    async def patch_namespaced_lease(self, name: str, *_: Any, **__: Any) -> Answer:
        FlakyCoord.calls += 1
        if FlakyCoord.calls == 1:
            raise RuntimeError("connection reset")  # not an ApiException nor an OSError
        return Answer()


async def test_a_failed_beat_does_not_stop_the_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes.client, "CoordinationV1Api", FlakyCoord)
    registrar = NodeRegistrar(None, [NodeSpec("n0", 1, 80 << 30)], heartbeat=0)  # type: ignore[arg-type]
    task = asyncio.create_task(registrar._beat())
    for _ in range(200):
        if FlakyCoord.calls >= 3:
            break
        await asyncio.sleep(0.01)
    await registrar.stop()
    await asyncio.wait_for(task, 5)
    assert FlakyCoord.calls >= 3
