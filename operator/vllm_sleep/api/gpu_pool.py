"""The GPUPool kind (cluster-scoped): shared GPU capacity and how models share a device."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field

from .base import ApiModel, ObjectName, cel
from .common import Condition, Toleration, conditions_field
from .model_deployment import KubeObject
from .quantity import Quantity


class Sharing(StrEnum):
    DRA = "DRA"  # one named ResourceClaim per device, referenced by every pod placed there
    TIME_SLICING = "TimeSlicing"  # the device plugin's shared resource (no DRA)
    EXCLUSIVE = "Exclusive"  # one model pod per device: sleep frees memory but no one uses it


class GPUPoolSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.sharing != 'Exclusive' || self.slotsPerDevice == 1",
                    "sharing Exclusive allows one model per device: slotsPerDevice must be 1",
                    field_path=".slotsPerDevice",
                ),
            ]
        }
    )

    node_selector: dict[str, str] | None = Field(
        default=None,
        description="Nodes of this pool; copied into every model pod placed in it.",
        json_schema_extra={"additionalProperties": {"type": "string", "maxLength": 4096}},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Copied into every model pod."
    )
    device_memory: Quantity = Field(
        description="Memory of one device (e.g. 80Gi); gpuMemoryUtilization is a share of it.",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!isQuantity(string(self)) || quantity(string(self)).isGreaterThan(quantity('0'))",
                    "must be greater than zero",
                )
            ]
        },
    )
    host_offload_budget: Quantity | None = Field(
        default=None,
        description=(
            "Per node: host memory level-1 sleepers may pin for their weights. Past it, models "
            "sleep at level 2. Unset: no limit beyond the pods' memory requests."
        ),
    )
    sharing: Sharing = Field(
        default=Sharing.DRA,
        description=(
            "DRA: one ResourceClaim per device, shared by the pods placed there. TimeSlicing: "
            "the device plugin's shared resource. Exclusive: one model per device."
        ),
    )
    device_class_name: ObjectName = Field(
        default="gpu.nvidia.com", description="DRA DeviceClass of the pool's devices (sharing DRA)."
    )
    device_resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="Extended resource for TimeSlicing/Exclusive (e.g. nvidia.com/gpu.shared).",
    )
    slots_per_device: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Most model replicas placed on one device (awake or asleep).",
    )
    sleep_residual: Quantity = Field(
        default_factory=lambda: Quantity.parse("2Gi"),
        description=(
            "Device memory assumed held by a sleeping engine (CUDA context, graphs) until its "
            "first sleep is measured. Above the ~1.4 GiB reported for single-GPU engines, so a "
            "plan made before the first measurement does not overcommit the device."
        ),
        json_schema_extra={"default": "2Gi"},
    )


class DeviceStatus(ApiModel):
    node: str = Field(description="The device's node.")
    device: str = Field(description="Device id, <node>/<device>.")
    claim: str | None = Field(default=None, description="Its ResourceClaim (sharing DRA).")
    models: list[str] = Field(
        default_factory=list, description="Replicas placed on it (namespace/pod)."
    )
    awake: list[str] = Field(default_factory=list, description="Those of them awake.")
    committed_bytes: int | None = Field(
        default=None, ge=0, description="Awake shares plus sleeping residuals, in bytes."
    )


class GPUPoolStatus(ApiModel):
    nodes: int | None = Field(default=None, ge=0, description="Nodes with devices of the pool.")
    devices: int | None = Field(default=None, ge=0, description="Devices of the pool.")
    models: int | None = Field(default=None, ge=0, description="ModelDeployments placed in it.")
    # Summed over devices: replicas placed, replicas awake, and device bytes committed (also as
    # a share of the pool's device memory, for `kubectl get gpupools`).
    replicas: int | None = Field(default=None, ge=0, description="Replicas placed on devices.")
    awake: int | None = Field(default=None, ge=0, description="Replicas awake.")
    committed_bytes: int | None = Field(
        default=None, ge=0, description="Device bytes committed over all devices."
    )
    committed_percent: int | None = Field(
        default=None, ge=0, description="committedBytes as a percentage of the pool's memory."
    )
    device_states: list[DeviceStatus] = Field(
        default_factory=list, description="Per device: who is placed, who is awake, bytes."
    )
    observed_generation: int | None = Field(
        default=None, description="Reserved: not written by the operator yet."
    )
    conditions: list[Condition] = conditions_field("Reserved: not written by the operator yet.")


class GPUPool(KubeObject):
    spec: GPUPoolSpec
    status: GPUPoolStatus | None = None
