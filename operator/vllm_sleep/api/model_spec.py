"""ModelDeployment spec parts: resources, sleep, wake, placement.

Defaults here are the CRD's defaults too (crdgen copies them), so an object read back from the
apiserver and one parsed from a file agree.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Literal

from pydantic import Field

from .base import ApiModel, Duration, ObjectName, cel, duration_field, duration_rule
from .quantity import Quantity


class SleepPolicy(StrEnum):
    AUTO = "Auto"  # sleep after idleTimeout, wake on demand
    ALWAYS_AWAKE = "AlwaysAwake"  # never sleep (still loaded via this operator, still guarded)
    ASLEEP = "Asleep"  # keep loaded but asleep; never woken by demand


_POSITIVE_QUANTITY = cel(
    "!isQuantity(string(self)) || quantity(string(self)).isGreaterThan(quantity('0'))",
    "must be greater than zero",
)


class ModelResources(ApiModel):
    gpu_memory_utilization: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=(
            "Share of one device's memory this engine may use (vLLM --gpu-memory-utilization). "
            "Engines sharing a device must sum to at most 1 minus sleeping neighbours' residuals. "
            "Unset: the operator still passes an explicit share, never the version's default: "
            "0.9 on whole devices; in a GPUPool, (deviceMemory - (slotsPerDevice - 1) x "
            "sleepResidual) / deviceMemory, rounded down to two decimals."
        ),
    )
    weights_size: Quantity | None = Field(
        default=None,
        description=(
            "Size of the model weights (e.g. 16Gi for an 8B bf16 model). Required for sleep "
            "level 1: the weights move to pinned host memory, which is added to the memory "
            "request and limit, and counts against the pool's host offload budget."
        ),
        json_schema_extra={"x-kubernetes-validations": [_POSITIVE_QUANTITY]},
    )
    kv_cache_size: Quantity | None = Field(
        default=None,
        description=(
            "Fixed KV cache size per GPU (vLLM --kv-cache-memory-bytes, vLLM >= 0.11). Without "
            "it the KV cache is the rest of gpuMemoryUtilization's share. Best for shared "
            "devices: the size a wake re-maps is known up front."
        ),
        json_schema_extra={"x-kubernetes-validations": [_POSITIVE_QUANTITY]},
    )
    gpus: int = Field(
        default=1,
        ge=1,
        le=16,
        description="GPUs per replica; more than 1 runs vLLM with --tensor-parallel-size.",
    )
    cpu: Quantity | None = Field(
        default=None, description="CPU request of the vLLM container (no CPU limit is set)."
    )
    memory: Quantity | None = Field(
        default=None,
        description=(
            "Host memory for vLLM itself (request and limit), excluding the level-1 offload "
            "that the operator adds from weightsSize."
        ),
        json_schema_extra={"x-kubernetes-validations": [_POSITIVE_QUANTITY]},
    )


class SleepSpec(ApiModel):
    level: Literal[0, 1, 2] = Field(
        default=1,
        description=(
            "0: KV-only, needs vLLM >= 0.31: the KV cache is released and re-mapped on wake, "
            "the weights stay on the GPU (the fastest wake, frees only the KV cache; an older "
            "engine refuses the sleep, which the replica's status reports). "
            "1: weights to pinned host RAM, fast wake (needs weightsSize). "
            "2: weights discarded and reloaded from disk on wake (slower, no host memory)."
        ),
    )
    idle_timeout: Duration = duration_field(
        timedelta(minutes=10),
        "Sleep a replica after this long without a request (policy Auto).",
        duration_rule("duration(self) >= duration('1s')", "must be at least 1s"),
    )
    policy: SleepPolicy = Field(
        default=SleepPolicy.AUTO,
        description=(
            "Auto: sleep when idle, wake on demand. AlwaysAwake: never sleep. Asleep: keep "
            "loaded but asleep, never woken by demand."
        ),
    )
    drain_timeout: Duration = duration_field(
        timedelta(minutes=2),
        "How long in-flight requests may run before a sleep gives up and stays awake.",
    )


class WakeSpec(ApiModel):
    on_request: bool = Field(
        default=True, description="Wake a sleeping model when a request for it arrives."
    )
    timeout: Duration = duration_field(
        timedelta(minutes=2),
        "How long a request is held while the model wakes; then 503 + Retry-After.",
        duration_rule("duration(self) > duration('0s')", "must be greater than zero"),
    )
    max_queued: int = Field(
        default=256,
        ge=0,
        le=100_000,
        description=(
            "Requests each gateway process holds for this model while none of its replicas is "
            "awake; beyond it: 429 queue_full with Retry-After. Each agent holds at most as "
            "many (a full agent answers 429 too, and the gateway holds the request again)."
        ),
    )


class Placement(ApiModel):
    pool: ObjectName | None = Field(
        default=None, description="GPUPool to run in. Without a pool, each replica gets whole GPUs."
    )
    priority: int = Field(
        default=0,
        ge=-1_000_000,
        le=1_000_000,
        description="When a wake needs room, lower-priority awake models are put to sleep first.",
    )
    min_awake: Duration = duration_field(
        timedelta(0),
        "A woken replica is never put to sleep (idle or evicted) before this age.",
    )


ImagePullPolicy = Literal["Always", "IfNotPresent", "Never"]
