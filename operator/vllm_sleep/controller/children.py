"""A ModelDeployment's per-model children (Secret, Lease, Service) and the GPUPools it names.

Manifests come from the pure builders (`reconcile.builders`); which pods to create or delete is
decided by the plan (`reconcile.plan`). This module only does I/O. It never patches what a user
may have changed by hand on a child other than through recreation.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..api.model_deployment import ModelDeployment
from ..api.names import GPU_POOL_PLURAL, GROUP, VERSION
from ..reconcile.builders import (
    Owner,
    control_token_secret,
    demand_lease,
    model_service,
)
from ..reconcile.placement import Placement, place
from .kube import Kube


class Children:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        # (ns, name, uid) whose Secret, Lease and Service exist
        self._ensured: set[tuple[str, str, str]] = set()
        # GPUPools as kopf's watch last showed them (see handlers): a reconcile pass, the wake
        # pass included, reads pools from here instead of GETting one per pass.
        self.pools: dict[str, dict[str, Any]] = {}

    async def placement(self, model: ModelDeployment) -> Placement:
        """Where the model's GPUs come from, or why it cannot be placed."""
        pool_name = model.spec.placement.pool
        body = self.pools.get(pool_name) if pool_name else None
        if pool_name and body is None:  # not seen by the watch (yet): ask once; found ones stay
            body = await self._kube.get_cluster_object(GROUP, VERSION, GPU_POOL_PLURAL, pool_name)
            if body is not None:
                self.pools[pool_name] = body
        return place(model, body)

    async def ensure(self, owner: Owner, model: ModelDeployment) -> None:
        """Make sure the per-model objects exist (once per ModelDeployment uid)."""
        key = (owner.namespace, owner.name, owner.uid)
        if key not in self._ensured:
            await self._kube.create_if_missing(
                control_token_secret(owner, secrets.token_urlsafe(32))
            )
            await self._kube.create_if_missing(demand_lease(owner))
            await self._kube.create_if_missing(model_service(owner, model.spec))
            self._ensured.add(key)
