"""Two gateway processes serving at once, each from its own watch (docs/reliability.md): demand
through both wakes a model once; a gateway SIGKILLed or SIGTERMed with requests held gives its
clients a clean error (connection closed, or 503 with an OpenAI error body) at once, never a hang,
while the other one goes on to serve its own held requests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from conftest import Kube

from .conftest import GatewayProc, Proc, start_gateway
from .helpers import apply, chat, model_manifest, sim_state, wait_for, wait_phase
from .test_gateway import CHAT, gauge, violations, wait_listed, woke

CLIENT_TIMEOUT = 60.0  # what each client allows; every answer must come well before it


def two_gateways(kube: Kube, tmp_path: Path, served: str) -> tuple[GatewayProc, GatewayProc]:
    for d in ("g1", "g2"):
        (tmp_path / d).mkdir()
    pair = (start_gateway(kube, tmp_path / "g1"), start_gateway(kube, tmp_path / "g2"))
    for g in pair:
        wait_listed(g.url, served, "Asleep")
    return pair


async def post(url: str, served: str, n: int) -> list[tuple[float, int | str, str]]:
    """`n` concurrent chats: (when answered, status or exception name, error code or "")."""

    async def one(client: httpx.AsyncClient, i: int) -> tuple[float, int | str, str]:
        try:
            r = await client.post(CHAT, json=chat(served, f"req {i}", max_tokens=3))
        except httpx.TransportError as e:
            return time.monotonic(), type(e).__name__, ""
        code = r.json()["error"]["code"] if r.status_code != 200 else ""
        return time.monotonic(), r.status_code, code

    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as client:
        return await asyncio.gather(*(one(client, i) for i in range(n)))


def test_demand_through_two_gateways_wakes_the_model_once(
    kube: Kube, namespace: str, operator: Proc, kubelet_admin: httpx.Client, tmp_path: Path
) -> None:
    served = f"both-{namespace}"
    apply(kube, model_manifest("both", namespace, servedModelName=served))
    wait_phase(kube, namespace, "both", "Asleep", timeout=120)
    g1, g2 = two_gateways(kube, tmp_path, served)
    try:

        async def burst() -> list[tuple[float, int | str, str]]:
            halves = await asyncio.gather(post(g1.url, served, 10), post(g2.url, served, 10))
            return [r for half in halves for r in half]

        results = asyncio.run(burst())
        assert [r for r in results if r[1] != 200] == []
        wait_phase(kube, namespace, "both", "Awake", timeout=30)
        wait_for(lambda: woke(kube, namespace, "both") >= 1, 30, what="Woke event")
        assert woke(kube, namespace, "both") == 1
        moved = sim_state(kube, namespace, "both")["transfers"]
        assert moved["weights_to_gpu"] == 1, moved  # the engine woke once
        for g in (g1, g2):
            assert wait_listed(g.url, served, "Awake")["awake_replicas"] == 1
    finally:
        g1.stop()
        g2.stop()
    assert violations(kubelet_admin, namespace) == []


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_gateway_stopped_with_requests_held_never_leaves_its_clients_hanging(
    kube: Kube,
    namespace: str,
    operator: Proc,
    kubelet_admin: httpx.Client,
    tmp_path: Path,
    how: str,
) -> None:
    served = f"held-{namespace}"
    apply(kube, model_manifest("held", namespace, servedModelName=served))
    wait_phase(kube, namespace, "held", "Asleep", timeout=120)
    g1, g2 = two_gateways(kube, tmp_path, served)
    # No operator: nothing wakes the model, so the requests stay held until we act.
    operator.stop()
    try:
        Results = list[tuple[float, int | str, str]]

        async def scenario() -> tuple[Results, float, Results]:
            doomed = asyncio.ensure_future(post(g1.url, served, 5))
            kept = asyncio.ensure_future(post(g2.url, served, 5))
            for g in (g1, g2):
                held = lambda g=g: gauge(g.url, "vllm_sleep_gateway_held_requests", served) >= 5  # noqa: E731
                await asyncio.to_thread(wait_for, held, 30, 0.1, f"5 held at {g.url}")
            stopped_at = time.monotonic()
            stopping = asyncio.ensure_future(
                asyncio.to_thread(g1.kill if how == "SIGKILL" else g1.stop)
            )
            answered = await doomed
            waited = max(at for at, _, _ in answered) - stopped_at
            await stopping
            assert not kept.done()
            await asyncio.to_thread(operator.start)  # the model wakes; g2's requests go through
            return answered, waited, await kept

        answered, waited, kept = asyncio.run(scenario())
        print(f"{how}: the stopped gateway's held clients answered within {waited:.2f}s")
        assert waited < CLIENT_TIMEOUT / 2
        for _, status, code in answered:
            if how == "SIGKILL":  # the socket closes with the process
                assert status in ("RemoteProtocolError", "ReadError"), (status, code)
            else:  # answered before the process goes
                assert (status, code) == (503, "shutting_down")
        assert [r for r in kept if r[1] != 200] == []
        wait_phase(kube, namespace, "held", "Awake", timeout=30)
        assert sim_state(kube, namespace, "held")["transfers"]["weights_to_gpu"] == 1
    finally:
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()
        g1.stop()
        g2.stop()
    assert violations(kubelet_admin, namespace) == []
