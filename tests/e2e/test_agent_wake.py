"""The agent's own wake (docs/agent.md, "Wake on request"): outside a pool, a sleep grants the
agent the wake of a held request, so a request wakes the model with the operator stopped; the
operator, back, accounts for that wake and idle-sleeps the model later. In a pool it never does.

The simulator runs vLLM's `legacy` profile: a request reaching a sleeping engine would crash it,
and the sim-kubelet's violation log would show it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
from kubernetes import client

from conftest import Kube

from .conftest import Proc
from .helpers import apply, chat, events, model_manifest, model_pods, wait_for, wait_phase
from .test_pools import OneGpu, one_gpu, pooled, pools, remove_models  # noqa: F401 (fixtures)

WOKEN_AT = "vllm-sleep.io/woken-at"


def violations(kubelet_admin: httpx.Client, namespace: str) -> list[dict[str, object]]:
    data = kubelet_admin.get("/violations", params={"namespace": namespace}).json()
    return list(data["violations"])


def agent(kube: Kube, namespace: str, model: str) -> tuple[str, Callable[[], dict[str, Any]]]:
    """The model's (only) pod's public URL, and a reader of its agent's `/state`."""
    core = client.CoreV1Api(kube.api_client)
    secret = core.read_namespaced_secret(f"{model}-control-token", namespace)
    token = base64.b64decode(secret.data["token"]).decode()
    pods = wait_for(
        lambda: [p for p in model_pods(kube, namespace, model) if p.status.pod_ip], what="pod IP"
    )
    ip = pods[0].status.pod_ip

    def state() -> dict[str, Any]:
        r = httpx.get(
            f"http://{ip}:8002/state", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        return answer

    return f"http://{ip}:8000", state


def reasons(kube: Kube, namespace: str, model: str) -> list[tuple[str, str]]:
    return [(e.reason, e.message) for e in events(kube, namespace, model)]


def test_a_request_wakes_the_model_with_the_operator_stopped_and_the_operator_accounts_for_it(
    kube: Kube, namespace: str, operator: Proc, kubelet_admin: httpx.Client
) -> None:
    apply(kube, model_manifest("self", namespace, sleep={"idleTimeout": "3s"}))
    wait_phase(kube, namespace, "self", "Asleep", timeout=120)
    url, state = agent(kube, namespace, "self")
    wait_for(lambda: state()["wake_on_request"], 30, what="the pre-warm sleep's grant")

    operator.stop()
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=chat("self"), timeout=60)
        assert r.status_code == 200, r.text
        woken = state()
        assert (woken["state"], woken["woken_by"]) == ("awake", "request")
        assert not woken["wake_on_request"]  # consumed
    finally:
        operator.start()

    # The operator, back, counts the wake it did not order: memory, Event, routing; then the
    # idle timer (from that wake) puts the model to sleep again, granting the next wake.
    pod = model_pods(kube, namespace, "self")[0].metadata.name
    core = client.CoreV1Api(kube.api_client)
    wanted = f"{woken['wake_started']:.3f}"
    wait_for(
        lambda: (
            core.read_namespaced_pod(pod, namespace).metadata.annotations.get(WOKEN_AT) == wanted
        ),
        60,
        what="woken-at written from the agent's wake",
    )
    wait_phase(kube, namespace, "self", "Asleep", timeout=60)
    said = reasons(kube, namespace, "self")
    assert any(r == "Woke" and "woken by its agent" in m for r, m in said), said
    assert not any(r == "Waking" for r, _ in said), said  # the operator never woke it
    assert wait_for(lambda: state()["wake_on_request"], 30, what="the idle sleep's grant")
    # And again with the operator running: the agent wakes it, the operator orders no wake.
    r = httpx.post(f"{url}/v1/chat/completions", json=chat("self"), timeout=60)
    assert r.status_code == 200, r.text
    assert state()["woken_by"] == "request"
    wait_for(
        lambda: sum(r == "Woke" for r, _ in reasons(kube, namespace, "self")) >= 2,
        60,
        what="the second wake accounted for",
    )
    assert violations(kubelet_admin, namespace) == []


def test_a_pooled_model_is_never_woken_by_its_agent(
    kube: Kube,
    namespace: str,
    operator: Proc,
    kubelet_admin: httpx.Client,
    one_gpu: OneGpu,  # noqa: F811
) -> None:
    apply(kube, pooled("inpool", namespace, one_gpu.pool, 0.4, sleep={"idleTimeout": "1h"}))
    wait_phase(kube, namespace, "inpool", "Asleep", timeout=180)
    url, state = agent(kube, namespace, "inpool")
    assert state()["wake_on_request"] is False  # the pool's plan orders every wake
    r = httpx.post(f"{url}/v1/chat/completions", json=chat("inpool"), timeout=120)
    assert r.status_code == 200, r.text
    assert state()["woken_by"] == "operator"
    assert any(r == "Waking" for r, _ in reasons(kube, namespace, "inpool"))
    assert violations(kubelet_admin, namespace) == []
    remove_models(kube, namespace)
