"""Request bodies as vLLM reads them: uvicorn and FastAPI never decompress, so a gzip body is
bytes that are not UTF-8 (a 400 on the OpenAI routes, where FastAPI parses the body; an
unhandled exception on the dev routes that only catch JSONDecodeError)."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest

from vllm_sleep.testing.sim import EngineHost
from vllm_sleep.testing.sim.testkit import start

pytestmark = pytest.mark.contract

GZIP = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
COMPLETION = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2}).encode()


@pytest.fixture(params=["0.34", "0.33", "legacy"])
async def client(host: EngineHost, request: pytest.FixtureRequest) -> httpx.AsyncClient:
    e = await start(host, "m", env={"VLLM_SIM_PROFILE": request.param})
    c = httpx.AsyncClient(base_url=e.url, timeout=10)
    c.profile = request.param  # type: ignore[attr-defined]
    return c


@pytest.mark.parametrize(
    "body", [gzip.compress(COMPLETION), b"\x1f\x8b not really gzip"], ids=["gzip", "bad-gzip"]
)
async def test_gzip_inference_body_is_a_400_parse_error(
    client: httpx.AsyncClient, body: bytes
) -> None:
    async with client:
        r = await client.post("/v1/completions", content=body, headers=GZIP)
    assert r.status_code == 400
    if client.profile == "legacy":  # type: ignore[attr-defined]
        assert r.json() == {"detail": "There was an error parsing the body"}
    else:
        err = r.json()["error"]
        assert (err["message"], err["type"], err["code"]) == (
            "There was an error parsing the body",
            "Bad Request",
            400,
        )


async def test_content_encoding_is_ignored_on_a_plain_body(client: httpx.AsyncClient) -> None:
    async with client:
        r = await client.post("/v1/completions", content=COMPLETION, headers=GZIP)
    assert r.status_code == 200  # nobody decodes, so a plain JSON body just works


async def test_gzip_body_on_collective_rpc_escapes_as_a_500(client: httpx.AsyncClient) -> None:
    body = gzip.compress(b'{"method": "reload_weights"}')
    async with client:
        r = await client.post("/collective_rpc", content=body, headers=GZIP)
        assert (await client.get("/health")).status_code == 200  # the server survives it
    assert r.status_code == 500
    if client.profile == "legacy":  # type: ignore[attr-defined]
        assert r.text == "Internal Server Error"
    else:
        assert r.json()["error"]["type"] == "InternalServerError"
