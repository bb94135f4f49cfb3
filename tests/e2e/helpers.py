"""Small helpers for e2e tests: manifests, waiting, reading status through the API."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import yaml

from conftest import Kube

T = TypeVar("T")

SIM_IMAGE = "vllm/vllm-openai:v0.33.0"  # the sim-kubelet runs any `vllm serve` as the simulator


def model_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "image": SIM_IMAGE,
        "replicas": 1,
        "env": [{"name": "VLLM_SIM_PROFILE", "value": "legacy"}],
        "resources": {"gpuMemoryUtilization": 0.4, "weightsSize": "2Gi"},
        "sleep": {"level": 1, "idleTimeout": "1h", "policy": "Auto"},
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def apply(kube: Kube, manifest: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def wait_for(
    pred: Callable[[], T | None],
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as e:  # transient API errors while waiting
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


def get_model(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    obj: dict[str, Any] = client.CustomObjectsApi(kube.api_client).get_namespaced_custom_object(
        "vllm-sleep.io", "v1alpha1", namespace, "modeldeployments", name
    )
    return obj


def phase(kube: Kube, namespace: str, name: str) -> str | None:
    return (get_model(kube, namespace, name).get("status") or {}).get("phase")


def wait_phase(
    kube: Kube, namespace: str, name: str, want: str, timeout: float = 90.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_model(kube, namespace, name)
        return obj if (obj.get("status") or {}).get("phase") == want else None

    return wait_for(check, timeout, what=f"{namespace}/{name} phase {want}")


def model_pods(kube: Kube, namespace: str, name: str) -> list[Any]:
    from kubernetes import client

    pods = client.CoreV1Api(kube.api_client).list_namespaced_pod(
        namespace, label_selector=f"vllm-sleep.io/model={name}"
    )
    return [p for p in pods.items if not p.metadata.deletion_timestamp]


def events(kube: Kube, namespace: str, name: str) -> list[Any]:
    from kubernetes import client

    evs = client.CoreV1Api(kube.api_client).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return list(evs.items)


def chat(
    model: str, content: str = "hello", max_tokens: int = 4, stream: bool = False
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def sim_state(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    """The model's engine's own record, at vLLM's loopback port inside its pod."""
    from vllm_sleep.api import names
    from vllm_sleep.testing.kubelet.ips import private_twin

    ip = next(p.status.pod_ip for p in model_pods(kube, namespace, name) if p.status.pod_ip)
    r = httpx.get(f"http://{private_twin(ip)}:{names.VLLM_PORT}/_sim/state", timeout=10)
    r.raise_for_status()
    state: dict[str, Any] = r.json()
    return state
