"""The model-server Pod of one replica (layout: docs/interfaces.md "Pod layout").

vLLM listens on 127.0.0.1:8001 only; the agent, a native sidecar, owns the pod's ports 8000
(OpenAI allowlist) and 8002 (control). Routing is decided by the `vllm-sleep.io/awake`
readiness gate, which the operator sets, never by vLLM's health.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..api import names
from ..api.gpu_pool import GPUPoolSpec, Sharing
from ..api.model_deployment import ModelDeploymentSpec
from .builders_containers import agent_container, log_volume, token_volume, vllm_container
from .builders_owner import Owner, child_labels, owner_reference
from .pool_engines import share_bytes

DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
HOSTNAME_LABEL = "kubernetes.io/hostname"
GPU_CLAIM_NAME = "gpu"  # the pod-local name of the shared device's ResourceClaim
# Fixed rather than derived from spec.sleep.drainTimeout: a timeout tweak must not change the
# pod's shape (and so reload every replica); the agent drains on SIGTERM within this bound.
TERMINATION_GRACE_SECONDS = 120


@dataclass(frozen=True)
class GpuAttachment:
    """Where a replica's GPUs come from, as decided by the scheduler from its GPUPool.

    `claim`: the device's shared ResourceClaim (pool sharing DRA). Without a claim the pod asks
    the device plugin for `resources.gpus` of the pool's (or the default) extended resource.
    `node` and `device`: the pool scheduler's seat ("<node>/<device>"); the pod is pinned to the
    node and annotated with the device (docs/scheduler.md "In the operator").
    """

    pool: GPUPoolSpec | None = None
    claim: str | None = None
    node: str | None = None
    device: str | None = None


def model_pod(
    owner: Owner,
    spec: ModelDeploymentSpec,
    replica: int,
    *,
    agent_image: str,
    gpu: GpuAttachment | None = None,
) -> dict[str, Any]:
    """Replica `replica` of the model; annotated with the hash of its own shape."""
    if replica < 0:
        raise ValueError(f"replica index must be >= 0, not {replica}")
    gpu = gpu or GpuAttachment()
    served = spec.served_name(owner.name)
    labels = {**(spec.pod_labels or {}), **child_labels(owner, names.COMPONENT_MODEL_SERVER)}
    labels[names.LABEL_REPLICA] = str(replica)
    labels[names.LABEL_SERVED_MODEL] = _label_value(served)
    annotations = {**(spec.pod_annotations or {}), names.ANNOTATION_SERVED_MODEL: served}
    if gpu.device:
        annotations[names.ANNOTATION_DEVICE] = gpu.device

    vllm = vllm_container(spec, served, _memory(spec), _gpu_limits(spec, gpu), gpu.pool)
    if gpu.claim:
        vllm["resources"]["claims"] = [{"name": GPU_CLAIM_NAME}]
    pod_spec: dict[str, Any] = {
        "initContainers": [agent_container(owner, spec, agent_image, _engine_memory(spec, gpu))],
        "containers": [vllm],
        "volumes": [log_volume(), token_volume(owner)],
        "readinessGates": [{"conditionType": names.CONDITION_AWAKE}],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        # Service links would inject e.g. VLLM_PORT=tcp://... for a Service named "vllm", which
        # vLLM reads as its own VLLM_PORT setting and fails to start.
        "enableServiceLinks": False,
        # Model pods never talk to the Kubernetes API.
        "automountServiceAccountToken": False,
    }
    _placement(pod_spec, spec, gpu)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": names.pod_name(owner.name, replica),
            "namespace": owner.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": pod_spec,
    }
    annotations[names.ANNOTATION_SPEC_HASH] = spec_hash(pod)
    if gpu.pool is not None:
        annotations[names.ANNOTATION_DEVICE_BYTES] = str(share_bytes(spec, gpu.pool))
    return pod


# Derived from what is hashed (the share from the utilization argument), so never hashed: a pod
# built before the annotation existed keeps its hash, and is not replaced for lack of it.
_UNHASHED = frozenset({names.ANNOTATION_SPEC_HASH, names.ANNOTATION_DEVICE_BYTES})


def spec_hash(pod: dict[str, Any]) -> str:
    """Hash of everything that shapes the pod (spec, labels, annotations but `_UNHASHED`).

    Hashing the built manifest rather than chosen spec fields means nothing can be forgotten:
    whatever changes the pod changes the hash; what does not (idleTimeout, replicas) does not.
    """
    meta = pod["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _UNHASHED}
    shape = {"labels": meta.get("labels") or {}, "annotations": annotations, "spec": pod["spec"]}
    canonical = json.dumps(shape, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _memory(spec: ModelDeploymentSpec) -> tuple[str | None, str | None]:
    """(request, limit) of the vLLM container's memory.

    Level-1 sleep pins the weights in host memory inside the pod's cgroup: without weightsSize
    in the limit the kernel OOM-kills the pod on its first sleep. With no user memory given,
    only the request carries the weights (the scheduler must count them) and no limit is set.
    """
    res = spec.resources
    offload = res.weights_size if spec.sleep.level == 1 else None
    if res.memory is not None:
        total = res.memory + offload if offload is not None else res.memory
        return str(total), str(total)
    return (str(offload), None) if offload is not None else (None, None)


def _engine_memory(spec: ModelDeploymentSpec, gpu: GpuAttachment) -> int | None:
    """The engine's awake device bytes, as the pool scheduler counts them (one device per
    pooled replica); unknown without a pool, which says how large its devices are.

    Unknown too when `kvCacheSize` sizes the KV cache: the engine then maps weights + KV +
    its own overhead, less than the utilization share its startup check needs, so share - freed
    would overstate the residual by the unused part of the share. Such replicas keep the pool's
    `sleepResidual` (docs/agent.md, "Residual memory")."""
    if gpu.pool is None or spec.resources.kv_cache_size is not None:
        return None
    return share_bytes(spec, gpu.pool)


def _gpu_limits(spec: ModelDeploymentSpec, gpu: GpuAttachment) -> dict[str, str]:
    if gpu.claim:
        return {}
    pool = gpu.pool
    if pool is not None and pool.sharing == Sharing.DRA:
        raise ValueError("a DRA pool needs the device's ResourceClaim (GpuAttachment.claim)")
    resource = pool.device_resource_name if pool is not None else DEFAULT_GPU_RESOURCE
    return {resource: str(spec.resources.gpus)}


def _placement(pod_spec: dict[str, Any], spec: ModelDeploymentSpec, gpu: GpuAttachment) -> None:
    pool = gpu.pool
    # The pool's selector wins on conflicts: it is what says where its GPUs are.
    selector = {**(spec.node_selector or {}), **((pool.node_selector or {}) if pool else {})}
    if gpu.node:
        selector[HOSTNAME_LABEL] = gpu.node
    if selector:
        pod_spec["nodeSelector"] = selector
    tolerations = [t.to_wire() for t in spec.tolerations]
    tolerations += [t.to_wire() for t in pool.tolerations] if pool else []
    # GPU nodes are commonly tainted with their device resource (the NVIDIA GPU operator does
    # it); a pod asking for that resource tolerates it, as the ExtendedResourceToleration
    # admission plugin would add on clusters that enable it.
    for resource in _gpu_limits(spec, gpu):
        toleration = {"key": resource, "operator": "Exists", "effect": "NoSchedule"}
        if toleration not in tolerations:
            tolerations.append(toleration)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if gpu.claim:
        pod_spec["resourceClaims"] = [{"name": GPU_CLAIM_NAME, "resourceClaimName": gpu.claim}]
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [s.to_wire() for s in spec.image_pull_secrets]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name


def _label_value(text: str) -> str:
    """A served model name as a label value (<= 63, [A-Za-z0-9._-], alphanumeric ends)."""
    value = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in text)
    return value[:63].strip("._-")
