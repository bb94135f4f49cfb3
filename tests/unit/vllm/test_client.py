"""VLLMClient against an in-memory transport: what goes on the wire, and typed failures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

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


@pytest.fixture
async def client(fake: FakeVLLM) -> AsyncIterator[VLLMClient]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    yield VLLMClient("http://vllm:8001/", http=http)
    await http.aclose()


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


def test_plain_http_builds_no_verifying_tls_context_https_keeps_one() -> None:
    # Loading the CA bundle cost ~0.15 s of CPU per agent; vLLM in the pod is plain http.
    import ssl

    from vllm_sleep.vllm.client import VLLMClient

    def mode(url: str) -> ssl.VerifyMode:
        pool = VLLMClient(url)._http._transport._pool  # type: ignore[attr-defined]
        return pool._ssl_context.verify_mode  # type: ignore[no-any-return]

    assert mode("http://127.0.0.1:8001") == ssl.CERT_NONE
    assert mode("https://vllm.example:8001") == ssl.CERT_REQUIRED
