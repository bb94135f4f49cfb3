"""Hypothesis fuzz: 1,000 malformed requests over raw sockets, all 4xx, gateway still serves.

The gateway runs on its own event-loop thread so hypothesis can drive it synchronously. Its
one model forwards to an upstream that answers 400 (as vLLM does for junk), so a fuzzed body
that happens to name the model is still a 4xx, now from the upstream.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource

pytestmark = pytest.mark.contract

PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/sleep",
    "/wake_up",
    "/collective_rpc",
    "/v1/../sleep",
    "/metrics/../sleep",
    "/",
]
METHODS = ["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW", "P O S T"]


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, int]]:
    lt = LoopThread()

    async def junk(_: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "bad", "code": 400}}, status=400)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def setup() -> tuple[web.AppRunner, Gateway]:
        app = web.Application(client_max_size=1 << 24)
        app.router.add_post("/v1/chat/completions", ok)
        app.router.add_route("*", "/{tail:.*}", junk)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.9.1", 0).start()
        source = StaticSource("team")
        source.add_model("m", [f"http://127.0.9.1:{runner.addresses[0][1]}"])
        gw = Gateway(
            GatewayConfig(listen_host="127.0.9.100", port=0, max_body_bytes=2048),
            source,
            MemoryDemand(),
        )
        await gw.start()
        return runner, gw

    runner, gw = lt.run(setup())
    yield "127.0.9.100", gw.port
    lt.run(gw.stop())
    lt.run(runner.cleanup())
    lt.close()


def exchange(addr: tuple[str, int], raw: bytes) -> int:
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(raw)  # no half-close: the gateway, like nginx, takes EOF as the client leaving
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0].split()
    assert len(line) >= 2, data[:200]
    return int(line[1])


json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_junk.map(lambda d: json.dumps(d).encode()),
    json_junk.map(lambda d: json.dumps({"model": d}).encode()),
    st.just(b"x" * 5000),  # over --max-body-bytes
    st.sampled_from([b"{", b'{"model": "m"', b"\xff\xfe\x00", b"[" * 5000, b'{"model": "nope"}']),
)
requests = st.tuples(
    st.sampled_from(METHODS),
    st.one_of(
        st.sampled_from(PATHS),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40).map(
            lambda p: "/" + p
        ),
    ),
    bodies,
    st.sampled_from(["application/json", "text/plain", "", "multipart/form-data; boundary=x"]),
    st.sampled_from(
        [
            "",
            "Content-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked\r\n",
            "Expect: 100-continue\r\n",
        ]
    ),
)


def build(method: str, path: str, body: bytes, ctype: str, extra: str) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    if "chunked" in extra:
        framed = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" if body else b"0\r\n\r\n"
        return (head + extra + "\r\n").encode() + framed
    head += f"Content-Length: {len(body)}\r\n" + extra
    return (head + "\r\n").encode() + body


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests)
def test_malformed_requests_are_all_4xx(
    served: tuple[str, int], req: tuple[str, str, bytes, str, str]
) -> None:
    method, path = req[0], req[1]
    assume(not (method == "GET" and path in ("/v1/models", "/metrics")))  # well-formed reads
    status = exchange(served, build(*req))
    assert 400 <= status < 500, (status, req)


def test_gateway_still_serves_after_the_fuzz(served: tuple[str, int]) -> None:
    body = json.dumps({"model": "m", "messages": []}).encode()
    assert (
        exchange(served, build("POST", "/v1/chat/completions", body, "application/json", "")) == 200
    )
