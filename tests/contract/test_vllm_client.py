"""VLLMClient's production path (keep-alive HTTP/1.1 over h1) against real loopback servers:
each failure maps to its typed error, connections are reused, and a sleep/wake cycle works
against the simulator."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from vllm_sleep.testing.sim import EngineHost
from vllm_sleep.testing.sim.testkit import start
from vllm_sleep.vllm import (
    VLLMClient,
    VLLMHTTPError,
    VLLMProtocolError,
    VLLMTimeout,
    VLLMUnreachable,
)

pytestmark = pytest.mark.contract

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """A tiny aiohttp app on 127.0.0.1 that records what reached it."""

    def __init__(self, keepalive: float = 75.0) -> None:
        self.app = web.Application()
        self.keepalive = keepalive
        self.seen: list[tuple[str, str, bytes]] = []  # method, raw target, body
        self.peers: set[int] = set()  # client ports: one per connection
        self.runner: web.AppRunner | None = None
        self.url = ""

    def route(self, method: str, path: str, handler: Route) -> None:
        async def recorded(request: web.Request) -> web.StreamResponse:
            self.seen.append((request.method, request.raw_path, await request.read()))
            peer = request.transport.get_extra_info("peername") if request.transport else None
            if peer:
                self.peers.add(peer[1])
            return await handler(request)

        self.app.router.add_route(method, path, recorded)

    async def start(self) -> None:
        self.runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=self.keepalive, shutdown_timeout=0.1
        )
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def answer(status: int = 200, body: bytes = b"", delay: float = 0.0) -> Route:
    async def handle(_: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, body=body, content_type="application/json")

    return handle


async def never(_: web.Request) -> web.Response:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    yield s
    await s.stop()


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connect_is_unreachable_not_a_timeout() -> None:
    async with VLLMClient(f"http://127.0.0.1:{free_port()}") as c:
        with pytest.raises(VLLMUnreachable) as info:
            await c.is_sleeping()
        assert not isinstance(info.value, VLLMTimeout)
        assert info.value.path == "/is_sleeping"
        assert await c.health() is False


async def test_no_answer_within_the_timeout_is_vllm_timeout(server: Server) -> None:
    server.route("GET", "/is_sleeping", never)
    await server.start()
    async with VLLMClient(server.url, timeout=0.2) as c:
        with pytest.raises(VLLMTimeout) as info:
            await c.is_sleeping()
    assert info.value.path == "/is_sleeping"


async def test_transitions_get_the_long_timeout_and_drain_its_bound(server: Server) -> None:
    # vLLM answers a transition after 1 s: far past the short timeout, far below the long
    # one; a drain waits only for its own bound.
    server.route("GET", "/version", answer(body=b'{"version":"0.33.0"}'))
    server.route("POST", "/sleep", answer(delay=1.0))
    server.route("POST", "/wake_up", answer(delay=1.0))
    server.route("GET", "/is_sleeping", answer(body=b'{"is_sleeping":true}', delay=1.0))
    await server.start()
    async with VLLMClient(server.url, timeout=0.4, transition_timeout=30.0) as c:
        await c.sleep(1, mode="wait")
        await c.wake_up(["weights", "kv_cache"])
        with pytest.raises(VLLMTimeout):
            await c.is_sleeping()
        assert await c.drain(0.2) is False
        assert await c.drain(30.0) is True


async def test_a_non_2xx_answer_is_an_http_error_with_its_body(server: Server) -> None:
    body = b'{"error":{"message":"Call to `sleep` method failed: boom"}}'
    server.route("GET", "/version", answer(body=b'{"version":"0.33.0"}'))
    server.route("POST", "/sleep", answer(500, body))
    server.route("GET", "/health", answer(503))
    await server.start()
    async with VLLMClient(server.url) as c:
        with pytest.raises(VLLMHTTPError) as info:
            await c.sleep(1)
        assert (info.value.status, info.value.body, info.value.path) == (
            500,
            body.decode(),
            "/sleep",
        )
        assert await c.health() is False


async def test_a_connection_closed_mid_answer_is_unreachable(server: Server) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-length": "100"})
        await resp.prepare(request)
        await resp.write(b'{"is_sleep')
        assert request.transport is not None
        request.transport.close()
        return resp

    server.route("GET", "/is_sleeping", cut)
    await server.start()
    async with VLLMClient(server.url) as c:
        with pytest.raises(VLLMUnreachable) as info:
            await c.is_sleeping()
    assert not isinstance(info.value, VLLMTimeout)


async def test_a_2xx_body_of_the_wrong_shape_is_a_protocol_error(server: Server) -> None:
    server.route("GET", "/is_sleeping", answer(body=b""))
    await server.start()
    async with VLLMClient(server.url) as c:
        with pytest.raises(VLLMProtocolError):
            await c.is_sleeping()


async def test_the_wire_query_string_repeated_tags_and_bodies(server: Server) -> None:
    server.route("GET", "/version", answer(body=b'{"version":"0.33.0"}'))
    for path in ("/sleep", "/wake_up", "/collective_rpc"):
        server.route("POST", path, answer())
    await server.start()
    async with VLLMClient(server.url + "/") as c:
        await c.sleep(2, mode="wait")
        await c.wake_up(["weights"])
        await c.wake_up(["weights", "kv_cache"])
        await c.wake_up()
        await c.reload_weights()
    assert server.seen[1:] == [
        ("POST", "/sleep?level=2&mode=wait", b""),
        ("POST", "/wake_up?tags=weights", b""),
        ("POST", "/wake_up?tags=weights&tags=kv_cache", b""),
        ("POST", "/wake_up", b""),
        ("POST", "/collective_rpc", b'{"method": "reload_weights"}'),
    ]


async def test_calls_reuse_one_connection(server: Server) -> None:
    server.route("GET", "/health", answer())
    server.route("GET", "/is_sleeping", answer(body=b'{"is_sleeping":false}'))
    await server.start()
    async with VLLMClient(server.url) as c:
        for _ in range(5):
            assert await c.health()
            assert await c.is_sleeping() is False
    assert len(server.seen) == 10
    assert len(server.peers) == 1


async def test_a_connection_the_server_closed_while_idle_is_not_an_error() -> None:
    server = Server(keepalive=0.05)  # the server drops idle connections at once
    server.route("GET", "/is_sleeping", answer(body=b'{"is_sleeping":true}'))
    await server.start()
    try:
        async with VLLMClient(server.url) as c:
            for _ in range(3):
                assert await c.is_sleeping() is True
                await asyncio.sleep(0.3)
    finally:
        await server.stop()
    assert len(server.peers) == 3


async def test_a_sleep_and_wake_cycle_against_the_simulator(host: EngineHost) -> None:
    engine = await start(host, "m", "--enable-sleep-mode")
    async with VLLMClient(engine.url) as c:
        assert await c.health() is True
        assert str(await c.version()).startswith("0.")
        await c.sleep(1, mode="wait")
        assert await c.is_sleeping() is True
        assert await c.health() is True  # liveness only
        gauge = await c.sleep_state_from_metrics()
        assert gauge is not None and gauge.level == 1
        await c.wake_up(["weights"])
        await c.wake_up(["kv_cache"])
        assert await c.is_sleeping() is False
        gauge = await c.sleep_state_from_metrics()
        assert gauge is not None and gauge.awake
