"""ModelDeployment status: written by the operator only (status subresource)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from .base import ApiModel
from .common import Condition, conditions_field

# The operator writes a model's status at most once per this many seconds (the latest value
# at the window's end, docs/operator.md): a reader that acted on the model a moment ago sees
# the status catch up within it.
STATUS_WRITE_WINDOW_SECONDS = 2.0


class ModelPhase(StrEnum):
    """The model as a whole; docs/api.md explains each."""

    PENDING = "Pending"  # no pod exists yet (or none is scheduled)
    LOADING = "Loading"  # pods start, vLLM loads the weights
    AWAKE = "Awake"  # at least one replica is awake and routed
    DRAINING = "Draining"  # a replica goes to sleep (after idle, on request, or the pre-warm)
    ASLEEP = "Asleep"  # every replica asleep (or replicas: 0)
    WAKING = "Waking"  # a wake is in progress; requests are held
    FAILED = "Failed"  # every replica failed


class ConditionType(StrEnum):
    READY = "Ready"  # can serve now or after a wake (asleep counts as ready)
    AWAKE = "Awake"  # at least one replica awake
    SCHEDULED = "Scheduled"  # every replica has a node and device
    DEGRADED = "Degraded"  # something needs a human: failed replicas, spec problems


class ConditionReason(StrEnum):
    """Condition reasons another process acts on (the gateway answers a request for a model no
    wake can serve at once): written by the operator, read by the gateway, spelled here."""

    SCALED_TO_ZERO = "ScaledToZero"  # Ready=False: replicas is 0, nothing is loaded
    # Scheduled=False, the whole model's placement problem (its GPUPool does not exist or is
    # invalid, or its spec cannot run in a pool): no replica is placed or woken, whatever pods it
    # still has, until someone changes the model or the pool. The gateway refuses its requests
    # even when a sleeping pod's agent could hold them.
    NO_PLACEMENT = "NoPlacement"
    # Scheduled=False, a replica's placement problem (its pool has no devices, none the replica
    # fits on): that replica gets no pod until someone changes the model, pool or nodes; the
    # model's placed replicas, if any, still wake.
    CANNOT_PLACE = "CannotPlace"
    UNSCHEDULABLE = "Unschedulable"  # Scheduled=False: the Kubernetes scheduler's (a node may come)
    WAITING_FOR_DEVICE = "WaitingForDevice"  # Scheduled=False: a full pool; the model's turn comes
    PODS_SCHEDULED = "PodsScheduled"


class ReplicaStatus(ApiModel):
    pod: str = Field(description="The replica's pod (<name>-<replica>).")
    node: str | None = Field(default=None, description="Node the pod runs on.")
    device: str | None = Field(
        default=None, description="In a GPUPool: the device it is seated on (<node>/<device>)."
    )
    # Starting | Loading | Loaded | Awake | Draining | Sleeping | Asleep | Waking | Failed |
    # Terminating. A string, not an enum, so a newer operator can add states.
    state: str = Field(
        max_length=64,
        description=(
            "Starting, Loading, Loaded, Awake, Draining, Sleeping, Asleep, Waking, Failed or "
            "Terminating."
        ),
    )
    since: datetime | None = Field(default=None, description="When it entered that state.")
    level: int | None = Field(default=None, ge=0, le=2, description="Sleep level, while asleep.")
    message: str | None = Field(
        default=None, max_length=1024, description="Why the replica is failing, when it is."
    )


class ModelDeploymentStatus(ApiModel):
    phase: ModelPhase | None = None
    awake: str | None = Field(
        default=None, max_length=32, description='Awake replicas over desired, e.g. "1/2".'
    )
    replicas: list[ReplicaStatus] = Field(
        default_factory=list, description="Each replica's state, as its agent reports it."
    )
    last_activity_time: datetime | None = Field(
        default=None, description="Newest inference request seen by any replica's agent."
    )
    last_sleep_seconds: float | None = Field(
        default=None, ge=0, description="Duration of the last sleep transition."
    )
    last_wake_seconds: float | None = Field(
        default=None, ge=0, description="Duration of the last wake transition."
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = conditions_field(
        "Ready (can serve now or after a wake), Awake, Scheduled, Degraded."
    )
