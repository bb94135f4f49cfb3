"""The gateway's public surface against vLLM's route list (api/routes.py): every inference
route is routed by the model it names (a JSON `model`, or an audio upload's form field), with
the same hold, API keys and accounting as chat; what names no model is refused on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from vllm_sleep.api.routes import GATEWAY_ROUTES, ModelField
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource

from .test_gateway_hold import Upstream, queued, until

pytestmark = pytest.mark.contract

JSON_ROUTES = sorted(p for p, r in GATEWAY_ROUTES.items() if r.model_field is ModelField.JSON)
FORM_ROUTES = sorted(p for p, r in GATEWAY_ROUTES.items() if r.model_field is ModelField.FORM)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream("127.0.7.31").start()
    yield up
    await up.stop()


@pytest.fixture
def source(upstream: Upstream) -> StaticSource:
    s = StaticSource("team")
    s.add_model("m", [upstream.url])
    return s


@pytest.fixture
async def gateway(source: StaticSource) -> AsyncIterator[Gateway]:
    cfg = GatewayConfig(listen_host="127.0.7.130", port=0)
    async with Gateway(cfg, source, MemoryDemand()) as g:
        yield g


def audio(model: str | None, *more: tuple[str, str]) -> dict[str, object]:
    data = dict(more)
    if model is not None:
        data["model"] = model
    return {"files": {"file": ("a.wav", b"RIFF" + b"\0" * 4000, "audio/wav")}, "data": data}


@pytest.mark.parametrize("path", JSON_ROUTES)
async def test_a_json_route_is_routed_by_its_model_to_the_same_path(
    gateway: Gateway, upstream: Upstream, http: httpx.AsyncClient, path: str
) -> None:
    resp = await http.post(gateway.url + path, json={"model": "m", "input": "x"})
    assert resp.status_code == 200 and resp.json()["path"] == path
    missing = await http.post(gateway.url + path, json={"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path", FORM_ROUTES)
async def test_an_audio_upload_is_routed_by_its_model_form_field(
    gateway: Gateway, upstream: Upstream, http: httpx.AsyncClient, path: str
) -> None:
    resp = await http.post(gateway.url + path, **audio("m", ("language", "en")))  # type: ignore[arg-type]
    assert resp.status_code == 200 and resp.json()["path"] == path
    missing = await http.post(gateway.url + path, **audio("nope"))  # type: ignore[arg-type]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert upstream.received == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"model": "m"}}, 400, "invalid_body"),  # not a form
        (audio(None, ("language", "en")), 400, "missing_model"),
        (audio(""), 400, "invalid_model"),
        (audio("m" * 600), 400, "invalid_model"),
        (
            {
                "content": b"--b\r\nContent-Disposition: form-data; name=model\r\n\r\nm",
                "headers": {"Content-Type": "multipart/form-data"},
            },
            400,
            "invalid_body",  # no boundary
        ),
        (
            {
                "content": b"garbage without any boundary line",
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
            400,
            "invalid_body",
        ),
        (
            {
                "content": b"".join(
                    b"--b\r\nContent-Disposition: form-data; name=f%d\r\n\r\nx\r\n" % i
                    for i in range(1001)
                )
                + b"--b--\r\n",
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
            413,
            "body_too_complex",
        ),
    ],
    ids=["json", "no-model", "empty-model", "long-model", "no-boundary", "malformed", "parts"],
)
async def test_a_bad_audio_form_is_refused_in_openai_shape(
    gateway: Gateway,
    upstream: Upstream,
    http: httpx.AsyncClient,
    kwargs: dict[str, object],
    status: int,
    code: str,
) -> None:
    resp = await http.post(gateway.url + FORM_ROUTES[0], **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    assert upstream.received == 0


async def test_the_last_model_field_of_a_form_wins_as_in_starlette(
    gateway: Gateway, source: StaticSource, upstream: Upstream, http: httpx.AsyncClient
) -> None:
    body = (
        b"--b\r\nContent-Disposition: form-data; name=model\r\n\r\nnope\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="model"\r\n\r\nxx\r\n'
        b"--b\r\nContent-Disposition: form-data; name=model\r\n\r\nm\r\n--b--\r\n"
    )
    resp = await http.post(
        gateway.url + FORM_ROUTES[0],
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert resp.status_code == 200 and upstream.received == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/responses/resp_123"), ("POST", "/v1/responses/resp_123/cancel")],
)
async def test_a_stored_response_is_refused_on_purpose(
    gateway: Gateway, upstream: Upstream, http: httpx.AsyncClient, method: str, path: str
) -> None:
    resp = await http.request(method, gateway.url + path)
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert err["code"] == "not_routed" and "replica that created it" in err["message"]
    assert upstream.received == 0


@pytest.mark.parametrize("path", ["/pooling", "/inference/v1/generate", "/v2/rerank"])
async def test_routes_outside_v1_need_the_api_key_too(
    source: StaticSource, upstream: Upstream, http: httpx.AsyncClient, tmp_path: Path, path: str
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-one\n")
    cfg = GatewayConfig(listen_host="127.0.7.131", port=0, api_keys_file=str(keys))
    async with Gateway(cfg, source, MemoryDemand()) as g:
        refused = await http.post(g.url + path, json={"model": "m"})
        assert refused.status_code == 401 and upstream.received == 0
        auth = {"Authorization": "Bearer sk-one"}
        ok = await http.post(g.url + path, json={"model": "m"}, headers=auth)
        assert ok.status_code == 200 and upstream.received == 1
        text = (await http.get(g.url + "/metrics")).text
        assert 'vllm_sleep_gateway_requests_total{code="200",model="m"} 1.0' in text


async def test_a_pooling_request_for_an_asleep_model_is_held_and_woken_like_chat(
    gateway: Gateway, source: StaticSource, upstream: Upstream, http: httpx.AsyncClient
) -> None:
    source.set_awake("m", False)
    task = asyncio.create_task(http.post(gateway.url + "/score", json={"model": "m"}))
    await until(lambda: queued(gateway) == 1)
    assert upstream.received == 0
    source.set_awake("m", True)
    assert (await task).status_code == 200 and upstream.received == 1
