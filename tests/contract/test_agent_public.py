"""The agent's public port in front of the simulator: allowlist, auth, hold, streaming.

Real agent, real simulator, real loopback HTTP, on distinct 127.x addresses (the agent on
127.0.2.x, the engine on 127.0.3.x), against both behaviour profiles.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

from .agent_wait import wait_state

pytestmark = pytest.mark.contract

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
COMPLETION = {"model": "m", "prompt": "hello", "max_tokens": 3}


@pytest.fixture(params=["0.33", "legacy"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[SimEngine]:
    host = EngineHost(time_scale=0.002)
    env = {"VLLM_SIM_PROFILE": request.param}
    yield await start(host, "m", "--enable-sleep-mode", "--host", "127.0.3.1", env=env)
    await host.stop_all()


@pytest.fixture
async def agent(engine: SimEngine) -> AsyncIterator[Agent]:
    async with Agent(config(engine)) as a:
        await wait_state(a, "awake")
        yield a


def config(engine: SimEngine, **overrides: object) -> AgentConfig:
    return config_for(engine.url, **overrides)


def config_for(upstream: str, **overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "listen_host": "127.0.2.1",
        "public_port": 0,
        "control_port": 0,
        "upstream": upstream,
        "control_token": TOKEN,
        "hold_timeout": 10.0,
        "poll_interval": 0.01,
        "health_interval": 0.05,
        **overrides,
    }
    return AgentConfig.model_validate(values)


async def wait_held(agent: Agent, n: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while agent.gate.held < n:  # noqa: ASYNC110 - held has no event of its own
            await asyncio.sleep(0.005)


def assert_openai_error(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"}
    assert isinstance(err, dict)
    return err


DEV_PATHS = [
    ("POST", "/sleep?level=1"),
    ("POST", "/wake_up"),
    ("GET", "/is_sleeping"),
    ("POST", "/collective_rpc"),
    ("POST", "/reset_prefix_cache"),
    ("POST", "/pause"),
    ("POST", "/resume"),
    ("GET", "/server_info"),
    ("GET", "/load"),
    ("POST", "/v1/../sleep"),
    ("POST", "/v1/chat/completions/../../../sleep"),
    ("GET", "/v1/models/../../is_sleeping"),
    ("POST", "/%73leep"),
]


@pytest.mark.parametrize(("method", "path"), DEV_PATHS)
async def test_dev_paths_are_404_on_the_public_port(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient, method: str, path: str
) -> None:
    # Raw target: httpx would normalise "/v1/../sleep" before sending it.
    resp = await http.request(method, httpx.URL(agent.public_url + path))
    assert_openai_error(resp, 404)
    assert engine.state == "awake" and not engine.violations


async def test_wrong_method_is_405_and_unknown_path_404(
    agent: Agent, http: httpx.AsyncClient
) -> None:
    assert_openai_error(await http.get(agent.public_url + "/v1/chat/completions"), 405)
    assert_openai_error(await http.get(agent.public_url + "/v1/unknown"), 404)


async def test_allowlisted_info_paths_are_forwarded(agent: Agent, http: httpx.AsyncClient) -> None:
    for path in ("/health", "/v1/models", "/metrics", "/version"):
        resp = await http.get(agent.public_url + path)
        assert resp.status_code == 200, (path, resp.text)
    models = (await http.get(agent.public_url + "/v1/models")).json()
    assert models["data"][0]["id"] == "m"


async def test_inference_is_forwarded_when_awake(agent: Agent, http: httpx.AsyncClient) -> None:
    resp = await http.post(agent.public_url + "/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"]
    assert agent.gate.inflight == 0 and agent.gate.last_activity is not None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
)
async def test_control_port_needs_the_token(
    agent: Agent, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in (("GET", "/state"), ("POST", "/sleep?level=1"), ("POST", "/wake")):
        resp = await http.request(method, agent.control_url + path, headers=headers)
        assert_openai_error(resp, 401)
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert agent.board.state.value == "awake"
    assert (await http.get(agent.control_url + "/healthz")).status_code == 200


async def test_metrics_are_open_and_per_agent(agent: Agent, http: httpx.AsyncClient) -> None:
    await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
    await http.post(agent.public_url + "/nope")
    text = (await http.get(agent.control_url + "/metrics")).text
    assert 'vllm_sleep_agent_requests_total{kind="inference"} 1.0' in text
    assert 'vllm_sleep_agent_requests_total{kind="denied"} 1.0' in text
    assert 'vllm_sleep_agent_state{state="awake"} 1.0' in text


async def test_requests_while_asleep_are_held_then_served(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient
) -> None:
    assert (await http.post(agent.control_url + "/sleep?level=1", headers=AUTH)).status_code == 200
    version = agent.board.version
    pending = [
        asyncio.create_task(http.post(agent.public_url + "/v1/completions", json=COMPLETION))
        for _ in range(5)
    ]
    await wait_held(agent, 5)
    # Demand is news for the operator's long-poll.
    state = (
        await http.get(agent.control_url + f"/state?version={version}&wait=5", headers=AUTH)
    ).json()
    assert state["held"] >= 1 and state["state"] == "asleep"
    assert engine.state == "sleeping"
    assert (await http.post(agent.control_url + "/wake", headers=AUTH)).status_code == 200
    for resp in await asyncio.gather(*pending):
        assert resp.status_code == 200, resp.text
    assert not engine.violations


async def test_a_held_request_whose_client_leaves_stops_counting_as_demand(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient
) -> None:
    assert (await http.post(agent.control_url + "/sleep?level=1", headers=AUTH)).status_code == 200
    leaving = asyncio.create_task(http.post(agent.public_url + "/v1/completions", json=COMPLETION))
    await wait_held(agent, 1)
    leaving.cancel()  # the client hangs up while its request is held
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    # Well inside the fixture's 10 s hold timeout: the agent notices the hang-up itself.
    deadline = asyncio.get_running_loop().time() + 3
    while agent.gate.held and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert agent.gate.held == 0  # no longer demand: the operator would not wake for it
    # A later wake does not run the abandoned request on the engine.
    assert (await http.post(agent.control_url + "/wake", headers=AUTH)).status_code == 200
    assert agent.gate.inflight == 0
    assert not engine.violations


async def test_hold_timeout_answers_503_with_retry_after(
    engine: SimEngine, http: httpx.AsyncClient
) -> None:
    async with Agent(config(engine, hold_timeout=0.05, retry_after=7)) as agent:
        await wait_state(agent, "awake")
        await http.post(agent.control_url + "/sleep?level=1", headers=AUTH)
        resp = await http.post(agent.public_url + "/v1/chat/completions", json=CHAT)
        err = assert_openai_error(resp, 503)
        assert resp.headers["Retry-After"] == "7"
        assert err["code"] == "hold_timeout"
        assert agent.gate.held == 0 and agent.gate.inflight == 0
        # /health and /v1/models still answer: vLLM serves them while asleep.
        assert (await http.get(agent.public_url + "/health")).status_code == 200
        assert (await http.get(agent.public_url + "/v1/models")).status_code == 200
    assert not engine.violations and engine.state == "sleeping"


async def test_sse_streams_pass_through_chunk_by_chunk(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient
) -> None:
    body = {**COMPLETION, "max_tokens": 6, "stream": True}
    events: list[bytes] = []
    running_at_first_event: int | None = None
    async with http.stream("POST", agent.public_url + "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if not line:
                continue
            if running_at_first_event is None:
                running_at_first_event = int(str(engine.snapshot()["running"]))
                assert agent.gate.inflight == 1
            events.append(line.encode())
    # The first event reached the client while the engine was still generating: no buffering.
    assert running_at_first_event == 1
    assert events[-1] == b"data: [DONE]" and len(events) >= 3
    assert agent.gate.inflight == 0


async def test_large_request_bodies_stream_through(agent: Agent, http: httpx.AsyncClient) -> None:
    prompt = "x " * (600 * 1024)  # > 1 MiB: forwarded chunked instead of read whole
    resp = await http.post(
        agent.public_url + "/v1/completions", json={**COMPLETION, "prompt": prompt}
    )
    # The agent has no body limit of its own; whatever vLLM (here: the simulator, whose
    # server caps bodies at 1 MiB) answers comes back unchanged.
    assert resp.status_code in (200, 400, 413), resp.text
    assert agent.gate.inflight == 0


async def test_garbage_on_the_wire_does_not_hurt(agent: Agent, http: httpx.AsyncClient) -> None:
    host, port = agent.public_url.removeprefix("http://").split(":")
    for junk in (
        b"\x00\xff\xfe garbage\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # cut off
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
    ):
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(junk)
        await writer.drain()
        writer.close()
        await asyncio.sleep(0)
    bad_json = await http.post(
        agent.public_url + "/v1/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert 400 <= bad_json.status_code < 500  # vLLM's own validation answer, passed through
    resp = await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
    assert resp.status_code == 200
    async with asyncio.timeout(5):
        while agent.gate.inflight:  # noqa: ASYNC110 - the cut-off request may still be ending
            await asyncio.sleep(0.01)


async def test_abandoned_stream_frees_its_slot_and_sleep_stays_safe(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient
) -> None:
    body = {**COMPLETION, "max_tokens": 5000, "stream": True}
    async with http.stream("POST", agent.public_url + "/v1/completions", json=body) as resp:
        async for _ in resp.aiter_raw():
            break  # read one chunk, then hang up mid-stream
    async with asyncio.timeout(10):
        while agent.gate.inflight:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert agent.gate.last_abandoned is not None
    resp = await http.post(agent.control_url + "/sleep?level=1", headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert not engine.violations


async def test_upstream_dying_mid_stream_cuts_the_client_off(http: httpx.AsyncClient) -> None:
    # A hand-made upstream: the simulator's engines end streams cleanly even when stopped.
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: {}\n\n")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()  # engine death: no terminating chunk
        return resp

    app = web.Application()
    app.router.add_get("/health", _health)
    app.router.add_get("/is_sleeping", _awake)
    app.router.add_post("/v1/completions", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.3.2", 0).start()
    upstream = f"http://127.0.3.2:{runner.addresses[0][1]}"
    try:
        async with Agent(config_for(upstream)) as agent:
            await wait_state(agent, "awake")
            lines: list[str] = []
            with pytest.raises(httpx.HTTPError):  # incomplete chunked body, never a clean end
                async with http.stream(
                    "POST", agent.public_url + "/v1/completions", json=COMPLETION
                ) as resp:
                    async for line in resp.aiter_lines():
                        lines.append(line)
            assert lines[:1] == ["data: {}"]
            assert agent.gate.inflight == 0
    finally:
        await runner.cleanup()


async def _health(_request: web.Request) -> web.Response:
    return web.Response()


async def _awake(_request: web.Request) -> web.Response:
    return web.json_response({"is_sleeping": False})
