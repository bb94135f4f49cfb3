"""VLLMClient: what goes on the wire, and typed failures.

The `client` fixture runs each test twice: through an injected httpx client on an in-memory
transport, and over the production path (h1, keep-alive HTTP/1.1) against a real loopback
server that hands each request, as it arrived on the wire, to the same fake.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from aiohttp import web

from vllm_sleep.vllm import (
    VLLMClient,
    VLLMHTTPError,
    VLLMProtocolError,
    VLLMUnreachable,
    VLLMUnsupported,
)

Handler = Callable[[httpx.Request], httpx.Response]


class FakeVLLM:
    def __init__(self, version: str | None = "0.33.0") -> None:
        self.version = version
        self.calls: list[httpx.Request] = []
        self.sleeping = False
        self.override: dict[str, httpx.Response] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        path = request.url.path
        if path in self.override:
            return self.override[path]
        if path == "/version":
            if self.version is None:
                return httpx.Response(404, json={"detail": "Not Found"})
            return httpx.Response(200, json={"version": self.version})
        if path == "/is_sleeping":
            return httpx.Response(200, json={"is_sleeping": self.sleeping})
        return httpx.Response(200)  # ≤0.31: empty 200 for /sleep, /wake_up, ...

    def sent(self, path: str) -> list[httpx.Request]:
        return [r for r in self.calls if r.url.path == path]


@pytest.fixture
def fake() -> FakeVLLM:
    return FakeVLLM()


async def serve(fake: FakeVLLM) -> web.AppRunner:
    """A loopback server answering with `fake`, which sees each request as it came on the wire
    (raw target, headers, body)."""

    async def handle(request: web.Request) -> web.Response:
        sent = httpx.Request(
            request.method,
            "http://vllm:8001" + request.raw_path,
            headers=list(request.raw_headers),
            content=await request.read(),
        )
        answer = fake(sent)
        await answer.aread()
        headers = {"content-type": answer.headers.get("content-type", "application/octet-stream")}
        return web.Response(status=answer.status_code, body=answer.content, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.fixture(params=["httpx-mock", "h1"])
async def client(fake: FakeVLLM, request: pytest.FixtureRequest) -> AsyncIterator[VLLMClient]:
    if request.param == "httpx-mock":
        http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
        yield VLLMClient("http://vllm:8001/", http=http)
        await http.aclose()
        return
    runner = await serve(fake)
    port = runner.addresses[0][1]
    async with VLLMClient(f"http://127.0.0.1:{port}/") as c:
        yield c
    await runner.cleanup()


async def test_sleep_sends_level_and_mode_in_the_query_and_no_body(
    client: VLLMClient, fake: FakeVLLM
) -> None:
    await client.sleep(2, mode="wait")
    (req,) = fake.sent("/sleep")
    assert req.method == "POST"
    assert req.url.params.multi_items() == [("level", "2"), ("mode", "wait")]
    assert req.content == b""


@pytest.mark.parametrize("version", ["0.16.0", None])
async def test_mode_is_not_sent_to_old_or_unknown_versions(version: str | None) -> None:
    fake = FakeVLLM(version)
    async with VLLMClient(
        "http://v", http=httpx.AsyncClient(transport=httpx.MockTransport(fake))
    ) as c:
        await c.sleep(1, mode="wait")
    (req,) = fake.sent("/sleep")
    assert req.url.params.multi_items() == [("level", "1")]


async def test_level_zero_is_refused_before_017() -> None:
    fake = FakeVLLM("0.16.0")
    async with VLLMClient(
        "http://v", http=httpx.AsyncClient(transport=httpx.MockTransport(fake))
    ) as c:
        with pytest.raises(VLLMUnsupported):
            await c.sleep(0)
    assert not fake.sent("/sleep")


async def test_bad_level_is_a_value_error(client: VLLMClient) -> None:
    with pytest.raises(ValueError):
        await client.sleep(3)


async def test_wake_up_tags_are_a_repeated_key(client: VLLMClient, fake: FakeVLLM) -> None:
    await client.wake_up(["weights", "kv_cache"])
    await client.wake_up()
    first, second = fake.sent("/wake_up")
    assert str(first.url).endswith("/wake_up?tags=weights&tags=kv_cache")
    assert second.url.query == b""


async def test_reload_weights_is_a_collective_rpc(client: VLLMClient, fake: FakeVLLM) -> None:
    await client.reload_weights()
    (req,) = fake.sent("/collective_rpc")
    assert json.loads(req.content) == {"method": "reload_weights"}


async def test_reload_weights_needs_0_10_2() -> None:
    fake = FakeVLLM("0.10.1")
    async with VLLMClient(
        "http://v", http=httpx.AsyncClient(transport=httpx.MockTransport(fake))
    ) as c:
        with pytest.raises(VLLMUnsupported):
            await c.reload_weights()


async def test_is_sleeping_parses_and_validates(client: VLLMClient, fake: FakeVLLM) -> None:
    fake.sleeping = True
    assert await client.is_sleeping() is True
    fake.override["/is_sleeping"] = httpx.Response(200, text="")
    with pytest.raises(VLLMProtocolError):
        await client.is_sleeping()
    fake.override["/is_sleeping"] = httpx.Response(200, json={"is_sleeping": "yes"})
    with pytest.raises(VLLMProtocolError):
        await client.is_sleeping()


async def test_http_errors_carry_status_and_body(client: VLLMClient, fake: FakeVLLM) -> None:
    fake.override["/sleep"] = httpx.Response(500, text="")
    with pytest.raises(VLLMHTTPError) as info:
        await client.sleep(1)
    assert (info.value.status, info.value.body, info.value.path) == (500, "", "/sleep")
    fake.override["/wake_up"] = httpx.Response(400, json={"error": {"message": "bad"}})
    with pytest.raises(VLLMHTTPError) as info:
        await client.wake_up()
    assert info.value.status == 400 and "bad" in info.value.body


async def test_transport_errors_are_unreachable_and_health_is_false() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with VLLMClient(
        "http://v", http=httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    ) as c:
        assert await c.health() is False
        with pytest.raises(VLLMUnreachable):
            await c.is_sleeping()


async def test_health_is_liveness_only(client: VLLMClient, fake: FakeVLLM) -> None:
    fake.sleeping = True
    assert await client.health() is True
    fake.override["/health"] = httpx.Response(503)
    assert await client.health() is False


async def test_version_is_cached_and_404_means_unknown(fake: FakeVLLM) -> None:
    fake.version = None
    async with VLLMClient(
        "http://v", http=httpx.AsyncClient(transport=httpx.MockTransport(fake))
    ) as c:
        assert await c.version() is None
        assert await c.version() is None
        assert len(fake.sent("/version")) == 1
        c.forget_version()
        fake.version = "0.12.1"
        assert str(await c.version()) == "0.12.1"


async def test_sleep_state_from_metrics(client: VLLMClient, fake: FakeVLLM) -> None:
    fake.override["/metrics"] = httpx.Response(
        200,
        text='vllm:engine_sleep_state{engine="0",model_name="m",sleep_state="awake"} 0.0\n'
        'vllm:engine_sleep_state{engine="0",model_name="m",sleep_state="weights_offloaded"} 1.0\n',
    )
    gauge = await client.sleep_state_from_metrics()
    assert gauge is not None and gauge.level == 1
    fake.override["/metrics"] = httpx.Response(500)
    assert await client.sleep_state_from_metrics() is None


@pytest.mark.parametrize(
    "url", ["https://vllm.example:8001", "vllm:8001", "http://", "http://v:8001/?x=1"]
)
def test_a_base_url_the_pod_path_cannot_reach_is_refused_at_once(url: str) -> None:
    # vLLM listens on the pod's loopback in plain http; anything else goes through an
    # injected client, never silently through the wrong one.
    with pytest.raises(ValueError, match="vLLM base URL"):
        VLLMClient(url)


async def test_an_injected_client_takes_any_scheme(fake: FakeVLLM) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        c = VLLMClient("https://vllm.example:8001", http=http)
        assert await c.is_sleeping() is False
    assert str(fake.calls[0].url) == "https://vllm.example:8001/is_sleeping"
