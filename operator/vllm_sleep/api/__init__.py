"""The API of vllm-sleep.io/v1alpha1: pydantic models, the one source of truth for crds/."""

from .common import Condition, EnvVar, LocalObjectReference, Toleration
from .duration import DurationError, format_duration, parse_duration
from .gpu_pool import DeviceStatus, GPUPool, GPUPoolSpec, GPUPoolStatus, Sharing
from .model_deployment import ModelDeployment, ModelDeploymentSpec, ObjectMeta
from .model_spec import ModelResources, Placement, SleepPolicy, SleepSpec, WakeSpec
from .model_status import ConditionType, ModelDeploymentStatus, ModelPhase, ReplicaStatus
from .quantity import Quantity, QuantityError, format_quantity, parse_quantity

__all__ = [
    "Condition",
    "ConditionType",
    "DeviceStatus",
    "DurationError",
    "EnvVar",
    "GPUPool",
    "GPUPoolSpec",
    "GPUPoolStatus",
    "LocalObjectReference",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelPhase",
    "ModelResources",
    "ObjectMeta",
    "Placement",
    "Quantity",
    "QuantityError",
    "ReplicaStatus",
    "Sharing",
    "SleepPolicy",
    "SleepSpec",
    "Toleration",
    "WakeSpec",
    "format_duration",
    "format_quantity",
    "parse_duration",
    "parse_quantity",
]
