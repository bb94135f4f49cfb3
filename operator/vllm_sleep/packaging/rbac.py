"""The RBAC rules of the operator and the gateway: the one place the chart and deploy/ read.

Minimal by construction: each rule names the component that needs it. Cluster tests run the
operator with a token of a ServiceAccount bound to exactly these rules.
"""

from __future__ import annotations

from typing import Any

from ..api.names import GROUP

Rule = dict[str, list[str]]


def operator_rules() -> list[Rule]:
    return [
        # ModelDeployments and GPUPools: read and watch; status is the operator's memory; the
        # metadata patch removes the finalizer earlier builds left (never spec).
        {
            "apiGroups": [GROUP],
            "resources": ["modeldeployments", "gpupools"],
            "verbs": ["get", "list", "watch", "patch"],
        },
        {
            "apiGroups": [GROUP],
            "resources": ["modeldeployments/status", "gpupools/status"],
            "verbs": ["get", "patch", "update"],
        },
        # Model pods are created directly (each replica has its own sleep state); the readiness
        # gate lives in pods/status; per-replica memory lives in pod annotations.
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["get", "list", "watch", "create", "delete", "patch"],
        },
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
        {
            "apiGroups": [""],
            "resources": ["services"],
            "verbs": ["get", "list", "watch", "create", "patch"],
        },
        # The per-model control token. `get` on secrets is needed to hand it to the agent client.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
        # Demand Leases: created per model, watched for renewals.
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch", "create", "patch"],
        },
        # DRA: one named ResourceClaim per shared device (GPU pools).
        {
            "apiGroups": ["resource.k8s.io"],
            "resources": ["resourceclaims"],
            "verbs": ["get", "list", "watch", "create", "delete"],
        },
        # ... and the devices of a DRA pool: its DeviceClass and the nodes' ResourceSlices.
        {
            "apiGroups": ["resource.k8s.io"],
            "resources": ["resourceslices", "deviceclasses"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        # Events for every transition and failure.
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        # kopf discovers the CRDs it serves.
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    ]


def gateway_rules() -> list[Rule]:
    return [
        {
            "apiGroups": [GROUP],
            "resources": ["modeldeployments"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        # Demand: renew (or create) the model's Lease when a request is held.
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "patch"],
        },
    ]


def cluster_role(
    name: str, rules: list[Rule], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, **({"labels": labels} if labels else {})},
        "rules": rules,
    }


def cluster_role_binding(name: str, role: str, sa: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
    }
