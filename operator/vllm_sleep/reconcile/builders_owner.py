"""Who owns the objects the builders make: the ModelDeployment, as an owner reference."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api import names


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns (and garbage-collects) every object built here."""

    name: str
    namespace: str
    uid: str
    api_version: str = names.API_VERSION
    kind: str = names.MODEL_DEPLOYMENT_KIND


def owner_from_body(body: Mapping[str, Any]) -> Owner:
    md = body["metadata"]
    return Owner(
        name=md["name"],
        namespace=md["namespace"],
        uid=md["uid"],
        api_version=body.get("apiVersion", names.API_VERSION),
        kind=body.get("kind", names.MODEL_DEPLOYMENT_KIND),
    )


def owner_reference(owner: Owner) -> dict[str, Any]:
    # controller=true: exactly one managing owner, so tools (and our own list calls) can tell
    # our children from look-alikes; blockOwnerDeletion makes foreground deletion wait for them.
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        names.LABEL_MODEL: owner.name,
        names.LABEL_COMPONENT: component,
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
    }
