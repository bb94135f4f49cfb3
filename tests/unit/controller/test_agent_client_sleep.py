"""The operator asks for an idle sleep as such, so the agent can refuse it while requests run."""

from __future__ import annotations

import httpx
import pytest

from vllm_sleep.api.agent_protocol import (
    PARAM_GRANT_ONLY,
    PARAM_REASON,
    PARAM_WAKE_ON_REQUEST,
    REASON_IDLE,
)
from vllm_sleep.controller.agents import AgentClient

pytestmark = pytest.mark.unit

ASLEEP = {"state": "asleep", "level": 1, "version": 3}


@pytest.mark.parametrize("idle", [True, False])
async def test_idle_sleeps_carry_the_reason_and_forced_ones_do_not(idle: bool) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ASLEEP)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        report = await AgentClient(http).sleep("127.0.0.1", "t", 1, 30.0, idle=idle)
    assert report.state == "asleep"
    reason = seen[0].url.params.get(PARAM_REASON)
    assert reason == (REASON_IDLE if idle else None)


@pytest.mark.parametrize(("grant", "grant_only"), [(True, False), (False, True), (False, False)])
async def test_the_grant_and_a_grant_only_order_reach_the_agent_as_flags(
    grant: bool, grant_only: bool
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ASLEEP)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = AgentClient(http)
        await client.sleep("127.0.0.1", "t", 1, 30.0, wake_on_request=grant, grant_only=grant_only)
    params = seen[0].url.params
    assert params.get(PARAM_WAKE_ON_REQUEST) == ("1" if grant else None)
    assert params.get(PARAM_GRANT_ONLY) == ("1" if grant_only else None)
