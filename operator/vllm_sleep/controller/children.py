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

from ..api.gpu_pool import GPUPool, Sharing
from ..api.names import ANNOTATION_SPEC_HASH, GPU_POOL_PLURAL, GROUP, LABEL_REPLICA, VERSION
from ..reconcile.builders import (
    GpuAttachment,
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
        # (ns, name, uid) whose Secret, Lease and Service exist
        self._ensured: set[tuple[str, str, str]] = set()
        # GPUPools as kopf's watch last showed them (see handlers): a reconcile pass, the wake
        # pass included, reads pools from here instead of GETting one per pass.
        self.pools: dict[str, dict[str, Any]] = {}

    async def placement(self, model: Any) -> tuple[GpuAttachment | None, str | None]:
        """Where the model's GPUs come from, or why it cannot be placed (a condition, no crash)."""
        pool_name = model.spec.placement.pool
        if not pool_name:
            return GpuAttachment(), None
        body = self.pools.get(pool_name)
        if body is None:  # not seen by the watch (yet): ask once; found pools stay cached
            body = await self._kube.get_cluster_object(GROUP, VERSION, GPU_POOL_PLURAL, pool_name)
            if body is not None:
                self.pools[pool_name] = body
        if body is None:
            return (
                None,
                f"GPUPool {pool_name!r} does not exist; create it or fix spec.placement.pool",
            )
        try:
            pool = GPUPool.from_body(body)
        except ValueError as e:
            return None, f"GPUPool {pool_name!r} is invalid: {e}"
        if pool.spec.sharing == Sharing.DRA:
            # Shared DRA claims are assigned per device by the GPU scheduler; until it places
            # this model, the pods would not know which claim to reference.
            return None, (
                f"GPUPool {pool_name!r} shares devices with DRA, which needs the GPU scheduler "
                "to assign a device; use sharing TimeSlicing or Exclusive for now"
            )
        return GpuAttachment(pool=pool.spec), None

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
        self, body: dict[str, Any], model: Any, pods: list[dict[str, Any]], gpu: GpuAttachment
    ) -> list[dict[str, Any]]:
        """Create missing replicas, delete surplus/outdated/ended ones; return the live pods."""
        owner = owner_from_body(body)
        desired = {
            i: model_pod(owner, model.spec, i, agent_image=self._settings.agent_image, gpu=gpu)
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
