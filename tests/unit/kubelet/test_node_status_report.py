"""A simulated node renews its Lease every beat (10 s) and posts its unchanged status only every
kubelet's nodeStatusReportFrequency (5 min): 200 nodes' status every minute were a write per
model in a 1,000-model bring-up for nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_node_heartbeats import Answer  # an unread answer: the status only

from vllm_sleep.testing.kubelet import nodes
from vllm_sleep.testing.kubelet.nodes import STATUS_REPORT_SECONDS, NodeRegistrar, NodeSpec

BEAT = 10.0


class Calls:
    renewals = 0
    statuses: list[str] = []
    stop_at = 0
    registrar: NodeRegistrar | None = None


class Coord:
    def __init__(self, _api: Any) -> None:
        pass

    async def patch_namespaced_lease(self, *_: Any, **__: Any) -> Answer:
        Calls.renewals += 1
        if Calls.renewals >= Calls.stop_at and Calls.registrar is not None:
            Calls.registrar._stopping.set()  # no beat after this one
        return Answer()


class Core:
    def __init__(self, _api: Any) -> None:
        pass

    async def patch_node_status(self, name: str, *_: Any, **__: Any) -> Answer:
        Calls.statuses.append(name)
        return Answer()


async def test_status_goes_out_every_report_period_not_every_beat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nodes.client, "CoordinationV1Api", Coord)
    monkeypatch.setattr(nodes.client, "CoreV1Api", Core)
    Calls.renewals, Calls.statuses = 0, []
    # The clock: one beat (10 s) per renewal of the one node.
    registrar = NodeRegistrar(
        None,  # type: ignore[arg-type]
        [NodeSpec("n0", 1, 80 << 30)],
        heartbeat=0,
        clock=lambda: Calls.renewals * BEAT,
    )
    Calls.registrar = registrar
    Calls.stop_at = int(2.5 * STATUS_REPORT_SECONDS / BEAT)  # two and a half report periods
    await asyncio.wait_for(registrar._beat(), 10)
    assert Calls.renewals == Calls.stop_at  # the Lease every beat
    assert Calls.statuses == ["n0", "n0"]  # the status once per report period
