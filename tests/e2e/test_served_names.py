"""Duplicate served names across namespaces never move traffic, and the refused object says so.

The operator applies the gateway's own rule (api.served_names): the newer ModelDeployment is
Degraded with reason ServedNameConflict naming the owner, until the owner is gone.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from conftest import Kube

from .conftest import Proc
from .helpers import apply, get_model, model_manifest, wait_for

pytestmark = pytest.mark.e2e


def _degraded(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    status = get_model(kube, namespace, name).get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "Degraded":
            return dict(c)
    return None


def test_a_newer_duplicate_name_is_refused_and_told_until_the_owner_is_gone(
    kube: Kube, namespace: str, operator: Proc, gateway: str
) -> None:
    served = f"shared-{uuid.uuid4().hex[:6]}"
    other = f"{namespace[:50]}-b"
    kube.kubectl("create", "namespace", other)
    try:
        apply(kube, model_manifest("owner", namespace, replicas=0, servedModelName=served))
        time.sleep(1.1)  # creationTimestamp has one-second resolution: make the order certain
        apply(kube, model_manifest("aaa", other, replicas=0, servedModelName=served))

        cond = wait_for(
            lambda: (c := _degraded(kube, other, "aaa")) and c["status"] == "True" and c,
            timeout=60,
            what="the newer object's Degraded condition",
        )
        assert cond["reason"] == "ServedNameConflict"
        assert f"{namespace}/owner" in cond["message"]
        owner = wait_for(lambda: _degraded(kube, namespace, "owner"), what="owner status")
        assert owner["status"] == "False"
        listed = httpx.get(f"{gateway}/v1/models", timeout=10).json()["data"]
        assert sum(1 for m in listed if m["id"] == served) == 1

        kube.kubectl("delete", "mdep", "owner", "-n", namespace, "--wait=true")
        wait_for(
            lambda: (c := _degraded(kube, other, "aaa")) and c["status"] == "False",
            timeout=60,
            what="the conflict to clear once the owner is gone",
        )
    finally:
        kube.kubectl("delete", "namespace", other, "--wait=false")
