"""What the field learned about sleep (docs/vllm.md "Field facts"), through the agent, in front of
the simulator: the engine drain on vLLM 0.17-0.27, the neighbour assertion's retry, a wake that
failed after the memory came back, a sleep the agent did not order, and the KV-only tier.

A recording proxy between the agent and the engine shows which vLLM calls the agent made, in
order, and can break one answer after vLLM carried the call out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start, until

from .agent_wait import wait_state

pytestmark = pytest.mark.contract

TOKEN = "field-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COMPLETION = {"model": "m", "prompt": "hello", "max_tokens": 2}


class Recorder:
    """A reverse proxy to one engine that records `METHOD /path?query` of every call."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[str] = []
        # raw path+query -> times to answer 500 *after* forwarding (vLLM did the work)
        self.break_after: dict[str, int] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Recorder:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.6.1", 0)
        await site.start()
        self.url = f"http://127.0.6.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    def vllm_calls(self) -> list[str]:
        """The sleep-mode calls (not health polls, version reads or inference)."""
        dev = ("/sleep", "/wake_up", "/collective_rpc", "/reset_prefix_cache", "/release_kv")
        return [c for c in self.calls if c.split(" ", 1)[1].startswith(dev)]

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        target = request.raw_path
        self.calls.append(f"{request.method} {target}")
        headers = {k: v for k, v in request.headers.items() if k.lower() == "content-type"}
        async with self._session.request(
            request.method, self.upstream + target, data=await request.read(), headers=headers
        ) as resp:
            body, status = await resp.read(), resp.status
            ctype = resp.headers.get("Content-Type", "application/json")
        if self.break_after.get(target, 0) > 0:
            self.break_after[target] -= 1
            return web.json_response(
                {"error": {"message": "injected by the test", "type": "InternalServerError"}},
                status=500,
            )
        return web.Response(status=status, body=body, headers={"Content-Type": ctype})


def config(upstream: str, **overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "listen_host": "127.0.5.2",
        "public_port": 0,
        "control_port": 0,
        "upstream": upstream,
        "control_token": TOKEN,
        "hold_timeout": 20.0,
        "poll_interval": 0.01,
        "health_interval": 0.02,
        "settle_time": 0.0,
        **overrides,
    }
    return AgentConfig.model_validate(values)


@contextlib.asynccontextmanager
async def agent_before(
    engine: SimEngine, **overrides: object
) -> AsyncIterator[tuple[Agent, Recorder]]:
    async with Recorder(engine.url) as rec, Agent(config(rec.url, **overrides)) as agent:
        await wait_state(agent, "awake")
        yield agent, rec


async def control(http: httpx.AsyncClient, agent: Agent, path: str) -> httpx.Response:
    return await http.post(agent.control_url + path, headers=AUTH)


async def engine(host: EngineHost, profile: str, *args: str, **env: str) -> SimEngine:
    return await start(
        host,
        "m",
        "--enable-sleep-mode",
        "--host",
        "127.0.4.9",
        *args,
        env={"VLLM_SIM_PROFILE": profile, **env},
    )


async def sim_state(http: httpx.AsyncClient, e: SimEngine) -> dict[str, Any]:
    state: dict[str, Any] = (await http.get(e.url + "/_sim/state")).json()
    return state


# -- 0.17-0.27: drain the engine before it sleeps ------------------------------------------

# Decodes sent straight to vLLM (from inside the pod): the agent's own drain never sees them.
SLOW = ("--itl-seconds", "1")  # x the host's 0.002: 2 ms a token


async def decode_past_the_agent(
    http: httpx.AsyncClient, e: SimEngine, tokens: int
) -> asyncio.Task[httpx.Response]:
    body = {"model": "m", "prompt": "hi", "max_tokens": tokens, "ignore_eos": True}
    task = asyncio.create_task(http.post(e.url + "/v1/completions", json=body))
    await until(lambda: e.sched.running > 0)
    return task


async def test_on_0_27_a_sleep_during_decodes_is_preceded_by_a_drain(
    host: EngineHost, http: httpx.AsyncClient
) -> None:
    e = await engine(host, "0.33", "--vllm-version", "0.27.0", *SLOW)
    async with agent_before(e) as (agent, rec):
        decode = await decode_past_the_agent(http, e, 100)  # ends within the bound
        resp = await control(http, agent, "/sleep?level=1&drain_timeout=30")
        assert resp.status_code == 200, resp.text
        assert rec.vllm_calls() == [
            "POST /sleep?level=0&mode=wait",
            "POST /sleep?level=1&mode=wait",
        ]
        finished = (await decode).json()
        assert finished["choices"][0]["finish_reason"] == "length"  # ran to its end, not aborted
        assert e.state == "sleeping" and e.level == 1
    assert e.violations == [] and not e.dead.is_set()


async def test_on_0_27_requests_outlasting_the_bound_resume_the_engine_and_refuse_the_sleep(
    host: EngineHost, http: httpx.AsyncClient
) -> None:
    e = await engine(host, "0.33", "--vllm-version", "0.27.0", *SLOW)
    async with agent_before(e) as (agent, rec):
        decode = await decode_past_the_agent(http, e, 1500)  # 3 s: past the 1 s bound
        resp = await control(http, agent, "/sleep?level=1&drain_timeout=0")
        assert resp.status_code == 504, resp.text
        assert "still running in vLLM" in resp.json()["error"]["message"]
        assert resp.json()["state"]["state"] == "awake"
        assert rec.vllm_calls() == [
            "POST /sleep?level=0&mode=wait",
            "POST /wake_up?tags=scheduling",
        ]
        assert (await decode).json()["choices"][0]["finish_reason"] == "length"
        served = await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
        assert served.status_code == 200
        assert e.state == "awake"
    assert e.violations == [] and not e.dead.is_set()


@pytest.mark.parametrize(
    ("profile", "version"), [("0.33", "0.28.0"), ("0.34", None), ("legacy", None)]
)
async def test_other_versions_sleep_in_one_call(
    host: EngineHost, http: httpx.AsyncClient, profile: str, version: str | None
) -> None:
    e = await engine(host, profile, *(("--vllm-version", version) if version else ()))
    async with agent_before(e) as (agent, rec):
        assert (await control(http, agent, "/sleep?level=1")).status_code == 200
        mode = "" if profile == "legacy" else "&mode=wait"
        assert rec.vllm_calls() == [f"POST /sleep?level=1{mode}"]


# -- the neighbour assertion ----------------------------------------------------------------


@pytest.mark.parametrize("profile", ["0.34", "0.33", "legacy"])
async def test_a_sleep_failing_once_with_the_neighbour_assertion_succeeds_on_retry(
    host: EngineHost, http: httpx.AsyncClient, profile: str
) -> None:
    e = await engine(host, profile, "--fail-sleeps", "1")
    async with agent_before(e) as (agent, rec):
        resp = await control(http, agent, "/sleep?level=1")
        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "asleep" and resp.json()["last_error"] is None
        assert len([c for c in rec.vllm_calls() if c.startswith("POST /sleep")]) == 2
        assert e.injected_failures == 1 and not e.sleep_unconfirmed
        assert e.device.held_by(e) == e.residual
        assert (await control(http, agent, "/wake")).status_code == 200
        served = await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
        assert served.status_code == 200
    assert e.violations == []


# -- a wake whose later step failed ------------------------------------------------------------


@pytest.mark.parametrize("profile", ["0.34", "0.33"])
async def test_a_level_2_wake_whose_last_step_errs_fails_and_the_engine_sleeps_again(
    host: EngineHost, http: httpx.AsyncClient, profile: str
) -> None:
    e = await engine(host, profile)
    async with agent_before(e) as (agent, rec):
        assert (await control(http, agent, "/sleep?level=2")).status_code == 200
        rec.break_after["/wake_up?tags=kv_cache"] = 1
        resp = await control(http, agent, "/wake")
        assert resp.status_code == 502, resp.text
        err = resp.json()["error"]
        assert err["vllm_status"] == 500 and "injected" in err["vllm_body"]
        state = resp.json()["state"]
        assert (state["state"], state["level"]) == ("asleep", 2)
        assert "/wake_up" in state["last_error"]
        assert e.state == "sleeping"  # put back to sleep: never served half-woken
        resp = await control(http, agent, "/wake")  # the operator's retry
        assert resp.status_code == 200, resp.text
        assert resp.json()["last_error"] is None
        served = await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
        assert served.status_code == 200
    assert e.violations == []  # incl. garbage_weights: the retry reloaded


async def test_an_old_engines_wake_whose_prefix_reset_errs_fails(
    host: EngineHost, http: httpx.AsyncClient
) -> None:
    # ≤0.10.0 keeps the prefix cache across a sleep: the agent resets it after the wake.
    e = await engine(host, "legacy", "--vllm-version", "0.9.2")
    async with agent_before(e) as (agent, rec):
        assert (await control(http, agent, "/sleep?level=1")).status_code == 200
        rec.break_after["/reset_prefix_cache"] = 1
        held = asyncio.create_task(http.post(agent.public_url + "/v1/completions", json=COMPLETION))
        resp = await control(http, agent, "/wake")
        assert resp.status_code == 502 and resp.json()["state"]["state"] == "asleep"
        assert rec.vllm_calls()[-3:] == [
            "POST /wake_up",
            "POST /reset_prefix_cache",
            "POST /sleep?level=1",
        ]
        assert not held.done() and e.state == "sleeping"
        assert (await control(http, agent, "/wake")).status_code == 200
        assert (await held).status_code == 200
    assert e.violations == []  # the held request never met the stale cache or a sleeping engine


# -- a sleep the agent did not order ----------------------------------------------------------


@pytest.mark.parametrize("profile", ["0.34", "0.33", "legacy"])
async def test_a_sleep_ordered_by_someone_else_is_noticed_and_requests_are_held(
    host: EngineHost, http: httpx.AsyncClient, profile: str
) -> None:
    e = await engine(host, profile)
    async with agent_before(e) as (agent, _rec):
        before = agent.board.version
        assert (await http.post(e.url + "/sleep?level=1")).status_code == 200  # from the pod
        await wait_state(agent, "asleep")
        state = (await http.get(agent.control_url + "/state", headers=AUTH)).json()
        assert state["level"] is None and state["version"] > before
        assert "did not make" in state["last_error"]
        held = asyncio.create_task(http.post(agent.public_url + "/v1/completions", json=COMPLETION))
        await until(lambda: agent.gate.held == 1)
        assert (await control(http, agent, "/wake")).status_code == 200
        assert (await held).status_code == 200
    assert e.violations == []  # on legacy one forwarded request would have killed it


# -- the KV-only tier (level 0) ------------------------------------------------------------


@pytest.mark.parametrize("profile", ["0.34", "0.33"])
async def test_level_0_releases_and_remaps_only_the_kv_cache(
    host: EngineHost, http: httpx.AsyncClient, profile: str
) -> None:
    e = await engine(host, profile)
    async with agent_before(e) as (agent, rec):
        resp = await control(http, agent, "/sleep?level=0")
        assert resp.status_code == 200, resp.text
        assert (resp.json()["state"], resp.json()["level"]) == ("asleep", 0)
        assert rec.vllm_calls() == [
            "POST /sleep?level=0&mode=wait",
            "POST /release_kv_cache_memory",
        ]
        assert e.device.held_by(e) == e.residual + e.cfg.weights_bytes  # the weights stayed
        assert (await control(http, agent, "/wake")).status_code == 200
        moved = (await sim_state(http, e))["transfers"]
        assert moved["weights_to_host"] == moved["weights_to_gpu"] == 0
        assert moved["weight_bytes_copied"] == 0 and moved["kv_releases"] == moved["kv_remaps"] == 1
        assert moved["last_wake"] == {
            "tags": ["kv_cache"],
            "weights_copied": False,
            "kv_remapped": True,
        }
        served = await http.post(agent.public_url + "/v1/completions", json=COMPLETION)
        assert served.status_code == 200
    assert e.violations == []


@pytest.mark.parametrize(("profile", "version"), [("legacy", None), ("0.33", "0.30.0")])
async def test_level_0_is_refused_before_0_31(
    host: EngineHost, http: httpx.AsyncClient, profile: str, version: str | None
) -> None:
    e = await engine(host, profile, *(("--vllm-version", version) if version else ()))
    async with agent_before(e) as (agent, rec):
        resp = await control(http, agent, "/sleep?level=0")
        assert resp.status_code == 400 and "≥0.31" in resp.json()["error"]["message"]
        assert rec.vllm_calls() == [] and e.state == "awake"
