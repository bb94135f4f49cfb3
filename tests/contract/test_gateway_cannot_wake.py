"""A model the operator reports no wake can serve, over real loopback HTTP: 503 at once.

The real Gateway with a StaticSource (the test sets what the ModelDeployment's status would
say) and MemoryDemand. docs/gateway.md, Hold semantics: `model_unavailable`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from vllm_sleep.api.openai_errors import ErrorCode
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.gateway.routing import CannotWake, ModelKey, WakePolicy

pytestmark = pytest.mark.contract

CHAT = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}
ZERO = CannotWake("ScaledToZero", "it has 0 replicas (spec.replicas is 0)")


@pytest.fixture
async def world() -> AsyncIterator[tuple[Gateway, StaticSource, MemoryDemand]]:
    source, demand = StaticSource("team"), MemoryDemand()
    cfg = GatewayConfig(listen_host="127.0.7.100", port=0, retry_after=7)
    async with Gateway(cfg, source, demand) as g:
        yield g, source, demand


async def test_a_model_scaled_to_zero_is_503_model_unavailable_at_once(
    world: tuple[Gateway, StaticSource, MemoryDemand],
) -> None:
    gateway, source, demand = world
    # wake.timeout far past the client's own timeout: a hold would fail this test.
    source.add_model("m", [], served_name="llama", wake=WakePolicy(timeout=600.0), cannot_wake=ZERO)
    async with httpx.AsyncClient(timeout=20, trust_env=False) as http:
        resp = await http.post(gateway.url + "/v1/chat/completions", json=CHAT)
        metrics = (await http.get(gateway.url + "/metrics")).text
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "7"
    error = resp.json()["error"]
    assert error["code"] == ErrorCode.MODEL_UNAVAILABLE and error["type"] == "server_error"
    assert error["message"] == (
        "The model `llama` cannot be woken (ScaledToZero): it has 0 replicas (spec.replicas is 0)"
    )
    assert demand.calls == [] and gateway.router.table.queued(ModelKey("team", "m")) == 0
    assert 'vllm_sleep_gateway_requests_total{code="503",model="llama"} 1.0' in metrics
