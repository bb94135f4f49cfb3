"""The gateway's HTTP surface: routing, OpenAI errors, SSE pass-through, auth, and a fuzz.

Real Gateway + StaticSource in front of a small aiohttp upstream over loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource

pytestmark = pytest.mark.contract

HOST = "127.0.8.100"


class SseUpstream:
    """Streams two tokens; the last one only after the test saw the first through the gateway."""

    def __init__(self) -> None:
        self.release_last = asyncio.Event()
        self.finished = False
        self.headers: dict[str, str] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.headers = dict(request.headers)
        if not body.get("stream"):
            return web.json_response({"object": "chat.completion", "model": body["model"]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"token": "first"}\n\n')
        await self.release_last.wait()
        await resp.write(b'data: {"token": "last"}\n\ndata: [DONE]\n\n')
        self.finished = True
        await resp.write_eof()
        return resp

    async def start(self) -> SseUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.8.1", 0).start()
        self.url = f"http://127.0.8.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[SseUpstream]:
    u = await SseUpstream().start()
    yield u
    u.release_last.set()
    await u.stop()


@pytest.fixture
async def gateway(upstream: SseUpstream) -> AsyncIterator[Gateway]:
    source = StaticSource("team")
    source.add_model("llama", [upstream.url])
    source.add_model("sleepy", [upstream.url], awake=False, served_name="sleepy-served")
    async with Gateway(
        GatewayConfig(listen_host=HOST, port=0, max_body_bytes=4096), source, MemoryDemand()
    ) as g:
        yield g


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code


async def test_sse_first_chunk_arrives_before_the_last_token(
    gateway: Gateway, upstream: SseUpstream, http: httpx.AsyncClient
) -> None:
    body = {"model": "llama", "messages": [], "stream": True}
    async with http.stream("POST", gateway.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        chunks = resp.aiter_raw()
        first = await anext(chunks)
        assert b"first" in first and not upstream.finished
        upstream.release_last.set()
        rest = b"".join([c async for c in chunks])
    assert rest.endswith(b"data: [DONE]\n\n") and upstream.finished


async def test_embeddings_pass_through(gateway: Gateway, http: httpx.AsyncClient) -> None:
    resp = await http.post(gateway.url + "/v1/embeddings", json={"model": "llama", "input": "x"})
    assert resp.status_code == 200 and resp.json()["model"] == "llama"


async def test_models_lists_every_model_with_its_state(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    data = (await http.get(gateway.url + "/v1/models")).json()
    assert data["object"] == "list"
    by_id = {m["id"]: m for m in data["data"]}
    assert set(by_id) == {"llama", "sleepy-served"}
    assert by_id["llama"]["state"] == "Awake" and by_id["llama"]["awake_replicas"] == 1
    assert by_id["sleepy-served"]["state"] == "Asleep"
    assert by_id["sleepy-served"]["awake_replicas"] == 0


async def test_unknown_model_is_404_and_lists_nothing(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    resp = await http.post(gateway.url + "/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert_openai_error(resp, 404, "model_not_found")
    assert "llama" not in resp.text and "sleepy" not in resp.text


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"messages": []}', 400, "missing_model"),
        (b'{"model": ["llama"]}', 400, "invalid_model"),
        (b"[]", 400, "invalid_body"),
        (b'{"model": "llama", "pad": "' + b"x" * 5000 + b'"}', 413, "body_too_large"),
    ],
)
async def test_bad_bodies(
    gateway: Gateway, http: httpx.AsyncClient, body: bytes, status: int, code: str
) -> None:
    resp = await http.post(gateway.url + "/v1/chat/completions", content=body)
    assert_openai_error(resp, status, code)


@pytest.mark.parametrize(
    "path",
    [
        "/sleep?level=1",
        "/wake_up",
        "/collective_rpc",
        "/is_sleeping",
        "/reset_prefix_cache",
        "/v1/../sleep",
        "/v1/chat/completions/../../wake_up",
        "/%73leep",
        "/v1/unknown",
        "/health",
    ],
)
async def test_admin_and_unknown_paths_are_404(
    gateway: Gateway, http: httpx.AsyncClient, path: str
) -> None:
    resp = await http.post(httpx.URL(gateway.url + path), json={"model": "llama"})
    assert_openai_error(resp, 404)


async def test_wrong_method_is_405(gateway: Gateway, http: httpx.AsyncClient) -> None:
    assert_openai_error(await http.get(gateway.url + "/v1/chat/completions"), 405)
    assert_openai_error(await http.post(gateway.url + "/v1/models"), 405)


async def test_gzip_request_body_is_decoded_before_forwarding(
    gateway: Gateway, upstream: SseUpstream, http: httpx.AsyncClient
) -> None:
    import gzip

    raw = gzip.compress(json.dumps({"model": "llama", "messages": []}).encode())
    resp = await http.post(
        gateway.url + "/v1/chat/completions", content=raw, headers={"Content-Encoding": "gzip"}
    )
    assert resp.status_code == 200, resp.text
    assert "Content-Encoding" not in upstream.headers


async def test_api_keys(upstream: SseUpstream, http: httpx.AsyncClient, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nsk-one\n\nsk-two\n")
    source = StaticSource("team")
    source.add_model("llama", [upstream.url])
    cfg = GatewayConfig(listen_host=HOST, port=0, api_keys_file=str(keys))
    async with Gateway(cfg, source, MemoryDemand()) as g:
        body = {"model": "llama", "messages": []}
        url = g.url + "/v1/chat/completions"
        assert_openai_error(await http.post(url, json=body), 401, "invalid_api_key")
        bad = {"Authorization": "Bearer sk-three"}
        assert_openai_error(await http.get(g.url + "/v1/models", headers=bad), 401)
        good = {"Authorization": "Bearer sk-two"}
        assert (await http.post(url, json=body, headers=good)).status_code == 200
        lower = {"Authorization": "bearer  sk-one"}  # the scheme is case-insensitive
        assert (await http.post(url, json=body, headers=lower)).status_code == 200
        for wrong in ("Basic sk-one", "Bearer", "sk-one", "Bearersk-one"):
            resp = await http.post(url, json=body, headers={"Authorization": wrong})
            assert_openai_error(resp, 401, "invalid_api_key")
        assert "Authorization" not in upstream.headers  # keys stay at the edge
        assert (await http.get(g.url + "/healthz")).status_code == 200


async def test_readyz_and_metrics(gateway: Gateway, http: httpx.AsyncClient) -> None:
    assert (await http.get(gateway.url + "/readyz")).status_code == 200
    await http.post(gateway.url + "/v1/chat/completions", json={"model": "nope"})
    text = (await http.get(gateway.url + "/metrics")).text
    assert 'vllm_sleep_gateway_requests_total{code="404",model="_unknown"}' in text
    assert "nope" not in text  # client-chosen names never become label values
