"""How a client asks the operator to wake or sleep a model (docs/interfaces.md, "Demand").

Wake: renew the model's demand Lease (`<mdep>-demand`, coordination.k8s.io/v1): holderIdentity
is the client's id, renewTime is now. The operator creates the Lease with the model; a client
that finds it missing creates it with the same shape. Sleep: stamp the sleep-request annotation
on the ModelDeployment (metadata, not spec: GitOps tools own spec).

Every writer (the operator's builder, the gateway, `vllm-sleep wake|sleep`, the demo) builds its
bodies here; time is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from .names import (
    ANNOTATION_SLEEP_REQUEST,
    API_VERSION,
    COMPONENT_DEMAND_LEASE,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    MANAGED_BY,
    MODEL_DEPLOYMENT_KIND,
)

LEASE_API_VERSION: Final = "coordination.k8s.io/v1"
LEASE_KIND: Final = "Lease"
_SUFFIX: Final = "-demand"


def demand_lease_name(model_deployment: str) -> str:
    """The Lease a client renews to ask for `model_deployment` to be woken."""
    return f"{model_deployment}{_SUFFIX}"


def demand_lease_labels(model_deployment: str) -> dict[str, str]:
    """What the operator's Lease watch selects on (component and model)."""
    return {
        LABEL_MODEL: model_deployment,
        LABEL_COMPONENT: COMPONENT_DEMAND_LEASE,
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def micro_time(now: datetime) -> str:
    """Kubernetes MicroTime (RFC 3339, microseconds, UTC), the format of Lease renewTime."""
    if now.tzinfo is None:
        raise ValueError("micro_time needs an aware datetime")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(value: object) -> float | None:
    """Unix seconds of a renewTime or sleep-request stamp; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def renew_time(lease_spec: Mapping[str, Any]) -> float | None:
    """Unix seconds of a demand Lease's last renewal; None when never renewed (or unreadable)."""
    return parse_micro_time(lease_spec.get("renewTime"))


def renew_spec(holder: str, now: datetime) -> dict[str, str]:
    """The Lease spec one renewal writes."""
    if not holder:
        raise ValueError("a demand renewal needs a holder identity")
    return {"holderIdentity": holder, "renewTime": micro_time(now)}


def renew_patch(holder: str, now: datetime) -> dict[str, Any]:
    """Merge patch of one renewal (the Lease exists)."""
    return {"spec": renew_spec(holder, now)}


def demand_lease(
    model_deployment: str,
    namespace: str,
    owner_uid: str | None,
    *,
    holder: str | None = None,
    now: datetime | None = None,
    block_owner_deletion: bool = True,
) -> dict[str, Any]:
    """The Lease: empty spec as the operator creates it, or renewed by `holder` at `now`.

    Owned by the ModelDeployment (garbage-collected with it) when its uid is known. Clients
    pass `block_owner_deletion=False`: setting it needs update rights on the owner's
    finalizers, which only the operator has, and a Lease need not hold back a deletion.
    """
    meta: dict[str, Any] = {
        "name": demand_lease_name(model_deployment),
        "namespace": namespace,
        "labels": demand_lease_labels(model_deployment),
    }
    if owner_uid:
        ref: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": MODEL_DEPLOYMENT_KIND,
            "name": model_deployment,
            "uid": owner_uid,
            "controller": True,
        }
        if block_owner_deletion:
            ref["blockOwnerDeletion"] = True
        meta["ownerReferences"] = [ref]
    if (holder is None) != (now is None):
        raise ValueError("a renewed Lease needs both holder and now")
    spec = renew_spec(holder, now) if holder is not None and now is not None else {}
    return {"apiVersion": LEASE_API_VERSION, "kind": LEASE_KIND, "metadata": meta, "spec": spec}


def sleep_request_patch(now: datetime) -> dict[str, Any]:
    """Merge patch on a ModelDeployment asking the operator to sleep it (unless newer demand)."""
    return {"metadata": {"annotations": {ANNOTATION_SLEEP_REQUEST: micro_time(now)}}}
