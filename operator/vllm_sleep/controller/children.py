"""Create and converge a ModelDeployment's children: Secret, Lease, Service, Pods.

Manifests come from the pure builders (`reconcile.builders`); this module only does the I/O and
the convergence rules: create what is missing, replace pods whose shape changed or that ended,
remove replicas beyond `spec.replicas`. It never patches what a user may have changed by hand
on a child other than through recreation.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from ..api.names import ANNOTATION_SPEC_HASH, LABEL_REPLICA
from ..reconcile.builders import (
    control_token_secret,
    demand_lease,
    model_pod,
    model_service,
    owner_from_body,
)
from .context import Settings
from .kube import Kube

log = logging.getLogger(__name__)


class Children:
    def __init__(self, kube: Kube, settings: Settings) -> None:
        self._kube = kube
        self._settings = settings
        self._ensured: set[tuple[str, str, str]] = (
            set()
        )  # (ns, name, uid) with Secret/Lease/Service

    async def ensure(self, body: dict[str, Any], model: Any) -> dict[str, Any]:
        """Make sure the per-model objects exist; returns facts for status (e.g. problems)."""
        md = body["metadata"]
        key = (md["namespace"], md["name"], md["uid"])
        if key not in self._ensured:
            owner = owner_from_body(body)
            await self._kube.create_if_missing(
                control_token_secret(owner, secrets.token_urlsafe(32))
            )
            await self._kube.create_if_missing(demand_lease(owner))
            await self._kube.create_if_missing(model_service(owner, model.spec))
            self._ensured.add(key)
        return {}

    async def converge_pods(
        self, body: dict[str, Any], model: Any, pods: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Create missing replicas, delete surplus/outdated/ended ones; return the live pods."""
        owner = owner_from_body(body)
        desired = {
            i: model_pod(owner, model.spec, i, agent_image=self._settings.agent_image)
            for i in range(model.spec.replicas)
        }
        live: list[dict[str, Any]] = []
        have: set[int] = set()
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                live.append(pod)  # terminating: shown, not acted on
                have.add(_replica(pod))
                continue
            idx = _replica(pod)
            want = desired.get(idx)
            phase = pod.get("status", {}).get("phase")
            outdated = want is not None and _hash(want) != _hash(pod)
            if want is None or outdated or phase in ("Succeeded", "Failed"):
                why = (
                    "surplus replica"
                    if want is None
                    else ("spec changed" if outdated else f"pod {phase}")
                )
                log.info("deleting pod %s/%s: %s", meta["namespace"], meta["name"], why)
                await self._kube.delete_pod(meta["namespace"], meta["name"], meta.get("uid"))
                continue
            live.append(pod)
            have.add(idx)
        for idx, manifest in desired.items():
            if idx not in have:
                created = await self._kube.create_if_missing(manifest)
                if created:
                    log.info("created pod %s", manifest["metadata"]["name"])
        return live


def _replica(pod: dict[str, Any]) -> int:
    try:
        return int((pod["metadata"].get("labels") or {}).get(LABEL_REPLICA, "-1"))
    except ValueError:
        return -1


def _hash(pod: dict[str, Any]) -> str | None:
    ann: dict[str, str] = pod["metadata"].get("annotations") or {}
    return ann.get(ANNOTATION_SPEC_HASH)
