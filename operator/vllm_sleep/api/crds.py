"""The two CustomResourceDefinitions, built from the pydantic models (pure: dicts out)."""

from __future__ import annotations

from typing import Any

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


def _root(spec: type[BaseModel], status: type[BaseModel], rules: list[JsonDict]) -> Schema:
    root: Schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural_schema(spec),
            "status": structural_schema(status),
        },
    }
    if rules:
        root["x-kubernetes-validations"] = rules
    return root


def _crd(
    *,
    kind: str,
    plural: str,
    short_name: str,
    scope: str,
    schema: Schema,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{names.GROUP}",
            "labels": {"app.kubernetes.io/name": names.MANAGED_BY},
        },
        "spec": {
            "group": names.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                # Not "all": `kubectl get all` is used in scripts that delete what it lists.
                "categories": [names.CATEGORY],
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def _age() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def model_deployment_crd() -> dict[str, Any]:
    schema = _root(ModelDeploymentSpec, ModelDeploymentStatus, [_NAME_RULE])
    schema["description"] = (
        "A vLLM model served in sleep mode: loaded once, put to sleep when idle, woken on demand."
    )
    columns = [
        {"name": "State", "type": "string", "jsonPath": ".status.phase"},
        {
            "name": "Awake",
            "type": "string",
            "jsonPath": ".status.awake",
            "description": "awake replicas / desired replicas",
        },
        {"name": "Pool", "type": "string", "jsonPath": ".spec.placement.pool"},
        {"name": "Last-Activity", "type": "date", "jsonPath": ".status.lastActivityTime"},
        _age(),
        {"name": "Model", "type": "string", "jsonPath": ".spec.model", "priority": 1},
        {"name": "Level", "type": "integer", "jsonPath": ".spec.sleep.level", "priority": 1},
        {"name": "Policy", "type": "string", "jsonPath": ".spec.sleep.policy", "priority": 1},
    ]
    return _crd(
        kind=names.MODEL_DEPLOYMENT_KIND,
        plural=names.MODEL_DEPLOYMENT_PLURAL,
        short_name=names.SHORT_NAME_MODEL_DEPLOYMENT,
        scope="Namespaced",
        schema=schema,
        columns=columns,
    )


def gpu_pool_crd() -> dict[str, Any]:
    schema = _root(GPUPoolSpec, GPUPoolStatus, [])
    schema["description"] = "Shared GPU capacity that ModelDeployments are placed on."
    columns: list[dict[str, Any]] = [
        {"name": "Sharing", "type": "string", "jsonPath": ".spec.sharing"},
        {"name": "Device-Memory", "type": "string", "jsonPath": ".spec.deviceMemory"},
        {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes"},
        {"name": "Devices", "type": "integer", "jsonPath": ".status.devices"},
        {"name": "Models", "type": "integer", "jsonPath": ".status.models"},
        {"name": "Awake", "type": "integer", "jsonPath": ".status.awake"},
        {"name": "Committed%", "type": "integer", "jsonPath": ".status.committedPercent"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas", "priority": 1},
        _age(),
    ]
    return _crd(
        kind=names.GPU_POOL_KIND,
        plural=names.GPU_POOL_PLURAL,
        short_name=names.SHORT_NAME_GPU_POOL,
        scope="Cluster",
        schema=schema,
        columns=columns,
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name under crds/ -> CRD object."""
    crds = [model_deployment_crd(), gpu_pool_crd()]
    return {f"{c['metadata']['name']}.yaml": c for c in crds}
