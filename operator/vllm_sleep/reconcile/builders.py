"""Pure manifest builders: a ModelDeployment -> the objects the operator creates for it.

Plain dicts out (what the Kubernetes API takes), no client objects, no clock, no randomness:
the caller generates the control token, and identical inputs give identical manifests, so the
pod's spec hash is stable across operator restarts. The per-replica Pod is in `builders_pod`.
"""

from __future__ import annotations

from typing import Any

from ..api import demand as api_demand
from ..api import names
from ..api.model_deployment import ModelDeploymentSpec
from .builders_owner import Owner, child_labels, owner_from_body, owner_reference
from .builders_pod import GpuAttachment, model_pod, spec_hash

Manifest = dict[str, Any]

__all__ = [
    "GpuAttachment",
    "Manifest",
    "Owner",
    "child_labels",
    "control_token_secret",
    "demand_lease",
    "model_pod",
    "model_service",
    "owner_from_body",
    "owner_reference",
    "spec_hash",
]


def _metadata(owner: Owner, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": child_labels(owner, component),
        "ownerReferences": [owner_reference(owner)],
    }


def model_service(owner: Owner, spec: ModelDeploymentSpec) -> Manifest:
    """ClusterIP Service over the model's pods, port 8000 (the agents' public port).

    Not publishNotReadyAddresses: a pod is Ready only while its `awake` readiness gate is True,
    so the endpoints are exactly the awake replicas and a sleeping engine is never routed to.
    """
    meta = _metadata(owner, owner.name, names.COMPONENT_SERVICE)
    meta["annotations"] = {names.ANNOTATION_SERVED_MODEL: spec.served_name(owner.name)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": {
                names.LABEL_MODEL: owner.name,
                names.LABEL_COMPONENT: names.COMPONENT_MODEL_SERVER,
            },
            "ports": [
                {
                    "name": "http",
                    "port": names.PUBLIC_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
            "publishNotReadyAddresses": False,
        },
    }


def control_token_secret(owner: Owner, token: str) -> Manifest:
    """The agents' control token. Mutable on purpose: replacing its value rotates the token in
    place (pods mount it as a file that kubelet updates; docs/security.md "Rotating the control
    token")."""
    if not token:
        raise ValueError("control token must not be empty")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(
            owner, names.token_secret_name(owner.name), names.COMPONENT_CONTROL_TOKEN
        ),
        "type": "Opaque",
        "stringData": {names.SECRET_TOKEN_KEY: token},
    }


def demand_lease(owner: Owner) -> Manifest:
    """The Lease clients renew to ask for a wake; created empty, holder set by each client."""
    return api_demand.demand_lease(owner.name, owner.namespace, owner.uid)
