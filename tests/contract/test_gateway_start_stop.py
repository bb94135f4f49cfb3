"""The gateway over real loopback HTTP: readiness before the first list, start cut short, stop
with held requests, SIGINT; and the surface details Allow on 405 and gzip members relayed."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.gateway import main as gateway_main
from vllm_sleep.gateway.sources import BackendSink

pytestmark = pytest.mark.contract

HOST = "127.0.8.120"
UP_HOST = "127.0.8.121"
CHAT = {"model": "m", "messages": []}


class BlockedSource(StaticSource):
    """A StaticSource whose first list arrives only when `release` is set (a slow API)."""

    def __init__(self) -> None:
        super().__init__("team")
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def start(self, sink: BackendSink) -> None:
        self.entered.set()
        await self.release.wait()
        await super().start(sink)


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"echo": await request.json()})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, UP_HOST, 0).start()
    yield f"http://{UP_HOST}:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_405_on_a_get_route_allows_head_too(upstream: str, http: httpx.AsyncClient) -> None:
    source = StaticSource("team")
    source.add_model("m", [upstream])
    async with Gateway(GatewayConfig(listen_host=HOST, port=0), source, MemoryDemand()) as g:
        for path in ("/v1/models", "/metrics", "/healthz", "/readyz"):
            resp = await http.request("OPTIONS", g.url + path)
            assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
            assert resp.headers["allow"] == "GET, HEAD"
            assert (await http.head(g.url + path)).status_code == 200


async def test_before_the_first_list_models_are_503_not_ready_not_404(
    upstream: str, http: httpx.AsyncClient
) -> None:
    source = BlockedSource()
    source.add_model("m", [upstream])
    gw = Gateway(GatewayConfig(listen_host=HOST, port=0), source, MemoryDemand())
    starting = asyncio.create_task(gw.start())
    try:
        await source.entered.wait()  # listening (healthz answers), no list yet
        assert (await http.get(gw.url + "/healthz")).status_code == 200
        resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "not_ready" and resp.headers["retry-after"]
        resp = await http.get(gw.url + "/v1/models")  # not an empty list
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "not_ready"
        source.release.set()
        await starting
        assert (await http.post(gw.url + "/v1/chat/completions", json=CHAT)).status_code == 200
        resp = await http.post(gw.url + "/v1/chat/completions", json={"model": "nope"})
        assert resp.status_code == 404  # once listed, an unknown model is unknown
    finally:
        source.release.set()
        await starting
        await gw.stop()


async def test_a_request_held_at_stop_gets_a_clean_503(
    upstream: str, http: httpx.AsyncClient
) -> None:
    source = StaticSource("team")
    source.add_model("m", [upstream], awake=False)  # held in the gateway's own queue
    demanded = asyncio.Event()
    demand = MemoryDemand(on_signal=lambda _spec: demanded.set())  # the request is held
    gw = Gateway(GatewayConfig(listen_host=HOST, port=0), source, demand)
    await gw.start()
    try:
        held = asyncio.create_task(http.post(gw.url + "/v1/chat/completions", json=CHAT))
        await demanded.wait()
        stopping = asyncio.create_task(gw.stop())
        resp = await held
        await stopping
    finally:
        await gw.stop()
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "shutting_down" and resp.headers["retry-after"]
    assert not gw.ready
    held_count = gw.metrics.registry.get_sample_value(
        "vllm_sleep_gateway_hold_seconds_count", {"outcome": "shutdown"}
    )
    assert held_count == 1  # not counted as a client that left


async def test_a_start_cut_short_releases_its_port(upstream: str) -> None:
    source = BlockedSource()
    gw = Gateway(GatewayConfig(listen_host=HOST, port=0), source, MemoryDemand())
    starting = asyncio.create_task(gw.start())
    await source.entered.wait()
    port = gw.port
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    with socket.socket() as s:
        assert s.connect_ex((HOST, port)) != 0  # nobody listens any more


async def test_sigint_before_the_first_list_stops_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = BlockedSource()

    class Api:
        closed = False

        async def close(self) -> None:
            Api.closed = True

    async def kube_client(_path: str | None) -> Api:
        return Api()

    monkeypatch.setattr(gateway_main, "kube_client", kube_client)
    monkeypatch.setattr(gateway_main, "KubernetesSource", lambda *a, **k: source)
    monkeypatch.setattr(gateway_main, "LeaseDemand", lambda *a: MemoryDemand())
    run = asyncio.create_task(gateway_main._run(GatewayConfig(listen_host=HOST, port=0)))
    await source.entered.wait()  # the API never lists: start would wait forever
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(run, 30)  # a hang guard, not a timing assertion
    assert Api.closed


async def test_concatenated_gzip_members_reach_the_replica_whole(
    upstream: str, http: httpx.AsyncClient
) -> None:
    source = StaticSource("team")
    source.add_model("m", [upstream])
    async with Gateway(GatewayConfig(listen_host=HOST, port=0), source, MemoryDemand()) as g:
        raw = json.dumps(CHAT).encode()
        body = gzip.compress(raw[:7]) + gzip.compress(raw[7:])
        resp = await http.post(
            g.url + "/v1/chat/completions", content=body, headers={"Content-Encoding": "gzip"}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["echo"] == CHAT
        resp = await http.post(
            g.url + "/v1/chat/completions",
            content=gzip.compress(raw) + b"trailing",
            headers={"Content-Encoding": "gzip"},
        )
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_body"
