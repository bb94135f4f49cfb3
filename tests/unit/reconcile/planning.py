"""Builders of plan inputs for the reconcile tests: a ModelDeployment, pods, agent reports."""

from __future__ import annotations

from typing import Any

from vllm_sleep.api.agent_protocol import AgentState, StateReport
from vllm_sleep.api.model_deployment import ModelDeployment
from vllm_sleep.api.names import ANNOTATION_SPEC_HASH, CONDITION_AWAKE, LABEL_REPLICA
from vllm_sleep.reconcile.builders import GpuAttachment, model_pod, owner_from_body
from vllm_sleep.reconcile.observe import ObservedPod, observe_pod
from vllm_sleep.reconcile.placement import Placement
from vllm_sleep.reconcile.plan import Observed

NOW = 1_800_000_000.0
AGENT_IMAGE = "ghcr.io/vllm-sleep/vllm-sleep-operator:test"


def body(
    replicas: int = 1,
    *,
    sleep: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    generation: int = 3,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "uid": "uid-m",
            "generation": generation,
            "annotations": annotations or {},
        },
        "spec": {
            "model": "org/model",
            "image": "vllm/vllm-openai:v0.33.0",
            "replicas": replicas,
            "resources": {"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi"},
            "sleep": sleep or {},
        },
    }
    if status is not None:
        out["status"] = status
    return out


def model(raw: dict[str, Any] | None = None) -> ModelDeployment:
    return ModelDeployment.from_body(raw or body())


def desired_pod(raw: dict[str, Any], replica: int) -> dict[str, Any]:
    md = model(raw)
    return model_pod(owner_from_body(raw), md.spec, replica, agent_image=AGENT_IMAGE)


def pod(
    raw: dict[str, Any],
    replica: int = 0,
    *,
    uid: str | None = None,
    ip: str | None = "10.0.0.1",
    routed: bool = False,
    phase: str = "Running",
    deleting: bool = False,
    spec_hash: str | None = None,
    annotations: dict[str, str] | None = None,
    restarts: int = 0,
) -> ObservedPod:
    """The pod the operator would have created for `replica`, as the apiserver shows it."""
    p = desired_pod(raw, replica)
    meta = p["metadata"]
    meta["uid"] = uid or f"uid-{meta['name']}"
    meta["annotations"] = {**meta.get("annotations", {}), **(annotations or {})}
    if spec_hash is not None:
        meta["annotations"][ANNOTATION_SPEC_HASH] = spec_hash
    if deleting:
        meta["deletionTimestamp"] = "2027-01-15T08:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": CONDITION_AWAKE, "status": "True" if routed else "False"}],
    }
    if ip:
        status["podIP"] = ip
    if restarts:
        status["containerStatuses"] = [
            {
                "name": "vllm",
                "restartCount": restarts,
                "ready": False,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "message": "CUDA out of memory"}},
            }
        ]
    p["status"] = status
    assert meta["labels"][LABEL_REPLICA] == str(replica)
    return observe_pod(p)


def report(state: AgentState = AgentState.AWAKE, **kw: Any) -> StateReport:
    return StateReport(state=state, version=1, **kw)


def observed(
    raw: dict[str, Any] | None = None,
    pods: list[ObservedPod] | None = None,
    reports: dict[str, StateReport] | None = None,
    **kw: Any,
) -> Observed:
    raw = raw or body()
    kw.setdefault("placement", Placement(GpuAttachment()))
    return Observed(
        model=model(raw),
        owner=owner_from_body(raw),
        agent_image=AGENT_IMAGE,
        pods=pods or [],
        reports=reports or {},
        now=kw.pop("now", NOW),
        **kw,
    )
