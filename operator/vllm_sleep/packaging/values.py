"""The Helm chart's values: one pydantic model gives values.yaml (its defaults), values.schema.json
(what `helm install` checks) and the values reference in docs/install.md.

deploy/base is rendered from the same defaults, so the chart with default values and the kustomize
base describe the same objects. The example GPUPool/ModelDeployment specs are checked against the
CRDs' own schemas (spliced in by `schema()`), so a bad example fails `helm install` exactly as
`kubectl apply` would fail it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..api.crds import all_crds
from ..api.names import GPU_POOL_PLURAL, GROUP, MODEL_DEPLOYMENT_PLURAL
from ..api.quantity import QUANTITY_PATTERN

# OCI distribution's grammar, simplified: lower-case path components, optional registry port.
REPOSITORY_PATTERN = (
    r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
DIGEST_PATTERN = r"^(?:sha256:[a-f0-9]{64})?$"
DNS_LABEL = r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$"
# Prometheus durations (30s, 1m, 1h30m).
PROM_DURATION = r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$"


def _or_empty(pattern: str) -> str:
    """The anchored pattern, or the empty string (a value left unset)."""
    return f"^(?:{pattern.removeprefix('^').removesuffix('$')})?$"


NamespaceName = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
# Names that may be left empty: "" means the value is unset (see each field's description).
OptionalNamespace = Annotated[str, Field(pattern=_or_empty(DNS_LABEL), max_length=63)]
OptionalSecretName = Annotated[str, Field(pattern=_or_empty(DNS_SUBDOMAIN), max_length=253)]


class _Values(BaseModel):
    # A misspelt value name fails `helm install` instead of being ignored.
    model_config = ConfigDict(extra="forbid")


class Image(_Values):
    repository: str = Field(
        "ghcr.io/vllm-sleep/vllm-sleep-operator",
        pattern=REPOSITORY_PATTERN,
        max_length=255,
        description="image of the operator, the gateway and (by default) the agent sidecar",
    )
    tag: str = Field("0.1.0", pattern=TAG_PATTERN, description="image tag")
    digest: str = Field("", pattern=DIGEST_PATTERN, description="sha256:..., wins over the tag")
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="of the operator and gateway containers"
    )

    def reference(self) -> str:
        return (
            f"{self.repository}@{self.digest}" if self.digest else f"{self.repository}:{self.tag}"
        )


ResourceName = Literal["cpu", "memory", "ephemeral-storage"]
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN)] | Annotated[int, Field(ge=0)]


class Resources(_Values):
    requests: dict[ResourceName, Quantity] = Field(
        default_factory=dict, description="cpu / memory / ephemeral-storage quantities"
    )
    limits: dict[ResourceName, Quantity] = Field(
        default_factory=dict, description="no CPU limit by default (throttling stalls streams)"
    )


class Disruption(_Values):
    enabled: bool = Field(True, description="create a PodDisruptionBudget")
    maxUnavailable: int = Field(1, ge=1, description="pods a voluntary disruption may take")


class Scheduling(_Values):
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="pod nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="pod tolerations")
    affinity: dict[str, Any] = Field(default_factory=dict, description="pod affinity")


class Operator(_Values):
    # More than one replica needs leader election, or two would act at once (schema: if/then).
    # The rule is on leaderElection, so helm's error points there: "at
    # '/operator/leaderElection': value must be true".
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"replicas": {"minimum": 2}}, "required": ["replicas"]},
            "then": {"properties": {"leaderElection": {"const": True}}},
        }
    )

    leaderElection: bool = Field(
        True,
        description="act only while holding the leader Lease (docs/reliability.md); needed "
        "for replicas > 1, and lets a rolling update hand over without overlap",
    )
    replicas: int = Field(
        1,
        ge=0,
        description="2+ keeps a standby that takes over within 17 s (needs leaderElection)",
    )
    resources: Resources = Resources(
        requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "512Mi"}
    )
    watchNamespaces: list[NamespaceName] = Field(
        default_factory=list, description="reconcile only these namespaces (empty: every namespace)"
    )
    agentImage: str = Field(
        "", description="agent sidecar image of model pods (empty: the operator's image)"
    )
    logLevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="--log-level"
    )
    extraArgs: list[str] = Field(
        default_factory=list, description="more `vllm-sleep operator` flags"
    )
    metricsPort: int = Field(8080, ge=1, le=65535, description="/metrics (and its Service)")
    healthPort: int = Field(8081, ge=1, le=65535, description="/healthz (liveness probe)")
    podDisruptionBudget: Disruption = Disruption()
    scheduling: Scheduling = Scheduling()

    @field_validator("replicas")
    @classmethod
    def _one_unless_elected(cls, replicas: int, info: ValidationInfo) -> int:
        if replicas > 1 and info.data.get("leaderElection") is False:
            raise ValueError("more than one replica needs leaderElection: true")
        return replicas


class Service(_Values):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        "ClusterIP", description="the gateway Service's type"
    )
    port: int = Field(80, ge=1, le=65535, description="the gateway Service's port")
    nodePort: int | None = Field(
        None, ge=30000, le=32767, description="fixed node port (NodePort, LoadBalancer)"
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="e.g. a cloud load balancer's settings"
    )


class Gateway(_Values):
    replicas: int = Field(2, ge=0, description="stateless: any number")
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="processes per pod serving its port, each with its own watches and hold "
        "queues (--workers); 0: one per CPU the pod may use (its CPU limit), at most 4",
    )
    resources: Resources = Resources(
        requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "1Gi"}
    )
    port: int = Field(8000, ge=1, le=65535, description="container port (API and /metrics)")
    service: Service = Service()
    watchNamespaces: list[NamespaceName] = Field(
        default_factory=list,
        description="route to models in these namespaces only (empty: every namespace)",
    )
    apiKeysSecret: OptionalSecretName = Field(
        "", description="Secret whose key `keys` lists API keys, one per line (empty: no auth)"
    )
    extraArgs: list[str] = Field(
        default_factory=list,
        description="more `vllm-sleep gateway` flags, e.g. --expose=team-a=team-a-*",
    )
    podDisruptionBudget: Disruption = Disruption()
    scheduling: Scheduling = Scheduling()


class NetworkPolicy(_Values):
    enabled: bool = Field(True, description="create the NetworkPolicies (docs/install.md)")
    modelNamespaces: list[NamespaceName] = Field(
        default_factory=lambda: ["default"],
        description="namespaces holding ModelDeployments: their model pods get a policy",
    )
    publicPortFromNamespaces: list[NamespaceName] = Field(
        default_factory=list,
        description="namespaces besides the gateway's that may call model pods' public port",
    )
    gatewayFrom: list[dict[str, Any]] = Field(
        default_factory=list,
        description="NetworkPolicyPeers allowed to call the gateway (empty: anyone)",
    )
    monitoringNamespace: OptionalNamespace = Field(
        "", description="namespace of Prometheus: may scrape every metrics port"
    )


class Monitor(_Values):
    enabled: bool = Field(False, description="create it (needs the Prometheus Operator's CRDs)")
    interval: str = Field("30s", pattern=PROM_DURATION, description="scrape interval")
    labels: dict[str, str] = Field(
        default_factory=dict, description="extra labels (your Prometheus' selector)"
    )


class Labelled(_Values):
    enabled: bool = Field(False, description="create the PrometheusRule of alerts")
    labels: dict[str, str] = Field(
        default_factory=dict, description="extra labels (your Prometheus' ruleSelector)"
    )


class Dashboard(_Values):
    enabled: bool = Field(False, description="create the Grafana dashboard ConfigMap")
    labels: dict[str, str] = Field(
        default_factory=lambda: {"grafana_dashboard": "1"},
        description="labels the Grafana sidecar selects on",
    )
    namespace: OptionalNamespace = Field(
        "", description="where the ConfigMap goes (empty: release)"
    )


class Metrics(_Values):
    serviceMonitor: Monitor = Field(
        Monitor(), description="operator and gateway (Prometheus Operator)"
    )
    podMonitor: Monitor = Field(Monitor(), description="model pods' agents")
    prometheusRule: Labelled = Labelled()
    dashboard: Dashboard = Dashboard()


class Example(_Values):
    enabled: bool = Field(False, description="create the example object")
    name: str = Field(pattern=DNS_LABEL, max_length=63, description="its name")
    spec: dict[str, Any]


class NamespacedExample(Example):
    namespace: str = Field("default", pattern=DNS_LABEL, max_length=63, description="its namespace")


# Small enough for a test cluster (the sim-kubelet's GPUs, kind with the project image as vLLM).
EXAMPLE_POOL = Example(
    name="example-pool",
    spec={"deviceMemory": "80Gi", "sharing": "TimeSlicing", "slotsPerDevice": 2},
)
EXAMPLE_MODEL = NamespacedExample(
    name="example-model",
    spec={
        "model": "Qwen/Qwen2.5-0.5B-Instruct",
        "image": "vllm/vllm-openai:v0.33.0",
        "resources": {"gpuMemoryUtilization": 0.3, "weightsSize": "1Gi"},
        "sleep": {"level": 1, "idleTimeout": "10m"},
        "placement": {"pool": "example-pool"},
    },
)


class Examples(_Values):
    gpuPool: Example = EXAMPLE_POOL
    modelDeployment: NamespacedExample = EXAMPLE_MODEL


class Values(_Values):
    image: Image = Image()
    imagePullSecrets: list[dict[str, str]] = Field(
        default_factory=list, description="`{name: ...}` of Secrets for the operator and gateway"
    )
    operator: Operator = Operator()
    gateway: Gateway = Gateway()
    exposedNames: dict[NamespaceName, list[Annotated[str, Field(min_length=1, max_length=253)]]] = (
        Field(
            default_factory=dict,
            description=(
                "multi-tenant installs: namespace -> glob patterns of the model names it may "
                "serve (--expose on operator and gateway); once set, unlisted namespaces serve "
                "nothing (empty: every name)"
            ),
        )
    )
    networkPolicy: NetworkPolicy = NetworkPolicy()
    metrics: Metrics = Metrics()
    examples: Examples = Examples()


def crd_spec_schema(plural: str) -> dict[str, Any]:
    """The `spec` schema of one of our CRDs, as the apiserver checks it (OpenAPI 3.0)."""
    crd = all_crds()[f"{plural}.{GROUP}.yaml"]
    version = crd["spec"]["versions"][0]
    spec: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema 2020-12 (what Helm checks values with): boolean
    exclusiveMinimum/Maximum become numbers, `nullable` admits null. CEL rules
    (x-kubernetes-validations) are left to the apiserver."""
    if isinstance(node, list):
        return [json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: json_schema(v) for k, v in node.items() if k != "nullable"}
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if out.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
        elif out.get(exclusive) is False:
            del out[exclusive]
    if node.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def schema() -> dict[str, Any]:
    """values.schema.json: pydantic's schema, example specs replaced by the CRDs' schemas."""
    out: dict[str, Any] = _untitled(Values.model_json_schema())
    defs = out["$defs"]
    defs["Example"]["properties"]["spec"] = json_schema(crd_spec_schema(GPU_POOL_PLURAL))
    defs["NamespacedExample"]["properties"]["spec"] = json_schema(
        crd_spec_schema(MODEL_DEPLOYMENT_PLURAL)
    )
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = "vllm-sleep-operator chart values"
    return out


def _untitled(node: Any) -> Any:
    """pydantic's `title`s repeat the property names; the schema reads better without them."""
    if isinstance(node, dict):
        return {k: _untitled(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def defaults() -> dict[str, Any]:
    """values.yaml: every default, unset optionals left out (Helm reads null as "delete")."""
    return Values().model_dump(mode="json", exclude_none=True)


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=False) + "\n"
