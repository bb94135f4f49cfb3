"""The two CustomResourceDefinitions, built from the pydantic models (pure: dicts out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel
from pydantic.config import JsonDict

from . import names
from .base import cel
from .gpu_pool import GPUPoolSpec, GPUPoolStatus
from .model_deployment import ModelDeploymentSpec
from .model_status import ModelDeploymentStatus
from .structural import Schema, structural_schema

# The model's name becomes the Service name (a DNS-1035 label) and pod names `<name>-<replica>`
# that must stay valid hostnames (63 characters), hence the shorter limit.
MAX_MODEL_NAME = 56
_NAME_RULE: JsonDict = cel(
    f"self.metadata.name.size() <= {MAX_MODEL_NAME} && "
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    f"metadata.name must start with a letter, contain only a-z, 0-9 and '-', and have at most "
    f"{MAX_MODEL_NAME} characters: it names the model's Service and its pods <name>-<replica>",
)


class Column(NamedTuple):
    """One `kubectl get` column; priority 1 (WIDE) shows only with `-o wide`."""

    name: str
    type: Literal["string", "integer", "date"]
    json_path: str
    priority: int = 0
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


WIDE = 1
_AGE = Column("Age", "date", ".metadata.creationTimestamp")


@dataclass(frozen=True)
class Resource:
    """What differs between the two CRDs: names, scope, schema (from the models) and columns."""

    kind: str
    plural: str
    short_name: str
    scope: Literal["Namespaced", "Cluster"]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[Column, ...]
    rules: tuple[JsonDict, ...] = ()  # CEL rules on the whole object (metadata included)

    def schema(self) -> Schema:
        root: Schema = {
            "type": "object",
            "required": ["spec"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": {
                    **structural_schema(self.spec),
                    "description": "Desired state: yours (or your GitOps tool's) to write.",
                },
                "status": {
                    **structural_schema(self.status),
                    "description": "Observed state, written by the operator only.",
                },
            },
        }
        if self.rules:
            root["x-kubernetes-validations"] = list(self.rules)
        root["description"] = self.description
        return root

    def crd(self) -> dict[str, Any]:
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": f"{self.plural}.{names.GROUP}",
                "labels": {"app.kubernetes.io/name": names.MANAGED_BY},
            },
            "spec": {
                "group": names.GROUP,
                "scope": self.scope,
                "names": {
                    "kind": self.kind,
                    "listKind": f"{self.kind}List",
                    "plural": self.plural,
                    "singular": self.kind.lower(),
                    "shortNames": [self.short_name],
                    # Not "all": `kubectl get all` is used in scripts that delete what it lists.
                    "categories": [names.CATEGORY],
                },
                "versions": [
                    {
                        "name": names.VERSION,
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": [c.to_json() for c in self.columns],
                        "schema": {"openAPIV3Schema": self.schema()},
                    }
                ],
            },
        }


MODEL_DEPLOYMENT = Resource(
    kind=names.MODEL_DEPLOYMENT_KIND,
    plural=names.MODEL_DEPLOYMENT_PLURAL,
    short_name=names.SHORT_NAME_MODEL_DEPLOYMENT,
    scope="Namespaced",
    description=(
        "A vLLM model served in sleep mode: loaded once, put to sleep when idle, woken on demand."
    ),
    spec=ModelDeploymentSpec,
    status=ModelDeploymentStatus,
    rules=(_NAME_RULE,),
    columns=(
        Column("State", "string", ".status.phase"),
        # Ready=False beside a calm State (Asleep, Pending) is a model that needs a human:
        # replicas 0, a placement problem, a refused served name (the condition says why).
        Column(
            "Ready",
            "string",
            '.status.conditions[?(@.type=="Ready")].status',
            description="the Ready condition: True when it can serve now or after a wake",
        ),
        Column("Awake", "string", ".status.awake", description="awake replicas / desired replicas"),
        Column("Pool", "string", ".spec.placement.pool"),
        Column("Last-Activity", "date", ".status.lastActivityTime"),
        _AGE,
        Column("Model", "string", ".spec.model", WIDE),
        Column("Level", "integer", ".spec.sleep.level", WIDE),
        Column("Policy", "string", ".spec.sleep.policy", WIDE),
    ),
)
GPU_POOL = Resource(
    kind=names.GPU_POOL_KIND,
    plural=names.GPU_POOL_PLURAL,
    short_name=names.SHORT_NAME_GPU_POOL,
    scope="Cluster",
    description="Shared GPU capacity that ModelDeployments are placed on.",
    spec=GPUPoolSpec,
    status=GPUPoolStatus,
    columns=(
        Column("Sharing", "string", ".spec.sharing"),
        Column("Device-Memory", "string", ".spec.deviceMemory"),
        Column("Nodes", "integer", ".status.nodes"),
        Column("Devices", "integer", ".status.devices"),
        Column("Models", "integer", ".status.models"),
        Column("Awake", "integer", ".status.awake"),
        Column("Committed%", "integer", ".status.committedPercent"),
        Column("Replicas", "integer", ".status.replicas", WIDE),
        _AGE,
    ),
)


def model_deployment_crd() -> dict[str, Any]:
    return MODEL_DEPLOYMENT.crd()


def gpu_pool_crd() -> dict[str, Any]:
    return GPU_POOL.crd()


def all_crds() -> dict[str, dict[str, Any]]:
    """File name under crds/ -> CRD object."""
    crds = [model_deployment_crd(), gpu_pool_crd()]
    return {f"{c['metadata']['name']}.yaml": c for c in crds}
