"""The ModelDeployment kind: spec, and the object as the operator reads it."""

from __future__ import annotations

from typing import Any, Self

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from .base import ApiModel, ObjectName, cel, list_map
from .common import EnvVar, LocalObjectReference, Toleration
from .model_spec import ImagePullPolicy, ModelResources, Placement, SleepSpec, WakeSpec
from .model_status import ModelDeploymentStatus
from .names import ENV_SIM_WEIGHTS_BYTES, ENV_VLLM_DEV_MODE, ENV_VLLM_RESPONSES_STORE

# What clients send as "model": the usual Hugging Face ids ("org/name-1.5B:tag") and plain names.
SERVED_MODEL_NAME_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9._:/]*[A-Za-z0-9])?$"
# vLLM flags the operator sets itself; users setting them would break the pod's contract
# (vLLM must listen on 127.0.0.1:8001 behind the agent, with sleep mode on). vLLM accepts both
# dashes and underscores in flag names.
OWNED_FLAGS = (
    "host",
    "port",
    "uds",
    "enable-sleep-mode",
    "served-model-name",
    "gpu-memory-utilization",
    "kv-cache-memory-bytes",  # from resources.kvCacheSize
    "kv-cache-memory",  # argparse's prefix of --kv-cache-memory-bytes
    "tensor-parallel-size",
)
_OWNED_FLAG_RE = "^(--(" + "|".join(f.replace("-", "[-_]") for f in OWNED_FLAGS) + ")|-tp)(=.*)?$"
RESERVED_ENV = (ENV_VLLM_DEV_MODE, ENV_SIM_WEIGHTS_BYTES)
_MAP_STR: JsonDict = {"additionalProperties": {"type": "string", "maxLength": 4096}}


class ModelDeploymentSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.sleep.level != 1 || has(self.resources.weightsSize)",
                    "sleep level 1 needs resources.weightsSize: the weights move to pinned host "
                    "memory, which must be part of the pod's memory limit",
                    field_path=".resources.weightsSize",
                    reason="FieldValueRequired",
                ),
                {
                    "rule": "self.replicas > 0 || self.sleep.policy == 'Auto'",
                    "messageExpression": "'sleep.policy ' + self.sleep.policy + ' needs "
                    "replicas >= 1 (with 0 replicas nothing is loaded); use policy Auto to "
                    "scale to zero'",
                    "fieldPath": ".sleep.policy",
                },
            ]
        }
    )

    model: str = Field(
        min_length=1,
        max_length=512,
        description="What vLLM loads: a Hugging Face id or a path inside the image/volume.",
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=SERVED_MODEL_NAME_PATTERN,
        description='The "model" clients send. Default: metadata.name.',
    )
    image: str = Field(
        min_length=1, max_length=1024, description="vLLM image (>= 0.10.2 for level 2)."
    )
    image_pull_policy: ImagePullPolicy | None = Field(
        default=None, description="Of the vLLM container (default: Kubernetes')."
    )
    args: list[str] = Field(
        default_factory=list,
        max_length=128,
        description="Extra `vllm serve` arguments. Flags the operator owns are refused.",
        json_schema_extra={
            "items": {"type": "string", "maxLength": 1024},
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(a, !a.matches('{_OWNED_FLAG_RE}'))",
                    "messageExpression": "'args must not set ' + self.filter(a, a.matches('"
                    + _OWNED_FLAG_RE
                    + "'))[0] + ': the operator sets --host, --port, --enable-sleep-mode, "
                    "--served-model-name, --gpu-memory-utilization, --kv-cache-memory-bytes "
                    "(resources.kvCacheSize) and --tensor-parallel-size'",
                }
            ],
        },
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description="Environment of the vLLM container (plain values).",
        json_schema_extra={
            **list_map("name"),
            "x-kubernetes-validations": [
                cel(
                    "self.all(e, !(e.name in " + str(list(RESERVED_ENV)) + "))",
                    f"env must not set {', '.join(RESERVED_ENV)}: the operator sets them",
                ),
                cel(
                    f"self.all(e, e.name != '{ENV_VLLM_RESPONSES_STORE}')",
                    f"env must not set {ENV_VLLM_RESPONSES_STORE}: background responses run on "
                    "after their answer, unseen by the agent, and a sleep would meet them",
                ),
            ],
        },
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Pods, each with its own sleep state; 0 unloads the model.",
    )
    resources: ModelResources = Field(
        default_factory=ModelResources,
        description="The engine's GPU memory share, weights size, GPUs, CPU and host memory.",
        json_schema_extra={"default": {}},
    )
    sleep: SleepSpec = Field(
        default_factory=SleepSpec,
        description="When and how replicas sleep: level, idle timeout, policy, drain timeout.",
        json_schema_extra={"default": {}},
    )
    wake: WakeSpec = Field(
        default_factory=WakeSpec,
        description="Waking on a request: whether, how long a request is held, how many.",
        json_schema_extra={"default": {}},
    )
    placement: Placement = Field(
        default_factory=Placement,
        description="GPUPool, priority among its models, minimum time awake.",
        json_schema_extra={"default": {}},
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        description="Merged with the pool's (the pool wins on a conflict).",
        json_schema_extra=_MAP_STR,
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Added to the pool's."
    )
    service_account_name: ObjectName | None = Field(
        default=None,
        description="Of the pods (default: the namespace's); its token is never mounted.",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets to pull the images with."
    )
    priority_class_name: ObjectName | None = Field(
        default=None,
        description="Kubernetes pod priority (preemption); unrelated to placement.priority.",
    )
    pod_labels: dict[str, str] | None = Field(
        default=None,
        description="Extra pod labels (the operator's own vllm-sleep.io/ labels win).",
        json_schema_extra=_MAP_STR,
    )
    pod_annotations: dict[str, str] | None = Field(
        default=None, description="Extra pod annotations.", json_schema_extra=_MAP_STR
    )
    agent_image: str | None = Field(
        default=None,
        max_length=1024,
        description="Override the agent sidecar image (default: the operator's --agent-image).",
    )

    def served_name(self, metadata_name: str) -> str:
        return self.served_model_name or metadata_name


class ObjectMeta(ApiModel):
    """The part of metadata the operator uses; the rest is ignored, not refused."""

    model_config = ConfigDict(extra="ignore")

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class KubeObject(ApiModel):
    """An object of one of our kinds as the apiserver holds it; subclasses add spec and status."""

    model_config = ConfigDict(extra="ignore")  # apiVersion, kind

    metadata: ObjectMeta

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Self:
        """Parse an object from the apiserver or a file; raises pydantic.ValidationError."""
        return cls.model_validate(dict(body))


class ModelDeployment(KubeObject):
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @property
    def served_model_name(self) -> str:
        return self.spec.served_name(self.metadata.name)
