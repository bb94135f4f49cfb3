"""The soak's replayer against a simulated engine over loopback HTTP: open-loop sends, time to
first token of streamed and non-streamed requests, failures recorded instead of raised."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from vllm_sleep.testing.arrivals import Arrival
from vllm_sleep.testing.replay import Outcome, replay
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

pytestmark = pytest.mark.contract


@pytest.fixture
async def engine(host: EngineHost) -> SimEngine:
    return await start(host, "org/model-8B", "--served-model-name", "m", "--itl-seconds", "0.02")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def test_streamed_and_whole_answers_are_timed_to_their_first_token(
    engine: SimEngine, http: aiohttp.ClientSession
) -> None:
    trace = [Arrival(0.0, "m", True, 6), Arrival(0.05, "m", False, 6), Arrival(0.1, "m", True, 1)]
    seen: list[Outcome] = []
    out = await replay(http, engine.url, trace, seen.append)
    assert [o.arrival for o in out] == trace
    assert {id(o) for o in seen} == {id(o) for o in out}  # each reported as it ended
    assert all(o.ok and o.first is not None for o in out), out
    streamed, whole = out[0], out[1]
    assert streamed.first is not None and streamed.first < streamed.total  # tokens kept coming
    assert whole.first == whole.total  # a whole answer's first token is its last
    assert out[1].sent - out[0].sent >= 0.05 - 0.01  # sent at their times, not back to back


async def test_an_error_answer_is_recorded_with_its_status_and_body(
    engine: SimEngine, http: aiohttp.ClientSession
) -> None:
    (o,) = await replay(http, engine.url, [Arrival(0, "no-such-model", True, 2)])
    assert not o.ok and o.status == 404 and o.first is None
    assert "no-such-model" in o.error


async def test_a_stream_cut_before_done_and_a_refused_connection_are_failures(
    http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n')
        return resp  # ends without `data: [DONE]`

    app = web.Application()
    app.router.add_post("/v1/chat/completions", cut)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        url = f"http://127.0.0.1:{unused_tcp_port}"
        (o,) = await replay(http, url, [Arrival(0, "m", True, 2)])
        assert o.status == 200 and o.first is not None and not o.ok
        assert "[DONE]" in o.error
    finally:
        await runner.cleanup()
    (refused,) = await replay(http, url, [Arrival(0, "m", False, 2)])
    assert refused.status == 0 and not refused.ok and "Connect" in refused.error
