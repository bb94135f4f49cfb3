"""The objects of deploy/base, built from the chart's default values (values.py) and the RBAC
rules (rbac.py). The chart's templates render the same objects with default values; a cluster
test compares the two object by object.
"""

from __future__ import annotations

import copy
from typing import Any

from ..api.names import CONTROL_PORT, PUBLIC_PORT
from . import names as n
from .rbac import cluster_role, cluster_role_binding, gateway_rules, operator_rules
from .values import Resources, Scheduling, Values

Obj = dict[str, Any]
# The gateway re-reads the file when the Secret's projection changes (no restart for new keys).
API_KEYS_DIR = "/etc/vllm-sleep/api-keys"
API_KEYS_KEY = "keys"


def _meta(name: str, namespace: str | None, component: str | None = None) -> Obj:
    labels = n.labels(component)
    meta: Obj = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = labels
    return meta


def _resources(r: Resources) -> Obj:
    return {"requests": dict(r.requests), "limits": dict(r.limits)}


def _container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _deployment(
    v: Values, name: str, replicas: int, container: Obj, strategy: str, sched: Scheduling
) -> Obj:
    pod: Obj = {
        "serviceAccountName": name,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if v.imagePullSecrets:
        pod["imagePullSecrets"] = copy.deepcopy(v.imagePullSecrets)
    for key, value in (
        ("nodeSelector", sched.nodeSelector),
        ("tolerations", sched.tolerations),
        ("affinity", sched.affinity),
    ):
        if value:
            pod[key] = copy.deepcopy(value)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, n.NAMESPACE, name),
        "spec": {
            "replicas": replicas,
            "strategy": {"type": strategy},
            "selector": {"matchLabels": n.selector(name)},
            "template": {
                "metadata": {"labels": n.labels(name)},
                "spec": pod,
            },
        },
    }


def operator_deployment(v: Values) -> Obj:
    o = v.operator
    image = v.image.reference()
    container: Obj = {
        "name": n.OPERATOR,
        "image": image,
        "imagePullPolicy": v.image.pullPolicy,
        "command": ["vllm-sleep"],
        "args": [
            "operator",
            f"--metrics-bind=0.0.0.0:{o.metricsPort}",
            f"--health-bind=0.0.0.0:{o.healthPort}",
            f"--log-level={o.logLevel}",
            *(["--leader-elect"] if o.leaderElection else []),
            *(f"--namespace={ns}" for ns in o.watchNamespaces),
            *expose_args(v),
            *o.extraArgs,
        ],
        "ports": [
            {"name": "metrics", "containerPort": o.metricsPort},
            {"name": "health", "containerPort": o.healthPort},
        ],
        # POD_NAME: the leader Lease's holderIdentity (plus a random part); POD_NAMESPACE: where
        # the Lease lives.
        "env": [
            {"name": "VLLM_SLEEP_AGENT_IMAGE", "value": o.agentImage or image},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10},
        "resources": _resources(o.resources),
        "securityContext": _container_security(),
    }
    # With leader election a new pod waits as a standby until the old one releases the Lease,
    # so a rolling update never has two acting; without it, Recreate keeps them apart.
    strategy = "RollingUpdate" if o.leaderElection else "Recreate"
    return _deployment(v, n.OPERATOR, o.replicas, container, strategy, o.scheduling)


def expose_args(v: Values) -> list[str]:
    """One served-name policy for both processes (api.served_names): same flags, same order."""
    return [f"--expose={ns}={','.join(p)}" for ns, p in sorted(v.exposedNames.items())]


def gateway_deployment(v: Values) -> Obj:
    g = v.gateway
    container: Obj = {
        "name": n.GATEWAY,
        "image": v.image.reference(),
        "imagePullPolicy": v.image.pullPolicy,
        "command": ["vllm-sleep"],
        "args": [
            "gateway",
            "--host=0.0.0.0",
            f"--port={g.port}",
            *([f"--workers={g.workers}"] if g.workers else []),
            *(f"--namespace={ns}" for ns in g.watchNamespaces),
            *expose_args(v),
            *g.extraArgs,
        ],
        "ports": [{"name": "http", "containerPort": g.port}],
        # POD_NAME: the holderIdentity the gateway writes on demand Leases.
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        # Out of the Service until its first list of models is in, and at once when it begins
        # to stop (it answers /readyz 503 then; held requests get 503 shutting_down).
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        # Request bodies are held whole (up to --max-body-bytes, 32 MiB) and parsed for `model`:
        # a few large ones at once need more memory than the operator.
        "resources": _resources(g.resources),
        "securityContext": _container_security(),
    }
    # With several workers their metric files live in the temporary directory (docs/gateway.md,
    # "Worker processes"); the root filesystem is read-only.
    container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[Obj] = [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]
    if g.apiKeysSecret:
        container["args"].append(f"--api-keys-file={API_KEYS_DIR}/{API_KEYS_KEY}")
        container["volumeMounts"].append(
            {"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True}
        )
        volumes.append({"name": "api-keys", "secret": {"secretName": g.apiKeysSecret}})
    deployment = _deployment(v, n.GATEWAY, g.replicas, container, "RollingUpdate", g.scheduling)
    deployment["spec"]["template"]["spec"]["volumes"] = volumes
    return deployment


def services(v: Values) -> list[Obj]:
    def svc(name: str, kind: str, port: Obj) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, n.NAMESPACE, name),
            "spec": {"type": kind, "selector": n.selector(name), "ports": [port]},
        }

    s = v.gateway.service
    port: Obj = {"name": "http", "port": s.port, "targetPort": "http"}
    if s.nodePort is not None and s.type != "ClusterIP":
        port["nodePort"] = s.nodePort
    gateway = svc(n.GATEWAY, s.type, port)
    if s.annotations:
        gateway["metadata"]["annotations"] = dict(s.annotations)
    operator_port = {"name": "metrics", "port": v.operator.metricsPort, "targetPort": "metrics"}
    return [svc(n.OPERATOR, "ClusterIP", operator_port), gateway]


def disruption_budgets(v: Values) -> list[Obj]:
    out = []
    for name, d in (
        (n.OPERATOR, v.operator.podDisruptionBudget),
        (n.GATEWAY, v.gateway.podDisruptionBudget),
    ):
        if d.enabled:
            out.append(
                {
                    "apiVersion": "policy/v1",
                    "kind": "PodDisruptionBudget",
                    "metadata": _meta(name, n.NAMESPACE, name),
                    "spec": {
                        "maxUnavailable": d.maxUnavailable,
                        "selector": {"matchLabels": n.selector(name)},
                    },
                }
            )
    return out


def _in_namespace(namespace: str) -> Obj:
    return {"matchLabels": {"kubernetes.io/metadata.name": namespace}}


def _tcp(port: int | str) -> Obj:
    return {"protocol": "TCP", "port": port}


def network_policies(v: Values) -> list[Obj]:
    """Ingress only: who may open a connection to what. Egress is left open (the apiserver's
    address is cluster-specific, and model pods download weights)."""
    p = v.networkPolicy
    if not p.enabled:
        return []
    monitoring = (
        [{"namespaceSelector": _in_namespace(p.monitoringNamespace)}]
        if p.monitoringNamespace
        else []
    )

    def policy(name: str, namespace: str, pod_selector: Obj, ingress: list[Obj]) -> Obj:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(name, namespace),
            "spec": {"podSelector": pod_selector, "policyTypes": ["Ingress"], "ingress": ingress},
        }

    def from_component(name: str) -> Obj:
        return {
            "namespaceSelector": _in_namespace(n.NAMESPACE),
            "podSelector": {"matchLabels": n.selector(name)},
        }

    # The operator serves only /metrics (and /healthz for the kubelet, which CNIs let through).
    operator_ingress = [{"from": monitoring, "ports": [_tcp("metrics")]}] if monitoring else []
    gateway_rule: Obj = {"ports": [_tcp("http")]}
    if p.gatewayFrom:  # /metrics is on the same port: Prometheus stays allowed
        gateway_rule["from"] = [copy.deepcopy(peer) for peer in p.gatewayFrom] + monitoring
    out = [
        policy(n.OPERATOR, n.NAMESPACE, {"matchLabels": n.selector(n.OPERATOR)}, operator_ingress),
        policy(n.GATEWAY, n.NAMESPACE, {"matchLabels": n.selector(n.GATEWAY)}, [gateway_rule]),
    ]
    public_from = [from_component(n.GATEWAY)] + [
        {"namespaceSelector": _in_namespace(ns)} for ns in p.publicPortFromNamespaces
    ]
    for ns in p.modelNamespaces:
        out.append(
            policy(
                n.MODEL_POLICY,
                ns,
                {"matchLabels": n.MODEL_POD_SELECTOR},
                [
                    # The control port: sleep/wake/state for the operator (its token is checked
                    # too); /metrics there for Prometheus when a monitoring namespace is set.
                    {
                        "from": [from_component(n.OPERATOR), *monitoring],
                        "ports": [_tcp(CONTROL_PORT)],
                    },
                    # The public port: only through the gateway (its API keys), unless opened.
                    {"from": public_from, "ports": [_tcp(PUBLIC_PORT)]},
                ],
            )
        )
    return out


def service_accounts() -> list[Obj]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, n.NAMESPACE, name)}
        for name in (n.OPERATOR, n.GATEWAY)
    ]


def rbac() -> list[Obj]:
    out: list[Obj] = []
    for name, rules in ((n.OPERATOR, operator_rules()), (n.GATEWAY, gateway_rules())):
        out.append(cluster_role(name, rules, n.labels(name)))
        binding = cluster_role_binding(name, name, name, n.NAMESPACE)
        binding["metadata"]["labels"] = n.labels(name)
        out.append(binding)
    return out


def base(v: Values | None = None) -> dict[str, list[Obj]]:
    """file name -> objects of deploy/base (crds.yaml and kustomization.yaml aside)."""
    v = v or Values()
    return {
        "namespace.yaml": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(n.NAMESPACE, None)}
        ],
        "rbac.yaml": service_accounts() + rbac(),
        "operator.yaml": [operator_deployment(v)],
        "gateway.yaml": [gateway_deployment(v)],
        "services.yaml": services(v),
        "disruption-budgets.yaml": disruption_budgets(v),
        "network-policies.yaml": network_policies(v),
    }
