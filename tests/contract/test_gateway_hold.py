"""Gateway hold semantics over real loopback HTTP: hold, demand, bounds, disconnect, failover.

The real Gateway with a StaticSource (the test flips replicas awake, as the operator's
condition change would) and MemoryDemand (records Lease renewals), in front of small aiohttp
upstreams that count what reached them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import httpx
import pytest
from aiohttp import web

from vllm_sleep.agent.openai_errors import error_response as agent_error
from vllm_sleep.api.openai_errors import AGENT_REFUSALS, ErrorCode
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.gateway.routing import ModelKey, WakePolicy

pytestmark = pytest.mark.contract

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Upstream:
    """One fake replica: counts requests whose body it read, answers per `behaviour`."""

    def __init__(self, host: str, behaviour: Behaviour | None = None) -> None:
        self.host, self.behaviour = host, behaviour
        self.received = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.received += 1
        if self.behaviour is not None:
            return await self.behaviour(request)
        return web.json_response({"served_by": self.host, "path": request.path})

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.url = f"http://{self.host}:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    ups = [await Upstream(f"127.0.7.{i + 1}").start() for i in range(2)]
    yield ups
    for u in ups:
        await u.stop()


@pytest.fixture
def source() -> StaticSource:
    return StaticSource("team")


@pytest.fixture
def demand() -> MemoryDemand:
    return MemoryDemand()


@pytest.fixture
async def gateway(source: StaticSource, demand: MemoryDemand) -> AsyncIterator[Gateway]:
    cfg = GatewayConfig(listen_host="127.0.7.100", port=0, retry_after=7)
    async with Gateway(cfg, source, demand) as g:
        yield g


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=500)
    async with httpx.AsyncClient(timeout=30, trust_env=False, limits=limits) as c:
        yield c


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - gateway state has no public event
            await asyncio.sleep(0.005)


def queued(g: Gateway, name: str = "m") -> int:
    return g.router.table.queued(ModelKey("team", name))


def chat(
    g: Gateway, http: httpx.AsyncClient, model: str = "m"
) -> Coroutine[Any, Any, httpx.Response]:
    return http.post(g.url + "/v1/chat/completions", json={**CHAT, "model": model})


async def test_awake_model_is_forwarded_without_demand(
    gateway: Gateway,
    source: StaticSource,
    demand: MemoryDemand,
    upstreams: list[Upstream],
    http: httpx.AsyncClient,
) -> None:
    source.add_model("m", [upstreams[0].url])
    resp = await chat(gateway, http)
    assert resp.status_code == 200 and resp.json()["path"] == "/v1/chat/completions"
    assert demand.calls == []


async def test_held_requests_forward_when_the_model_wakes_with_one_demand(
    gateway: Gateway,
    source: StaticSource,
    demand: MemoryDemand,
    upstreams: list[Upstream],
    http: httpx.AsyncClient,
) -> None:
    source.add_model("m", [u.url for u in upstreams], awake=False)
    tasks = [asyncio.create_task(chat(gateway, http)) for _ in range(40)]
    await until(lambda: queued(gateway) == 40 and demand.count("m") > 0)
    assert demand.count("m") == 1
    assert sum(u.received for u in upstreams) == 0  # nothing reaches a sleeping model
    source.set_awake("m", True)
    responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200] * 40
    assert demand.count("m") == 1
    # The answer is spliced to the client from the protocol callbacks; the queue slot is freed
    # when the request's handler resumes, which can come after the client has the whole answer.
    await until(lambda: queued(gateway) == 0)
    assert sum(u.received for u in upstreams) == 40
    assert all(u.received > 0 for u in upstreams)  # least in-flight spreads the burst


async def test_demand_is_per_model(
    gateway: Gateway,
    source: StaticSource,
    demand: MemoryDemand,
    upstreams: list[Upstream],
    http: httpx.AsyncClient,
) -> None:
    source.add_model("m", [upstreams[0].url], awake=False)
    source.add_model("n", [upstreams[1].url], awake=False)
    tasks = [asyncio.create_task(chat(gateway, http, name)) for name in ("m", "n") * 5]
    await until(lambda: queued(gateway, "m") == 5 and queued(gateway, "n") == 5)
    await until(lambda: demand.count("m") > 0 and demand.count("n") > 0)
    assert (demand.count("m"), demand.count("n")) == (1, 1)
    source.set_awake("m", True)
    source.set_awake("n", True)
    assert all(r.status_code == 200 for r in await asyncio.gather(*tasks))


async def test_queue_full_is_429_with_retry_after(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    source.add_model("m", [upstreams[0].url], awake=False, wake=WakePolicy(max_queued=2))
    tasks = [asyncio.create_task(chat(gateway, http)) for _ in range(2)]
    await until(lambda: queued(gateway) == 2)
    resp = await chat(gateway, http)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
    assert resp.json()["error"]["code"] == "queue_full"
    source.set_awake("m", True)
    assert [r.status_code for r in await asyncio.gather(*tasks)] == [200, 200]


async def test_wake_timeout_is_503_with_retry_after(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    source.add_model("m", [upstreams[0].url], awake=False, wake=WakePolicy(timeout=0.2))
    resp = await chat(gateway, http)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "7"
    assert resp.json()["error"]["code"] == "wake_timeout"
    assert queued(gateway) == 0 and upstreams[0].received == 0


async def test_on_request_false_is_503_at_once_without_demand(
    gateway: Gateway,
    source: StaticSource,
    demand: MemoryDemand,
    upstreams: list[Upstream],
    http: httpx.AsyncClient,
) -> None:
    source.add_model("m", [upstreams[0].url], awake=False, wake=WakePolicy(on_request=False))
    resp = await chat(gateway, http)
    assert resp.status_code == 503 and "Retry-After" in resp.headers
    assert resp.json()["error"]["code"] == "model_asleep"
    assert demand.calls == []


async def test_client_disconnect_frees_the_queue_slot(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    source.add_model("m", [upstreams[0].url], awake=False, wake=WakePolicy(max_queued=1))
    task = asyncio.create_task(chat(gateway, http))
    await until(lambda: queued(gateway) == 1)
    task.cancel()  # httpx closes the connection
    await until(lambda: queued(gateway) == 0)
    # The freed slot is usable, and the abandoned request never reaches the model.
    second = asyncio.create_task(chat(gateway, http))
    await until(lambda: queued(gateway) == 1)
    source.set_awake("m", True)
    assert (await second).status_code == 200
    assert upstreams[0].received == 1


async def test_demand_failure_is_retried_and_requests_still_wait(
    gateway: Gateway,
    source: StaticSource,
    demand: MemoryDemand,
    upstreams: list[Upstream],
    http: httpx.AsyncClient,
) -> None:
    demand.fail = True
    source.add_model("m", [upstreams[0].url], awake=False)
    task = asyncio.create_task(chat(gateway, http))
    await until(lambda: queued(gateway) == 1)
    demand.fail = False
    await until(lambda: demand.count("m") == 1)  # the pump retried after the failure
    source.set_awake("m", True)
    assert (await task).status_code == 200


async def test_demand_can_wake_the_model(
    source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    # The demand signal plays the operator: waking the model answers every held request.
    demand = MemoryDemand(on_signal=lambda spec: source.set_awake(spec.key.name, True))
    source.add_model("m", [upstreams[0].url], awake=False)
    async with Gateway(GatewayConfig(listen_host="127.0.7.101", port=0), source, demand) as g:
        responses = await asyncio.gather(*(chat(g, http) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5 and demand.count("m") == 1


# -- per-replica failure handling ---------------------------------------------------------------


def refusal(code: str) -> Behaviour:
    """The agent's own refusal, built as the agent builds it."""

    async def answer(_: web.Request) -> web.StreamResponse:
        headers = {"Retry-After": "5"}
        return agent_error(AGENT_REFUSALS[code], "refused", code=code, headers=headers)

    return answer


agent_refusal = refusal(ErrorCode.QUEUE_FULL)


async def vllm_503(_: web.Request) -> web.StreamResponse:
    return web.json_response({"error": {"message": "overloaded", "code": 503}}, status=503)


async def drop(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()  # the body arrived; the answer never comes
    return web.Response()


async def test_connection_refused_goes_to_another_replica(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    dead = upstreams[1].url
    await upstreams[1].stop()
    source.add_model("m", [dead, upstreams[0].url])
    responses = await asyncio.gather(*(chat(gateway, http) for _ in range(6)))
    assert [r.status_code for r in responses] == [200] * 6
    assert upstreams[0].received == 6


@pytest.mark.parametrize("code", sorted(AGENT_REFUSALS))
async def test_agent_refusal_is_retried_elsewhere(
    gateway: Gateway,
    source: StaticSource,
    upstreams: list[Upstream],
    http: httpx.AsyncClient,
    code: str,
) -> None:
    upstreams[1].behaviour = refusal(code)
    source.add_model("m", [upstreams[1].url, upstreams[0].url])
    responses = [await chat(gateway, http) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert upstreams[0].received == 4 and upstreams[1].received >= 1


async def test_refused_everywhere_rehold_until_a_replica_takes_it(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    upstreams[0].behaviour = agent_refusal
    source.add_model("m", [upstreams[0].url])
    task = asyncio.create_task(chat(gateway, http))
    await until(lambda: upstreams[0].received >= 2)  # refused, re-held, tried again
    upstreams[0].behaviour = None
    assert (await task).status_code == 200


async def big_503(_: web.Request) -> web.StreamResponse:
    return web.Response(status=503, body=b"o" * (200 << 10), content_type="text/plain")


QUEUE_FULL_BODY = b'{"error": {"message": "busy", "code": "queue_full"}}'


async def vllm_429(_: web.Request) -> web.StreamResponse:
    return web.Response(status=429, body=b'{"error": {"message": "slow down", "code": 429}}')


async def queue_full_as_503(_: web.Request) -> web.StreamResponse:
    return web.Response(status=503, body=QUEUE_FULL_BODY)


@pytest.mark.parametrize(
    ("behaviour", "status", "body"),
    [
        (vllm_503, 503, b'{"error": {"message": "overloaded", "code": 503}}'),
        # larger than the refusal peek: whole, not cut at 64 KiB
        (big_503, 503, b"o" * (200 << 10)),
        (vllm_429, 429, b'{"error": {"message": "slow down", "code": 429}}'),
        # an agent refusal code under another status than the agent's is not the agent's
        (queue_full_as_503, 503, QUEUE_FULL_BODY),
    ],
    ids=["engine-503", "larger-than-the-peek", "engine-429", "queue_full-with-503"],
)
async def test_an_error_from_the_engine_is_relayed_whole_and_not_retried(
    gateway: Gateway,
    source: StaticSource,
    upstreams: list[Upstream],
    http: httpx.AsyncClient,
    behaviour: Behaviour,
    status: int,
    body: bytes,
) -> None:
    for u in upstreams:
        u.behaviour = behaviour
    source.add_model("m", [u.url for u in upstreams])
    resp = await chat(gateway, http)
    assert resp.status_code == status and resp.content == body
    assert sum(u.received for u in upstreams) == 1


async def test_a_request_that_reached_an_upstream_is_never_sent_again(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    for u in upstreams:
        u.behaviour = drop
    source.add_model("m", [u.url for u in upstreams])
    resp = await chat(gateway, http)
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_error"
    assert sum(u.received for u in upstreams) == 1


async def hold_one(
    gateway: Gateway, source: StaticSource, upstream: Upstream, http: httpx.AsyncClient
) -> asyncio.Task[httpx.Response]:
    """One request for an asleep model "m", held in the gateway's queue."""
    source.add_model("m", [upstream.url], awake=False)
    task = asyncio.create_task(chat(gateway, http))
    await until(lambda: queued(gateway) == 1)
    return task


async def test_metrics_count_held_and_hold_time(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    task = await hold_one(gateway, source, upstreams[0], http)
    text = (await http.get(gateway.url + "/metrics")).text
    assert 'vllm_sleep_gateway_held_requests{model="m"} 1.0' in text
    source.set_awake("m", True)
    await task
    text = (await http.get(gateway.url + "/metrics")).text
    assert 'vllm_sleep_gateway_held_requests{model="m"} 0.0' in text
    assert 'vllm_sleep_gateway_hold_seconds_count{outcome="forwarded"} 1.0' in text
    assert 'vllm_sleep_gateway_requests_total{code="200",model="m"} 1.0' in text
    assert "vllm_sleep_gateway_upstream_latency_seconds_count" in text


async def test_a_model_deleted_while_held_is_404_and_its_hold_counted_as_rejected(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    task = await hold_one(gateway, source, upstreams[0], http)
    gateway.router.remove_model(ModelKey("team", "m"))
    resp = await task
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    assert queued(gateway) == 0
    text = (await http.get(gateway.url + "/metrics")).text
    assert 'vllm_sleep_gateway_hold_seconds_count{outcome="rejected"} 1.0' in text
    assert 'outcome="abandoned"' not in text  # the client did not leave
    assert upstreams[0].received == 0


# -- holding at the pod's agent -----------------------------------------------------------------


class AgentHold:
    """A fake agent's hold: requests wait until `release` is set (the engine is awake)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.waiting += 1
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
        return web.json_response({"served_by": request.host})


async def test_held_requests_wait_at_an_agent_that_can_hold_and_flow_on_its_release(
    gateway: Gateway,
    source: StaticSource,
    demand: MemoryDemand,
    upstreams: list[Upstream],
    http: httpx.AsyncClient,
) -> None:
    hold = AgentHold()
    upstreams[0].behaviour = hold
    source.add_model("m", [upstreams[0].url], awake=False, can_hold=True)
    tasks = [asyncio.create_task(chat(gateway, http)) for _ in range(5)]
    await until(lambda: hold.waiting == 5 and demand.count("m") == 1)
    assert queued(gateway) == 5  # still held from the gateway's point of view
    hold.release.set()  # the agent's engine woke: no pod condition change needed
    assert [r.status_code for r in await asyncio.gather(*tasks)] == [200] * 5
    assert demand.count("m") == 1
    await until(lambda: queued(gateway) == 0)


async def test_an_awake_replica_is_preferred_to_one_that_can_hold(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    source.add_model("m", [u.url for u in upstreams], awake=False, can_hold=True)
    source.set_awake("m", True, replica=1)
    responses = [await chat(gateway, http) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert (upstreams[0].received, upstreams[1].received) == (0, 4)


async def test_queue_bound_and_wake_timeout_hold_for_requests_waiting_at_an_agent(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    hold = AgentHold()  # never released: a model that is not woken
    upstreams[0].behaviour = hold
    wake = WakePolicy(max_queued=2, timeout=1.0)
    source.add_model("m", [upstreams[0].url], awake=False, wake=wake, can_hold=True)
    tasks = [asyncio.create_task(chat(gateway, http)) for _ in range(2)]
    await until(lambda: hold.waiting == 2)
    resp = await chat(gateway, http)
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "queue_full"
    for r in await asyncio.gather(*tasks):
        assert r.status_code == 503 and r.headers["Retry-After"] == "7"
        assert r.json()["error"]["code"] == "wake_timeout"
    assert queued(gateway) == 0
    hold.release.set()  # (this fake does not notice the hang-up; the real agent test does)


async def test_client_disconnect_while_held_at_an_agent_frees_the_slot(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    hold = AgentHold()
    upstreams[0].behaviour = hold
    wake = WakePolicy(max_queued=1)
    source.add_model("m", [upstreams[0].url], awake=False, wake=wake, can_hold=True)
    task = asyncio.create_task(chat(gateway, http))
    await until(lambda: hold.waiting == 1)
    task.cancel()
    await until(lambda: queued(gateway) == 0)
    hold.release.set()
    assert (await chat(gateway, http)).status_code == 200


async def test_a_released_request_is_running_and_not_cut_by_the_wake_deadline(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    hold = AgentHold()
    upstreams[0].behaviour = hold
    wake = WakePolicy(timeout=0.3)
    source.add_model("m", [upstreams[0].url], awake=False, wake=wake, can_hold=True)
    task = asyncio.create_task(chat(gateway, http))
    await until(lambda: hold.waiting == 1)
    source.set_awake("m", True)  # the watch shows the pod awake: the agent released it
    await until(lambda: queued(gateway) == 0)
    await asyncio.sleep(0.5)  # past the wake deadline while the engine still works on it
    hold.release.set()
    assert (await task).status_code == 200


async def test_an_agent_hold_timeout_before_the_deadline_is_held_again(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    async def hold_timeout(_: web.Request) -> web.StreamResponse:
        body = {"error": {"message": "held", "type": "x", "param": None, "code": "hold_timeout"}}
        return web.json_response(body, status=503, headers={"Retry-After": "5"})

    upstreams[0].behaviour = hold_timeout
    source.add_model("m", [upstreams[0].url], awake=False, can_hold=True)
    task = asyncio.create_task(chat(gateway, http))
    await until(lambda: upstreams[0].received >= 2)  # timed out at the agent, sent again
    assert not task.done() and queued(gateway) == 1
    upstreams[0].behaviour = None
    assert (await task).status_code == 200


async def test_a_request_sent_back_to_the_queue_keeps_its_place(
    gateway: Gateway, source: StaticSource, upstreams: list[Upstream], http: httpx.AsyncClient
) -> None:
    # The replica the watch showed awake fell asleep under the request (the agent refuses it,
    # never forwarding it) while a newcomer took the only queue slot: the first request was
    # admitted to the queue before it, and going back there is not a new admission.
    gate = asyncio.Event()

    async def fell_asleep(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        return await refusal(ErrorCode.ENGINE_UNAVAILABLE)(request)

    upstreams[0].behaviour = fell_asleep
    source.add_model("m", [upstreams[0].url], awake=False, wake=WakePolicy(max_queued=1))
    first = asyncio.create_task(chat(gateway, http))
    await until(lambda: queued(gateway) == 1)
    source.set_awake("m", True)
    await until(lambda: upstreams[0].received == 1 and queued(gateway) == 0)
    source.set_awake("m", False)  # the watch catches up: asleep again
    second = asyncio.create_task(chat(gateway, http))
    await until(lambda: queued(gateway) == 1)
    gate.set()  # the agent's refusal: `first` goes back to the queue
    await until(lambda: queued(gateway) == 2)
    assert not first.done()
    upstreams[0].behaviour = None
    source.set_awake("m", True)
    assert [(await t).status_code for t in (first, second)] == [200, 200]
    text = (await http.get(gateway.url + "/metrics")).text
    # One hold per request, observed once, when it finally left the queue.
    assert 'vllm_sleep_gateway_hold_seconds_count{outcome="forwarded"} 2.0' in text
