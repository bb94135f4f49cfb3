"""The gateway against the real control plane (issue 6's acceptance).

The gateway and the operator run as processes with their ServiceAccounts' RBAC; the gateway
learns models and replicas from its ModelDeployment and Pod watches and asks for wakes through
the demand Lease. Engines run the simulator's `legacy` profile, so a request reaching a sleeping
engine would be recorded as a violation: tests that send traffic end asserting there is none.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings

from conftest import Kube
from contract.test_gateway_fuzz import build, exchange
from contract.test_gateway_fuzz import requests as fuzz_requests

from .conftest import start_gateway
from .helpers import apply, chat, events, model_manifest, model_pods, wait_for, wait_phase

CHAT = "/v1/chat/completions"


def violations(kubelet_admin: httpx.Client, namespace: str) -> list[dict[str, object]]:
    data = kubelet_admin.get("/violations", params={"namespace": namespace}).json()
    return list(data["violations"])


def woke(kube: Kube, namespace: str, name: str) -> int:
    return sum(e.count or 1 for e in events(kube, namespace, name) if e.reason == "Woke")


def listed(gateway: str) -> dict[str, dict[str, Any]]:
    data = httpx.get(f"{gateway}/v1/models", timeout=10).json()["data"]
    return {m["id"]: m for m in data}


def wait_listed(gateway: str, name: str, state: str | None = None) -> dict[str, Any]:
    """Until the gateway's watch shows the model (in `state`, when given)."""

    def check() -> dict[str, Any] | None:
        entry = listed(gateway).get(name)
        return entry if entry and (state is None or entry["state"] == state) else None

    return wait_for(check, 30, what=f"{name} listed by the gateway in state {state}")


def gauge(gateway: str, metric: str, model: str) -> float:
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    m = re.search(rf'^{metric}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_concurrent_requests_to_two_asleep_models_wake_each_once(
    kube: Kube, namespace: str, gateway: str, kubelet_admin: httpx.Client
) -> None:
    # Served names are unique per test: the gateway watches every namespace.
    names = {"alpha": f"alpha-{namespace}", "beta": f"beta-{namespace}"}
    for name, served in names.items():
        apply(kube, model_manifest(name, namespace, servedModelName=served))
    for name, served in names.items():
        wait_phase(kube, namespace, name, "Asleep", timeout=120)
        wait_listed(gateway, served, "Asleep")
        assert woke(kube, namespace, name) == 0

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(CHAT, json=chat(served, f"req {i}", max_tokens=3))
                    for served in names.values()
                    for i in range(20)
                )
            )

    responses = asyncio.run(burst())
    bad = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not bad, bad
    for r in responses:
        assert r.json()["choices"][0]["message"]["content"]
    assert {r.json()["model"] for r in responses} <= set(names.values()) | {
        "meta-llama/Llama-3.1-8B-Instruct"
    }
    for name, served in names.items():
        wait_phase(kube, namespace, name, "Awake", timeout=30)
        wait_for(lambda n=name: woke(kube, namespace, n) >= 1, 30, what=f"{name} Woke event")
        assert woke(kube, namespace, name) == 1, [
            (e.reason, e.message) for e in events(kube, namespace, name)
        ]
        assert wait_listed(gateway, served, "Awake")["awake_replicas"] == 1
    assert violations(kubelet_admin, namespace) == []


def test_streaming_passes_tokens_through_as_they_are_generated(
    kube: Kube, namespace: str, gateway: str, kubelet_admin: httpx.Client
) -> None:
    served = f"stream-{namespace}"
    # 0.5 s per token at the suite's time scale (0.02) is 10 ms: 300 tokens take ~3 s.
    env = [
        {"name": "VLLM_SIM_PROFILE", "value": "legacy"},
        {"name": "VLLM_SIM_ITL_SECONDS", "value": "0.5"},
    ]
    apply(kube, model_manifest("stream", namespace, servedModelName=served, env=env))
    wait_phase(kube, namespace, "stream", "Asleep", timeout=120)
    wait_listed(gateway, served)
    pod = wait_for(
        lambda: [p for p in model_pods(kube, namespace, "stream") if p.status.pod_ip], what="pod"
    )[0]
    engine_metrics = f"http://{pod.status.pod_ip}:8000/metrics"

    def running() -> float:
        text = httpx.get(engine_metrics, timeout=10).text
        m = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    chunks: list[str] = []
    running_at_first_chunk = None
    body = chat(served, "tell me a long story", max_tokens=300, stream=True)
    with httpx.stream("POST", f"{gateway}{CHAT}", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            chunks.append(line[len("data: ") :])
            if running_at_first_chunk is None:
                # The first token is here and the engine is still generating the rest.
                running_at_first_chunk = running()
    assert running_at_first_chunk is not None and running_at_first_chunk >= 1
    assert chunks[-1] == "[DONE]"
    tokens = [json.loads(c) for c in chunks[:-1]]
    assert len(tokens) > 100  # more chunks followed the first one
    assert running() == 0
    assert violations(kubelet_admin, namespace) == []


def test_queue_full_wake_timeout_unknown_model_and_models_list(
    kube: Kube, namespace: str, gateway: str, kubelet_admin: httpx.Client
) -> None:
    held, refused = f"held-{namespace}", f"off-{namespace}"
    # Policy Asleep: the operator never wakes it, so held requests run into the wake timeout.
    apply(
        kube,
        model_manifest(
            "held",
            namespace,
            servedModelName=held,
            sleep={"policy": "Asleep"},
            wake={"maxQueued": 2, "timeout": "4s"},
        ),
    )
    apply(
        kube,
        model_manifest("off", namespace, servedModelName=refused, wake={"onRequest": False}),
    )
    for name in ("held", "off"):
        wait_phase(kube, namespace, name, "Asleep", timeout=120)
    models = {m: wait_listed(gateway, m, "Asleep") for m in (held, refused)}
    assert models[held]["object"] == "model" and models[held]["awake_replicas"] == 0
    assert models[held]["wake_on_request"] is True
    assert models[refused]["wake_on_request"] is False

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
            waiting = [asyncio.create_task(client.post(CHAT, json=chat(held))) for _ in range(2)]
            for _ in range(600):  # until the gateway holds both
                if gauge(gateway, "vllm_sleep_gateway_held_requests", held) >= 2:
                    break
                await asyncio.sleep(0.05)
            third = await client.post(CHAT, json=chat(held))
            return await asyncio.gather(*waiting), third

    timed_out, full = asyncio.run(scenario())
    assert full.status_code == 429, full.text
    assert full.json()["error"]["code"] == "queue_full"
    assert int(full.headers["Retry-After"]) > 0
    for r in timed_out:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "wake_timeout"
        assert int(r.headers["Retry-After"]) > 0

    r = httpx.post(f"{gateway}{CHAT}", json=chat(refused), timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_asleep", r.text
    assert int(r.headers["Retry-After"]) > 0

    r = httpx.post(f"{gateway}{CHAT}", json=chat(f"nope-{namespace}"), timeout=30)
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["type"] == "not_found_error"
    assert err["param"] == "model" and f"nope-{namespace}" in err["message"]

    assert woke(kube, namespace, "held") == woke(kube, namespace, "off") == 0
    final = listed(gateway)
    assert final[held]["state"] == final[refused]["state"] == "Asleep"
    assert violations(kubelet_admin, namespace) == []


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(req=fuzz_requests)
def test_fuzzed_malformed_requests_are_all_4xx(
    gateway: str, req: tuple[str, str, bytes, str, str]
) -> None:
    method, path = req[0], req[1]
    assume(not (method == "GET" and path in ("/v1/models", "/metrics")))  # well-formed reads
    host, port = gateway.removeprefix("http://").split(":")
    status = exchange((host, int(port)), build(*req))
    assert 400 <= status < 500, (status, req)


def test_gateway_serves_after_the_fuzz(gateway: str) -> None:
    assert httpx.get(f"{gateway}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{gateway}/v1/models", timeout=10).status_code == 200
    r = httpx.post(f"{gateway}{CHAT}", json=chat("no-such-model"), timeout=10)
    assert r.status_code == 404


@pytest.mark.usefixtures("operator")
def test_gateway_restart_relists_and_serves(
    kube: Kube, namespace: str, tmp_path: Path, kubelet_admin: httpx.Client
) -> None:
    served = f"again-{namespace}"
    apply(kube, model_manifest("again", namespace, servedModelName=served))
    wait_phase(kube, namespace, "again", "Asleep", timeout=120)
    second = start_gateway(kube, tmp_path)
    try:
        url = second.url
        wait_listed(url, served, "Asleep")
        second.kill()  # no goodbye: the next process relists from scratch
        second.start()
        second.wait_ready()
        r = httpx.post(f"{url}{CHAT}", json=chat(served), timeout=60)
        assert r.status_code == 200, r.text
        assert wait_listed(url, served, "Awake")["awake_replicas"] == 1
    finally:
        second.stop()
    assert violations(kubelet_admin, namespace) == []
