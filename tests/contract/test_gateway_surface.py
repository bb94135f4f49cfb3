"""The gateway's public surface past inference: per-pod utilities routed by the model they name
without waking anything, and /v1/models entries with vLLM's own fields (docs/gateway.md).

Gateway -> real pod agent -> simulated vLLM over loopback, as in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from vllm_sleep.agent import Agent
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.gateway.kube_parse import model_spec
from vllm_sleep.gateway.routing import ModelKey, WakePolicy
from vllm_sleep.gateway.sources import BackendSink
from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

from .test_gateway_agent import TOKEN, agent_for

pytestmark = pytest.mark.contract

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MSG = [{"role": "user", "content": "hello there"}]
# Each utility, a body vLLM accepts, and the field that shows the answer is the route's own.
UTILITIES: dict[str, tuple[dict[str, Any], str]] = {
    "/tokenize": ({"prompt": "hello there"}, "tokens"),
    "/detokenize": ({"tokens": [1, 2]}, "prompt"),
    "/v1/messages/count_tokens": ({"messages": MSG}, "input_tokens"),
}


@pytest.fixture
async def engine(host: EngineHost) -> SimEngine:
    env = {"VLLM_SIM_PROFILE": "0.34"}
    return await start(
        host, "org/m-1b", "--enable-sleep-mode", "--served-model-name", "m", "--host",
        "127.0.51.1", env=env,
    )  # fmt: skip


@pytest.fixture
async def agent(engine: SimEngine) -> AsyncIterator[Agent]:
    a = await agent_for(engine, "127.0.51.2")
    yield a
    await a.stop()


@pytest.fixture
async def asleep(agent: Agent, engine: SimEngine, http: httpx.AsyncClient) -> Agent:
    resp = await http.post(agent.control_url + "/sleep?level=1", headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert engine.state == "sleeping"
    return agent


def gateway(source: Any, demand: MemoryDemand, host: str = "127.0.51.3") -> Gateway:
    return Gateway(GatewayConfig(listen_host=host, port=0), source, demand)


@pytest.mark.parametrize("path", sorted(UTILITIES))
async def test_a_utility_reaches_an_asleep_pod_without_waking_it_or_asking_for_a_wake(
    asleep: Agent, engine: SimEngine, http: httpx.AsyncClient, path: str
) -> None:
    source = StaticSource("team")
    source.add_model("m", [asleep.public_url], awake=False, can_hold=True)
    demand = MemoryDemand()
    before = asleep.snapshot()
    async with gateway(source, demand) as g:
        body, key = UTILITIES[path]
        resp = await http.post(g.url + path, json={"model": "m", **body})
        assert resp.status_code == 200, resp.text
        assert key in resp.json()  # vLLM's answer, from the asleep pod
        assert g.router.table.queued(ModelKey("team", "m")) == 0
        metrics = (await http.get(g.url + "/metrics")).text
    assert demand.calls == []  # no demand Lease renewal: nothing asks the operator to wake it
    assert "vllm_sleep_gateway_hold_seconds_count" not in metrics  # never held
    after = asleep.snapshot()
    assert after["state"] == "asleep" and after["woken_by"] == before["woken_by"]
    assert after["held"] == 0 and after["last_activity"] == before["last_activity"]
    assert engine.state == "sleeping" and not engine.violations


async def test_a_utility_is_served_even_when_requests_may_not_wake_the_model(
    asleep: Agent, http: httpx.AsyncClient
) -> None:
    source = StaticSource("team")
    wake = WakePolicy(on_request=False)
    source.add_model("m", [asleep.public_url], awake=False, can_hold=True, wake=wake)
    async with gateway(source, MemoryDemand()) as g:
        body = {"model": "m", "prompt": "a b c"}
        resp = await http.post(g.url + "/tokenize", json=body)
        assert resp.status_code == 200 and resp.json()["count"] == 3
        chat = await http.post(g.url + "/v1/chat/completions", json={"model": "m", "messages": MSG})
        assert chat.status_code == 503 and chat.json()["error"]["code"] == "model_asleep"


async def test_an_awake_replica_is_preferred_and_a_dead_one_skipped(
    agent: Agent, engine: SimEngine, http: httpx.AsyncClient
) -> None:
    source = StaticSource("team")
    # Replica 0 refuses connections (nothing listens there); replica 1 is the real pod.
    source.add_model("m", ["http://127.0.51.9:1", agent.public_url], awake=False)
    source.set_awake("m", True, replica=1)
    async with gateway(source, MemoryDemand()) as g:
        for _ in range(3):
            resp = await http.post(g.url + "/tokenize", json={"model": "m", "prompt": "x"})
            assert resp.status_code == 200, resp.text
        metrics = (await http.get(g.url + "/metrics")).text
        assert "vllm_sleep_gateway_upstream_retries_total{" not in metrics  # the awake one
        source.set_awake("m", False, replica=1)  # both asleep: the dead one is tried, skipped
        resp = await http.post(g.url + "/detokenize", json={"model": "m", "tokens": [7]})
        assert resp.status_code == 200, resp.text
        metrics = (await http.get(g.url + "/metrics")).text
    assert 'vllm_sleep_gateway_upstream_retries_total{reason="connect"}' in metrics


@pytest.mark.parametrize("path", sorted(UTILITIES))
async def test_an_unknown_model_is_404_and_no_model_is_400_naming_the_field(
    agent: Agent, http: httpx.AsyncClient, path: str
) -> None:
    source = StaticSource("team")
    source.add_model("m", [agent.public_url])
    async with gateway(source, MemoryDemand()) as g:
        body, _ = UTILITIES[path]
        unknown = await http.post(g.url + path, json={"model": "nope", **body})
        assert unknown.status_code == 404, unknown.text
        assert unknown.json()["error"]["code"] == "model_not_found"
        assert unknown.json()["error"]["param"] == "model"
        missing = await http.post(g.url + path, json=body)
        assert missing.status_code == 400, missing.text
        error = missing.json()["error"]
        assert error["code"] == "missing_model" and error["param"] == "model"
        assert error["type"] == "invalid_request_error"
        assert "`model` is required" in error["message"]
        assert (await http.get(g.url + path)).status_code == 405


async def test_a_utility_with_no_replica_up_is_503_without_waiting(
    http: httpx.AsyncClient,
) -> None:
    source = StaticSource("team")
    source.add_model("m", [])  # scaled to zero, or every pod still loading
    demand = MemoryDemand()
    async with gateway(source, demand) as g:
        resp = await http.post(g.url + "/tokenize", json={"model": "m", "prompt": "x"})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "model_unavailable"
    assert resp.headers["retry-after"] == "10" and demand.calls == []


class ObjectsSource:
    """ModelDeployments as the apiserver lists them, read as the Kubernetes source reads them."""

    def __init__(self, objects: Sequence[dict[str, Any]]) -> None:
        self._objects = objects

    async def start(self, sink: BackendSink) -> None:
        sink.replace_models([s for o in self._objects if (s := model_spec(o)) is not None])
        sink.replace_pods([])

    async def stop(self) -> None:
        return None


def mdep(name: str, model: str, args: list[str]) -> dict[str, Any]:
    spec = {
        "model": model,
        "image": "vllm/vllm-openai:v0.11.0",
        "resources": {"gpuMemoryUtilization": 0.5, "weightsSize": "1Gi"},
        "args": args,
    }
    return {"metadata": {"name": name, "namespace": "team"}, "spec": spec}


async def test_models_entries_carry_vllms_root_and_max_model_len_when_the_spec_states_it(
    engine: SimEngine, agent: Agent, http: httpx.AsyncClient
) -> None:
    source = ObjectsSource(
        [
            mdep("m", "org/m-1b", ["--max-model-len", "8192"]),  # what the simulator was given
            mdep("other", "/models/other", []),
        ]
    )
    async with gateway(source, MemoryDemand()) as g:
        listed = (await http.get(g.url + "/v1/models")).json()["data"]
    vllm = (await http.get(agent.public_url + "/v1/models")).json()["data"][0]
    by_id = {m["id"]: m for m in listed}
    ours = by_id["m"]
    for field in ("id", "object", "root", "parent", "max_model_len"):
        assert ours[field] == vllm[field], field
    assert by_id["other"]["root"] == "/models/other"
    assert "max_model_len" not in by_id["other"]  # the model's config decides: not invented


async def test_a_utility_needs_the_api_key_like_every_routed_request(
    agent: Agent, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-one\n")
    source = StaticSource("team")
    source.add_model("m", [agent.public_url])
    cfg = GatewayConfig(listen_host="127.0.51.4", port=0, api_keys_file=str(keys))
    async with Gateway(cfg, source, MemoryDemand()) as g:
        body = {"model": "m", "prompt": "x"}
        refused = await http.post(g.url + "/tokenize", json=body)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        good = {"Authorization": "Bearer sk-one"}
        assert (await http.post(g.url + "/tokenize", json=body, headers=good)).status_code == 200
