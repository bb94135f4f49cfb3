"""The simulator serves every route the agent forwards (api/routes.py), as vLLM does, and bodies
past aiohttp's 1 MiB default, so the large-upload path is tested end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from vllm_sleep.agent import Agent
from vllm_sleep.api.routes import GATEWAY_ROUTES, ROUTES, ModelField, RouteKind
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.server import ROUTES as SIM_ROUTES
from vllm_sleep.testing.sim.testkit import start, until

from .test_gateway_agent import TOKEN, agent_for
from .test_sim_legacy import assert_exited

pytestmark = pytest.mark.contract

MSG = [{"role": "user", "content": "hello there"}]
# A body each route accepts (vLLM's request shapes).
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": MSG, "max_tokens": 2},
    "/v1/completions": {"prompt": "hello", "max_tokens": 2},
    "/v1/embeddings": {"input": ["one", "two"]},
    "/v1/responses": {"input": "hello", "max_output_tokens": 2},
    "/v1/messages": {"messages": MSG, "max_tokens": 2},
    "/inference/v1/generate": {"token_ids": [1, 2, 3], "sampling_params": {"max_tokens": 2}},
    "/pooling": {"input": "hello"},
    "/classify": {"input": ["good", "bad"]},
    "/score": {"text_1": "q", "text_2": ["a", "b"]},
    "/v1/score": {"text_1": "q", "text_2": ["a", "b"]},
    "/rerank": {"query": "q", "documents": ["a", "b", "c"], "top_n": 2},
    "/v1/rerank": {"query": "q", "documents": ["a", "b"]},
    "/v2/rerank": {"query": "q", "documents": ["a", "b"]},
    "/tokenize": {"prompt": "hello there"},
    "/detokenize": {"tokens": [1, 2]},
    "/v1/messages/count_tokens": {"messages": MSG},
}
# What shows the answer is the route's own.
KEYS = {
    "/v1/chat/completions": "choices",
    "/v1/completions": "choices",
    "/v1/embeddings": "data",
    "/v1/responses": "output",
    "/v1/messages": "content",
    "/inference/v1/generate": "choices",
    "/pooling": "data",
    "/classify": "data",
    "/score": "data",
    "/v1/score": "data",
    "/rerank": "results",
    "/v1/rerank": "results",
    "/v2/rerank": "results",
    "/tokenize": "tokens",
    "/detokenize": "prompt",
    "/v1/messages/count_tokens": "input_tokens",
}
FORMS = sorted(p for p, r in ROUTES.items() if r.model_field is ModelField.FORM)
INFERENCE_JSON = sorted(
    p for p, r in ROUTES.items() if r.kind is RouteKind.INFERENCE and p not in FORMS
)


def audio_upload(size: int = 4000) -> dict[str, Any]:
    return {
        "files": {"file": ("a.wav", b"RIFF" + b"\0" * size, "audio/wav")},
        "data": {"model": "m", "language": "en"},
    }


@pytest.fixture
async def engine(host: EngineHost) -> SimEngine:
    env = {"VLLM_SIM_PROFILE": "0.34"}
    return await start(host, "m", "--enable-sleep-mode", "--host", "127.0.14.1", env=env)


@pytest.fixture
async def agent(engine: SimEngine) -> AsyncIterator[Agent]:
    a = await agent_for(engine, "127.0.14.2")
    yield a
    await a.stop()


@pytest.fixture
async def gateway(agent: Agent) -> AsyncIterator[Gateway]:
    source = StaticSource("team")
    source.add_model("m", [agent.public_url])
    async with Gateway(
        GatewayConfig(listen_host="127.0.14.3", port=0), source, MemoryDemand()
    ) as g:
        yield g


def test_every_route_the_agent_forwards_is_served_by_the_simulator() -> None:
    assert set(ROUTES) <= set(SIM_ROUTES)
    for path, route in ROUTES.items():
        assert route.methods <= set(SIM_ROUTES[path].methods), path
        assert (route.kind is RouteKind.INFERENCE) is SIM_ROUTES[path].inference, path
    assert set(BODIES) | set(FORMS) >= {p for p, r in ROUTES.items() if "POST" in r.methods}


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_each_route_through_gateway_or_agent_reaches_the_engine(
    gateway: Gateway, agent: Agent, http: httpx.AsyncClient, path: str
) -> None:
    # The gateway routes what names a model; the rest is the pod's own (the agent's port).
    base = gateway.url if path in GATEWAY_ROUTES else agent.public_url
    resp = await http.post(base + path, json={"model": "m", **BODIES[path]})
    assert resp.status_code == 200, resp.text
    assert KEYS[path] in resp.json()


@pytest.mark.parametrize("path", FORMS)
async def test_an_audio_upload_through_the_gateway_reaches_the_engine(
    gateway: Gateway, http: httpx.AsyncClient, path: str
) -> None:
    resp = await http.post(gateway.url + path, **audio_upload())
    assert resp.status_code == 200, resp.text
    assert isinstance(resp.json()["text"], str)


@pytest.mark.parametrize("path", ["/v1/responses/resp_abc", "/v1/responses/resp_abc/cancel"])
async def test_a_stored_response_through_the_agent_is_vllms_404(
    agent: Agent, http: httpx.AsyncClient, path: str
) -> None:
    method = "POST" if path.endswith("/cancel") else "GET"
    resp = await http.request(method, agent.public_url + path)
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == "Response with id 'resp_abc' not found."


async def test_bodies_past_one_mib_go_end_to_end(
    gateway: Gateway, engine: SimEngine, http: httpx.AsyncClient
) -> None:
    word = "a" * (3 << 20)  # 3 MiB, one simulated token
    chat = {"model": "m", "messages": [{"role": "user", "content": word}], "max_tokens": 2}
    resp = await http.post(gateway.url + "/v1/chat/completions", json=chat)
    assert resp.status_code == 200, resp.text
    resp = await http.post(gateway.url + "/v1/embeddings", json={"model": "m", "input": word})
    assert resp.status_code == 200, resp.text
    resp = await http.post(gateway.url + FORMS[0], **audio_upload(2 << 20))
    assert resp.status_code == 200, resp.text
    assert not engine.violations


@pytest.mark.parametrize("path", INFERENCE_JSON + FORMS)
async def test_a_legacy_engine_asleep_dies_on_each_inference_route(
    host: EngineHost, path: str
) -> None:
    legacy = await start(
        host, "m", "--enable-sleep-mode", "--host", "127.0.14.9", env={"VLLM_SIM_PROFILE": "legacy"}
    )
    async with httpx.AsyncClient(base_url=legacy.url, timeout=30) as client:
        await client.post("/sleep?level=1")
        if path in FORMS:
            r = await client.post(path, **audio_upload())
        else:
            r = await client.post(path, json={"model": "m", **BODIES[path]})
    assert (r.status_code, r.content) == (500, b"")
    await assert_exited(legacy)
    assert [v.kind for v in legacy.violations] == ["request_while_asleep", "engine_crash"]


async def test_an_asleep_034_engine_queues_a_pooling_request_until_the_wake(
    engine: SimEngine, http: httpx.AsyncClient
) -> None:
    await http.post(engine.url + "/sleep?level=1")
    task = asyncio.create_task(http.post(engine.url + "/score", json=BODIES["/score"]))
    await until(lambda: engine.sched.waiting == 1)
    await http.post(engine.url + "/wake_up")
    assert (await task).status_code == 200


def events(raw: bytes) -> list[str]:
    """The `event:` types of an SSE body, in order."""
    return [line[7:] for line in raw.decode().splitlines() if line.startswith("event: ")]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/v1/messages",
            ["message_start", "content_block_start"]
            + ["content_block_delta"] * 2
            + ["content_block_stop", "message_delta", "message_stop"],
        ),
        (
            "/v1/responses",
            ["response.created", "response.in_progress"]
            + ["response.output_item.added", "response.content_part.added"]
            + ["response.output_text.delta"] * 2
            + ["response.output_text.done", "response.content_part.done"]
            + ["response.output_item.done", "response.completed"],
        ),
    ],
)
async def test_a_stream_of_typed_events_through_the_gateway(
    gateway: Gateway, http: httpx.AsyncClient, path: str, expected: list[str]
) -> None:
    body = {"model": "m", "stream": True, **BODIES[path]}
    async with http.stream("POST", gateway.url + path, json=body) as s:
        raw = b"".join([c async for c in s.aiter_raw()])
    assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
    assert events(raw) == expected


async def test_a_legacy_engine_asleep_ends_a_stream_with_an_error_event(host: EngineHost) -> None:
    legacy = await start(
        host, "m", "--enable-sleep-mode", "--host", "127.0.14.9", env={"VLLM_SIM_PROFILE": "legacy"}
    )
    async with httpx.AsyncClient(base_url=legacy.url, timeout=30) as client:
        await client.post("/sleep?level=1")
        body = {"model": "m", "stream": True, **BODIES["/v1/messages"]}
        async with client.stream("POST", "/v1/messages", json=body) as s:
            raw = b"".join([c async for c in s.aiter_raw()])
    assert s.status_code == 200 and events(raw)[-1] == "error"
    await assert_exited(legacy)


@pytest.mark.parametrize("path", ["/v1/messages", "/pooling", "/v2/rerank", FORMS[0]])
async def test_the_agent_holds_each_new_inference_route_while_a_legacy_engine_sleeps(
    host: EngineHost, http: httpx.AsyncClient, path: str
) -> None:
    legacy = await start(
        host,
        "m",
        "--enable-sleep-mode",
        "--host",
        "127.0.14.11",
        env={"VLLM_SIM_PROFILE": "legacy"},
    )
    agent = await agent_for(legacy, "127.0.14.12", hold_timeout=20.0)
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await http.post(agent.control_url + "/sleep?level=1", headers=auth)).is_success
        if path in FORMS:
            sent = http.post(agent.public_url + path, **audio_upload())
        else:
            sent = http.post(agent.public_url + path, json={"model": "m", **BODIES[path]})
        task = asyncio.create_task(sent)
        await until(lambda: agent.gate.held == 1)
        assert (await http.post(agent.control_url + "/wake", headers=auth)).is_success
        assert (await task).status_code == 200
    finally:
        await agent.stop()
    assert not legacy.violations  # never reached the sleeping engine
