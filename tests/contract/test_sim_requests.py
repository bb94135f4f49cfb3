"""Inference under sleep in the 0.34 and 0.33 profiles (docs/vllm.md "Requests while asleep", "Draining and pausing") and the OpenAI
surface."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start, until

pytestmark = pytest.mark.contract

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


@pytest.fixture(params=["0.34", "0.33"])
async def engine(host: EngineHost, request: pytest.FixtureRequest) -> SimEngine:
    return await start(
        host,
        "org/model-8B",
        "--enable-sleep-mode",
        "--served-model-name",
        "m",
        "--itl-seconds",
        "5",
        env={"VLLM_SIM_PROFILE": request.param},
    )


@pytest.fixture
async def client(engine: SimEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as c:
        yield c


def kinds(engine: SimEngine) -> list[str]:
    return [v.kind for v in engine.violations]


async def test_chat_completion_usage_and_max_tokens(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 7})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion"
    assert (
        body["usage"]["completion_tokens"] == 7 and body["choices"][0]["finish_reason"] == "length"
    )
    assert len(body["choices"][0]["message"]["content"].split()) == 7
    again = (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 7})).json()
    assert (
        again["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]
    )  # deterministic
    assert kinds(engine) == []


async def test_default_max_tokens_is_16(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"model": "m", "prompt": "hi"})
    assert r.json()["usage"]["completion_tokens"] == 16 and r.json()["object"] == "text_completion"


async def test_streaming_with_include_usage(client: httpx.AsyncClient) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln async for ln in r.aiter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) == 4
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "model": "other"}, 404, "model"),
        ("/v1/chat/completions", {**CHAT, "n": 2}, 400, "n"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/chat/completions", {"model": "m"}, 400, "messages"),
        ("/v1/completions", {"model": "m"}, 400, "prompt"),
        (
            "/v1/completions",
            {"model": "m", "prompt": "x", "stream_options": {"include_usage": True}},
            400,
            "stream_options",
        ),
        ("/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 100000}, 400, "prompt"),
    ],
)
async def test_bad_requests_get_openai_errors(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    r = await client.post(path, json=body)
    assert r.status_code == status
    assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == status


async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", content=b"{oops")
    assert r.status_code == 400 and "error" in r.json()


async def test_api_key_guards_v1_but_not_dev_routes(host: EngineHost) -> None:
    engine = await start(host, "m", "--api-key", "sekret")
    async with httpx.AsyncClient(base_url=engine.url) as c:
        assert (await c.get("/v1/models")).status_code == 401
        assert (
            await c.get("/v1/models", headers={"Authorization": "Bearer sekret"})
        ).status_code == 200
        assert (await c.get("/is_sleeping")).status_code == 200  # unprotected (docs/vllm.md)


async def test_request_while_asleep_is_queued_until_full_wake(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=1")
    task = asyncio.create_task(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2}))
    await until(lambda: engine.sched.waiting == 1)
    await client.post("/wake_up?tags=weights")  # partial: still queued
    await asyncio.sleep(0.05)
    assert not task.done() and engine.sched.waiting == 1
    await client.post("/wake_up?tags=kv_cache")
    r = await task
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert kinds(engine) == ["request_while_asleep"]


async def test_waiting_gauge_does_not_count_requests_queued_while_asleep(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=1")
    task = asyncio.create_task(
        client.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1})
    )
    await until(lambda: engine.sched.waiting == 1)
    assert (
        'vllm:num_requests_waiting{model_name="m",engine="0"} 0'
        in (await client.get("/metrics")).text
    )
    await client.post("/wake_up")
    await task


async def test_repeated_sleep_abort_aborts_queued_requests(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=1")
    task = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    await until(lambda: engine.sched.waiting == 1)
    assert (await client.post("/sleep?level=1&mode=abort")).status_code == 200
    r = await task
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "abort"
    assert r.json()["usage"]["completion_tokens"] == 0


async def test_sleep_mode_abort_aborts_inflight(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    task = asyncio.create_task(
        client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1000})
    )
    await until(lambda: engine.sched.running == 1)
    assert (await client.post("/sleep?level=1&mode=abort")).status_code == 200
    r = await task
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "abort"
    assert kinds(engine) == ["inflight_at_sleep"]


async def test_sleep_mode_wait_drains_inflight_first(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    task = asyncio.create_task(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3}))
    await until(lambda: engine.sched.running == 1)
    sleep = asyncio.create_task(client.post("/sleep?level=1&mode=wait"))
    await until(lambda: engine.is_sleeping)  # paused at once, memory still held
    late = asyncio.create_task(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1}))
    r = await task
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert (await sleep).json() == {"status": "sleeping", "level": 1}
    assert not late.done()  # queued behind the sleep
    await client.post("/wake_up")
    assert (await late).json()["choices"][0]["finish_reason"] == "length"
    assert "inflight_at_sleep" not in kinds(engine)


async def test_sleep_mode_keep_freezes_and_resumes(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    # 100 tokens at 10 ms each (itl 5 s at the host's time scale): the request cannot finish
    # before the sleep lands, even on a starved host (3 tokens, 30 ms, could).
    task = asyncio.create_task(
        client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100})
    )
    await until(lambda: engine.sched.running == 1)
    await client.post("/sleep?level=1&mode=keep")
    frozen = engine.sched.running
    await asyncio.sleep(0.05)
    assert not task.done() and frozen == 1
    await client.post("/wake_up")
    assert (await task).json()["choices"][0]["finish_reason"] == "length"


async def test_level2_wake_with_reload_serves_good_tokens(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=2")
    assert engine.device.held_by(engine) == engine.residual
    await client.post("/wake_up?tags=weights")
    assert (
        await client.post("/collective_rpc", json={"method": "reload_weights"})
    ).status_code == 200
    assert (await client.post("/wake_up?tags=kv_cache")).json()["status"] == "awake"
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert "!" not in r.json()["choices"][0]["message"]["content"]
    assert kinds(engine) == []


async def test_level2_wake_without_reload_serves_garbage(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=2")
    await client.post("/wake_up")
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.json()["choices"][0]["message"]["content"] == "!!!!"
    assert kinds(engine) == ["garbage_weights"]


async def test_reload_before_weights_wake_fails(client: httpx.AsyncClient) -> None:
    await client.post("/sleep?level=2")
    r = await client.post("/collective_rpc", json={"method": "reload_weights"})
    assert r.status_code == 500


async def test_pause_rejects_new_requests_with_503(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/pause?mode=abort")
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 503 and r.json()["error"]["type"] == "ServiceUnavailableError"
    await client.post("/resume")
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert kinds(engine) == []


async def test_request_during_wake_is_a_violation(host: EngineHost) -> None:
    # A 1 s wake at the host's time scale: the request must land while it runs, even on a
    # starved host (a 40 ms wake could end before the request's first byte arrived).
    engine = await start(host, "m", "--wake-seconds", "500", "--weights-size", "16Gi")
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as c:
        await c.post("/sleep?level=1")
        wake = asyncio.create_task(c.post("/wake_up"))
        await until(lambda: engine.transition == "wake")
        r = await c.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1})
        assert r.status_code == 200 and wake.done()  # held until fully awake
    assert kinds(engine) == ["request_during_transition"]


async def test_load_tracking_counts_inflight(host: EngineHost) -> None:
    engine = await start(host, "m", "--enable-server-load-tracking", "--itl-seconds", "5")
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as c:
        task = asyncio.create_task(
            c.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 3})
        )
        await until(lambda: engine.sched.running == 1)
        assert (await c.get("/load")).json() == {"server_load": 1}
        await task
        assert (await c.get("/load")).json() == {"server_load": 0}


async def test_client_disconnect_removes_queued_request(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=1")
    task = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    await until(lambda: engine.sched.waiting == 1)
    task.cancel()
    await until(lambda: engine.sched.waiting == 0)
