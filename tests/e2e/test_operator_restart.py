"""The operator is killed (SIGKILL) in the middle of a sleep and of a wake; after its restart the
model converges to its desired state with no duplicate action and no stuck phase."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
from kubernetes import client

from conftest import Kube

from .conftest import Proc
from .helpers import (
    apply,
    events,
    model_manifest,
    model_pods,
    sim_state,
    wait_for,
    wait_phase,
)


def agent_probe(kube: Kube, namespace: str, model: str) -> Callable[[], str | None]:
    """Reads the state of the model's (first) agent with one HTTP request: its address and token
    are looked up once, so a poll keeps up with a transition of a second on a busy host."""
    core = client.CoreV1Api(kube.api_client)
    secret = core.read_namespaced_secret(f"{model}-control-token", namespace)
    token = base64.b64decode(secret.data["token"]).decode()
    pods = [p for p in model_pods(kube, namespace, model) if p.status.pod_ip]
    if not pods:
        return lambda: None
    url = f"http://{pods[0].status.pod_ip}:8002/state"

    def state() -> str | None:
        try:
            r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        except httpx.HTTPError:
            return None
        answer: str = r.json()["state"]
        return answer

    return state


def agent_state(kube: Kube, namespace: str, model: str) -> str | None:
    return agent_probe(kube, namespace, model)()


def count(kube: Kube, namespace: str, model: str, reason: str) -> int:
    return sum(1 for e in events(kube, namespace, model) if e.reason == reason)


# Big weights and a slowed engine make transitions take seconds, so the kill lands inside one.
SLOW: dict[str, Any] = {
    "resources": {"gpuMemoryUtilization": 0.95, "weightsSize": "60Gi"},
    "env": [
        {"name": "VLLM_SIM_PROFILE", "value": "legacy"},
        {"name": "VLLM_SIM_TIME_SCALE", "value": "5"},
    ],
}


def test_killed_during_sleep_converges_without_repeating_it(
    kube: Kube, namespace: str, operator: Proc
) -> None:
    apply(kube, model_manifest("slow-sleep", namespace, **SLOW, sleep={"level": 1}))
    # The pre-warm sleep (the slow first one) starts right after load; kill the operator in it.
    wait_for(
        lambda: agent_state(kube, namespace, "slow-sleep") in ("draining", "sleeping"),
        timeout=120,
        what="sleep in progress",
    )
    operator.kill()
    operator.start()
    wait_phase(kube, namespace, "slow-sleep", "Asleep", timeout=120)
    # The engine itself counts the weight copies its sleeps made: one, not one per operator.
    assert sim_state(kube, namespace, "slow-sleep")["transfers"]["weights_to_host"] == 1
    assert count(kube, namespace, "slow-sleep", "Waking") == 0


def test_killed_during_wake_converges_without_repeating_it(
    kube: Kube, namespace: str, operator: Proc
) -> None:
    # Level 2 wakes reload the weights from disk: slow enough to be interrupted once the engine
    # runs 4x slower than SLOW's (the reload then lasts seconds, which a poll on a busy host,
    # e.g. beside other xdist workers, still catches).
    slower = [
        {"name": "VLLM_SIM_PROFILE", "value": "legacy"},
        {"name": "VLLM_SIM_TIME_SCALE", "value": "20"},
    ]
    manifest = model_manifest(
        "slow-wake", namespace, **{**SLOW, "env": slower}, sleep={"level": 2, "idleTimeout": "1h"}
    )
    manifest["spec"]["resources"].pop("weightsSize")
    apply(kube, manifest)
    wait_phase(kube, namespace, "slow-wake", "Asleep", timeout=120)
    probe = agent_probe(kube, namespace, "slow-wake")  # the pod stays: a wake does not move it
    subprocess.run(
        [sys.executable, "-m", "vllm_sleep.cli", "wake", "slow-wake", "-n", namespace],
        check=True,
        env={"KUBECONFIG": str(kube.kubeconfig), "PATH": "/usr/bin:/bin"},
        capture_output=True,
    )
    wait_for(lambda: probe() == "waking", timeout=60, interval=0.02, what="wake in progress")
    operator.kill()
    operator.start()
    wait_phase(kube, namespace, "slow-wake", "Awake", timeout=120)
    assert count(kube, namespace, "slow-wake", "Waking") == 1
    # Awake and routed: the pod is Ready again (readiness gate True).
    pod = model_pods(kube, namespace, "slow-wake")[0]
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
