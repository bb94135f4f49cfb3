"""What the official OpenAI and Anthropic Python SDKs send and rely on, through gateway -> pod
agent -> simulated vLLM over loopback.

The SDKs are not dependencies of the project: each test sends what the SDK sends, with httpx,
and checks what the SDK needs of the answer; its comment names the SDK behaviour it stands
for. The SDKs themselves (openai 3.x, anthropic 2.x) were run against the same chain by hand:
docs/gateway.md, "Clients".
"""

from __future__ import annotations

import asyncio
import base64
import json
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.gateway.routing import WakePolicy
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start, until

from .agent_wait import wait_state

pytestmark = pytest.mark.contract

TOKEN = "sdk-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HELLO = [{"role": "user", "content": "hello there"}]
# Headers every OpenAI SDK request carries (the Anthropic SDK's are alike).
SDK_HEADERS = {
    "Authorization": "Bearer sk-anything",
    "User-Agent": "OpenAI/Python 3.63.0",
    "X-Stainless-Lang": "python",
    "X-Stainless-Retry-Count": "0",
    "X-Stainless-Read-Timeout": "600",
}


@dataclass
class Chain:
    gateway: Gateway
    source: StaticSource
    awake: tuple[SimEngine, Agent]  # model "m"
    asleep: tuple[SimEngine, Agent]  # model "s", asleep at its agent (which can hold)

    @property
    def url(self) -> str:
        return self.gateway.url


async def _agent(engine: SimEngine, host: str) -> Agent:
    cfg = AgentConfig.model_validate(
        {
            "listen_host": host,
            "public_port": 0,
            "control_port": 0,
            "upstream": engine.url,
            "control_token": TOKEN,
            "hold_timeout": 30,
            "poll_interval": 0.01,
            "health_interval": 0.05,
        }
    )
    agent = Agent(cfg)
    await agent.start()
    await wait_state(agent, "awake")
    return agent


@pytest.fixture
async def chain(http: httpx.AsyncClient) -> AsyncIterator[Chain]:
    host = EngineHost(time_scale=0.002)
    pairs = []
    for i, name in enumerate(("m", "s")):
        # 5 s between tokens, scaled: 10 ms, so a long stream is still running when cut.
        engine = await start(
            host,
            name,
            "--enable-sleep-mode",
            "--served-model-name",
            name,
            "--itl-seconds",
            "5",
            "--host",
            f"127.0.46.{i + 1}",
        )
        pairs.append((engine, await _agent(engine, f"127.0.46.{i + 11}")))
    agent_s = pairs[1][1]
    assert (
        await http.post(agent_s.control_url + "/sleep?level=1", headers=AUTH)
    ).status_code == 200
    source = StaticSource("team")
    source.add_model("m", [pairs[0][1].public_url])
    source.add_model("s", [agent_s.public_url], awake=False, can_hold=True)
    source.add_model("q", [], awake=False, wake=WakePolicy(max_queued=0))
    source.add_model("n", [], awake=False, wake=WakePolicy(on_request=False))
    source.add_model("t", [], awake=False, wake=WakePolicy(timeout=0.3))
    config = GatewayConfig(listen_host="127.0.46.100", port=0)
    async with Gateway(config, source, MemoryDemand()) as g:
        yield Chain(g, source, pairs[0], pairs[1])
    for _, agent in pairs:
        await agent.stop()
    await host.stop_all()


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) of each event, as the SDKs' SSE decoders read them (blank line ends an
    event; `data:` lines joined by newlines; one optional space after the colon)."""
    out = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
        if data:
            out.append((event, "\n".join(data)))
    return out


async def _stream(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> httpx.Response:
    async with http.stream("POST", url, json=body, headers=SDK_HEADERS) as resp:
        await resp.aread()
    return resp


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        (
            "POST",
            "/v1/chat/completions",
            {"model": "nope", "messages": HELLO},
            404,
            "model_not_found",
        ),
        ("POST", "/v1/chat/completions", {"model": "q", "messages": HELLO}, 429, "queue_full"),
        ("POST", "/v1/messages", {"model": "n", "messages": HELLO}, 503, "model_asleep"),
        ("POST", "/v1/completions", {"model": "t", "prompt": "hi"}, 503, "wake_timeout"),
        # responses.retrieve(id), models.retrieve(name): not served here (docs/gateway.md)
        ("GET", "/v1/responses/resp_abc", None, 404, "not_routed"),
        ("GET", "/v1/models/m", None, 404, "not_found"),
    ],
)
async def test_the_gateways_refusals_are_errors_the_sdks_parse_and_back_off_on(
    chain: Chain,
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    code: str,
) -> None:
    # Both SDKs raise their error class from the status and take `.message`/`.code` from the
    # JSON body's `error` object (the Anthropic SDK finds `message` there too). On 429 and 5xx
    # they retry after the Retry-After they are sent, within bounds that differ by version:
    # openai 1.x honours (0, 60] s and backs off on its own past it, openai 3.x (0, 120] and
    # gives up past it, anthropic 2.x any positive value. Within 60 s all of them wait it.
    resp = await http.request(method, chain.url + path, json=body, headers=SDK_HEADERS)
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] == code
    if status in (429, 503):
        assert 0 < int(resp.headers["retry-after"]) <= 60


async def test_a_chat_stream_with_usage_parses_as_the_openai_sdk_reads_it(
    chain: Chain, http: httpx.AsyncClient
) -> None:
    # openai.Stream: every event's data is JSON until `[DONE]`, which ends the iteration; with
    # stream_options.include_usage the last chunk has no choices and the usage.
    body = {
        "model": "m",
        "messages": HELLO,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = await _stream(http, chain.url + "/v1/chat/completions", body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.content)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
    assert sum(1 for d in deltas if d) == 5


@pytest.mark.parametrize(
    ("path", "body", "first", "last"),
    [
        (
            "/v1/responses",
            {"input": "hi", "max_output_tokens": 3},
            "response.created",
            "response.completed",
        ),
        ("/v1/messages", {"messages": HELLO, "max_tokens": 3}, "message_start", "message_stop"),
    ],
)
async def test_typed_event_streams_reach_the_sdks_whole(
    chain: Chain, http: httpx.AsyncClient, path: str, body: dict[str, Any], first: str, last: str
) -> None:
    # openai's Responses stream and anthropic's MessageStream dispatch on `event:` and the
    # data's `type`, and finish on the last event: each must arrive named and whole.
    resp = await _stream(http, chain.url + path, {**body, "model": "m", "stream": True})
    assert resp.status_code == 200
    events = sse_events(resp.content)
    assert [json.loads(data)["type"] for _, data in events] == [e for e, _ in events]
    assert events[0][0] == first and events[-1][0] == last


async def test_a_responses_stream_opens_its_item_before_its_deltas(
    chain: Chain, http: httpx.AsyncClient
) -> None:
    # openai's responses.stream() builds a snapshot from the events: a delta for an output item
    # or content part it was not told of (output_item.added, content_part.added) raises
    # RuntimeError. vLLM opens both first and numbers its events from 0.
    body = {"model": "m", "input": "hi", "max_output_tokens": 3, "stream": True}
    resp = await _stream(http, chain.url + "/v1/responses", body)
    events = [json.loads(data) for _, data in sse_events(resp.content)]
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == text


async def test_a_routed_path_with_a_query_is_routed(chain: Chain, http: httpx.AsyncClient) -> None:
    # OpenAI(default_query=...) and Azure-style clients add `?api-version=...` to every call.
    body = {"model": "m", "messages": HELLO, "max_tokens": 2}
    url = chain.url + "/v1/chat/completions?api-version=2024-10-21"
    resp = await http.post(url, json=body, headers=SDK_HEADERS)
    assert resp.status_code == 200, resp.text


async def test_embeddings_in_base64_as_the_openai_sdk_asks_for_them(
    chain: Chain, http: httpx.AsyncClient
) -> None:
    # embeddings.create() without encoding_format sends "base64" and decodes each embedding
    # as float32 bytes (vLLM's default embed_dtype), the same values as "float" gives.
    url = chain.url + "/v1/embeddings"
    body = {"model": "m", "input": ["one", "two"]}
    floats = (await http.post(url, json=body)).json()["data"]
    resp = await http.post(url, json={**body, "encoding_format": "base64"})
    assert resp.status_code == 200, resp.text
    for plain, item in zip(floats, resp.json()["data"], strict=True):
        assert isinstance(item["embedding"], str)
        decoded = array("f", base64.b64decode(item["embedding"])).tolist()
        assert decoded == pytest.approx(plain["embedding"], abs=1e-6)


async def test_a_stream_the_client_closes_mid_way_leaves_nothing_in_flight(
    chain: Chain, http: httpx.AsyncClient
) -> None:
    # Stream.close() (or leaving the `with`/`async for`) closes the connection mid-stream.
    engine, agent = chain.awake
    body = {"model": "m", "messages": HELLO, "max_tokens": 1000, "stream": True}
    async with http.stream("POST", chain.url + "/v1/chat/completions", json=body) as resp:
        async for _ in resp.aiter_raw():
            break
        assert agent.gate.inflight == 1
    await until(lambda: agent.gate.inflight == 0 and engine.sched.running == 0)
    assert agent.snapshot()["inflight"] == 0


async def _play_operator(chain: Chain, http: httpx.AsyncClient) -> None:
    """Wake the sleeping model once a request is held at its agent, as the operator would."""
    _, agent = chain.asleep
    await until(lambda: agent.snapshot()["held"] == 1)
    assert (await http.post(agent.control_url + "/wake", headers=AUTH)).status_code == 200


async def test_a_held_stream_flows_whole_once_the_model_wakes(
    chain: Chain, http: httpx.AsyncClient
) -> None:
    # The SDK waits for the response head within its timeout (600 s by default), then reads
    # the stream as from an awake model.
    body = {
        "model": "s",
        "messages": HELLO,
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    wake = asyncio.create_task(_play_operator(chain, http))
    resp = await _stream(http, chain.url + "/v1/chat/completions", body)
    await wake
    assert resp.status_code == 200
    events = sse_events(resp.content)
    assert events[-1] == (None, "[DONE]")
    assert json.loads(events[-2][1])["usage"]["completion_tokens"] == 3
    assert not chain.asleep[0].violations


async def test_a_held_request_the_sdk_timed_out_on_never_runs_and_its_retry_is_answered(
    chain: Chain, http: httpx.AsyncClient
) -> None:
    # An SDK timeout shorter than the wake: the SDK closes the connection and sends the request
    # again (APITimeoutError is retried, with `X-Stainless-Retry-Count: 1`).
    engine, agent = chain.asleep
    body = {"model": "s", "messages": HELLO, "max_tokens": 3}
    url = chain.url + "/v1/chat/completions"
    with pytest.raises(httpx.ReadTimeout):
        await http.post(url, json=body, headers=SDK_HEADERS, timeout=httpx.Timeout(30, read=0.3))
    await until(lambda: agent.snapshot()["held"] == 0)
    wake = asyncio.create_task(_play_operator(chain, http))
    retry = {**SDK_HEADERS, "X-Stainless-Retry-Count": "1"}
    resp = await http.post(url, json=body, headers=retry)
    await wake
    assert resp.status_code == 200, resp.text
    assert sum(engine.metrics.finished.values()) == 1
    assert not engine.violations


async def test_anthropic_messages_answer_through_the_chain(
    chain: Chain, http: httpx.AsyncClient
) -> None:
    # anthropic.messages.create(): x-api-key and anthropic-version headers, a Message back.
    headers = {"x-api-key": "sk-anything", "anthropic-version": "2023-06-01"}
    body = {"model": "m", "max_tokens": 3, "messages": HELLO}
    resp = await http.post(chain.url + "/v1/messages", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    message = resp.json()
    assert message["type"] == "message" and message["content"][0]["type"] == "text"
    assert message["usage"]["output_tokens"] == 3


async def test_request_ids_pass_both_ways(http: httpx.AsyncClient) -> None:
    # vLLM takes a client's X-Request-Id as its request id and, with
    # --enable-request-id-headers, answers it back; openai's `response._request_id` reads it.
    seen: dict[str, str] = {}

    async def chat(request: web.Request) -> web.Response:
        seen.update((k.lower(), v) for k, v in request.headers.items())
        rid = request.headers.get("X-Request-Id", "generated")
        return web.json_response({"object": "chat.completion"}, headers={"X-Request-Id": rid})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.46.50", 0).start()
    try:
        source = StaticSource("team")
        source.add_model("m", [f"http://127.0.46.50:{runner.addresses[0][1]}"])
        config = GatewayConfig(listen_host="127.0.46.101", port=0)
        async with Gateway(config, source, MemoryDemand()) as g:
            headers = {**SDK_HEADERS, "X-Request-Id": "req-123"}
            body = {"model": "m", "messages": HELLO}
            resp = await http.post(g.url + "/v1/chat/completions", json=body, headers=headers)
    finally:
        await runner.cleanup()
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == "req-123"
    assert seen["x-request-id"] == "req-123"
    assert seen["x-stainless-retry-count"] == "0"


@pytest.mark.parametrize(
    ("path", "key", "status", "code"),
    [
        ("/v1/chat/completions", "wrong", 401, "invalid_api_key"),
        ("/v1/files", "good", 404, "not_found"),
    ],
)
async def test_an_upload_over_the_body_bound_is_answered_for_its_head_first(
    http: httpx.AsyncClient, tmp_path: Path, path: str, key: str, status: int, code: str
) -> None:
    # An SDK call with a wrong key (AuthenticationError, not retried), or one vLLM does not
    # serve (files.create: NotFoundError), that uploads more than --max-body-bytes: the answer
    # is about its head, as docs/gateway.md says (head first, then the body) and as vLLM,
    # which bounds no body, answers it; a 413 would send the user to shrink the upload first.
    keys = tmp_path / "keys"
    keys.write_text("good\n")
    source = StaticSource("team")
    source.add_model("m", ["http://127.0.46.60:9"])
    config = GatewayConfig(
        listen_host="127.0.46.102", port=0, api_keys_file=str(keys), max_body_bytes=1024
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 4096}]}
    async with Gateway(config, source, MemoryDemand()) as g:
        headers = {**SDK_HEADERS, "Authorization": f"Bearer {key}"}
        resp = await http.post(g.url + path, json=body, headers=headers)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
