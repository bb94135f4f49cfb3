"""No client reaches a vLLM 0.34 route that is not OpenAI's through the agent's public port.

Every route the simulator registers for the 0.34 profile (dev routes, RL routes, `/checkpoint/*`,
`/load`, ...) minus the agent's allowlist is tried with its own methods and with path tricks:
dot segments, encoded slashes and dots, case, doubled and trailing slashes, path parameters. A
recording proxy stands between the agent and the engine: not one of those requests may arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.api.routes import ROUTES as ALLOWED
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.server import ROUTES as SIM_ROUTES
from vllm_sleep.testing.sim.testkit import start

from .agent_wait import wait_state
from .test_agent_field import Recorder

pytestmark = pytest.mark.contract

BLOCKED = sorted(
    (path, method)
    for path, route in SIM_ROUTES.items()
    if "0.34" in route.profiles and path not in ALLOWED
    for method in route.methods
)


def tricks(path: str) -> list[str]:
    """Spellings of `path` that a careless proxy might map onto it."""
    head, _, rest = path[1:].partition("/")
    out = [
        path,
        path.upper(),
        path + "/",
        "/" + path,  # //sleep
        "/." + path,  # /./sleep
        "/v1/.." + path,
        "/v1/%2e%2e" + path,
        "/v1/%2E%2E" + path,
        "/v1/chat/completions/../.." + path,
        "/v1/models/..%2f.." + path,
        path + ";v1",
        path + "%00",
        path + "?model=m",
        "/%" + format(ord(path[1]), "02x") + path[2:],  # /%73leep
    ]
    if rest:
        out.append(f"/{head}%2F{rest}")  # /checkpoint%2Fprepare
        out.append(f"/{head}%2f{rest}")
    return out


async def raw_request(host: str, port: int, method: str, target: str) -> int:
    """One request with `target` exactly as written (no client-side normalisation)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: pod\r\nContent-Type: application/json\r\n"
            "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return int(status_line.split()[1])


@pytest.fixture
async def engine(host: EngineHost) -> SimEngine:
    env = {"VLLM_SIM_PROFILE": "0.34"}
    return await start(host, "m", "--enable-sleep-mode", "--host", "127.0.4.20", env=env)


@pytest.fixture
async def guarded(engine: SimEngine) -> AsyncIterator[tuple[Agent, Recorder]]:
    async with Recorder(engine.url) as rec:
        config = AgentConfig.model_validate(
            {
                "listen_host": "127.0.5.4",
                "public_port": 0,
                "control_port": 0,
                "upstream": rec.url,
                "control_token": "allowlist-s3cret",
                "poll_interval": 0.01,
                "health_interval": 3600,  # no supervisor polls while the tricks run
            }
        )
        async with Agent(config) as agent:
            await wait_state(agent, "awake")
            yield agent, rec


def test_the_blocked_set_covers_every_kind_of_non_openai_route() -> None:
    paths = {p for p, _ in BLOCKED}
    assert {"/checkpoint/prepare", "/checkpoint/restore", "/checkpoint/status"} <= paths
    assert {"/sleep", "/wake_up", "/is_sleeping", "/collective_rpc", "/pause"} <= paths
    assert {"/release_kv_cache_memory", "/update_weights", "/scale_elastic_ep", "/load"} <= paths
    assert not paths & {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"}


@pytest.mark.parametrize(("path", "method"), BLOCKED)
async def test_no_spelling_of_a_non_openai_route_reaches_vllm(
    engine: SimEngine, guarded: tuple[Agent, Recorder], path: str, method: str
) -> None:
    agent, rec = guarded
    assert agent.public_port is not None
    rec.calls.clear()
    for target in tricks(path):
        status = await raw_request("127.0.5.4", agent.public_port, method, target)
        assert status in (400, 404), (method, target, status)
    assert rec.calls == []  # nothing reached the engine
    assert engine.state == "awake" and engine.checkpoint == "RUNNING"
    assert engine.violations == []
