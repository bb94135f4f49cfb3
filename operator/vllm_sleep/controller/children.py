"""A ModelDeployment's per-model children (Secret, Lease, Service) and the GPUPools it names.

Manifests come from the pure builders (`reconcile.builders`); which pods to create or delete is
decided by the plan (`reconcile.plan`). This module only does I/O. It never patches what a user
may have changed by hand on a child other than through recreation.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from ..api.demand import demand_lease_name
from ..api.model_deployment import ModelDeployment
from ..api.names import GPU_POOL_PLURAL, GROUP, SECRET_TOKEN_KEY, VERSION, token_secret_name
from ..reconcile.builders import (
    Owner,
    control_token_secret,
    demand_lease,
    model_service,
)
from ..reconcile.placement import Placement, place
from .kube import Kube


@dataclass(frozen=True)
class Ensured:
    """What making sure of a model's children learnt, so nobody reads it back.

    `token`: the control token, when this call created its Secret (it chose the token); read
    from the Secret when it was there already. `demand`: the renewTime of a demand Lease that was
    there already (an operator restart, a takeover): demand the first pass must see. A Lease
    this call created holds none yet; later renewals come through the Lease watch."""

    token: str | None
    demand: float | None


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

    async def ensure(self, owner: Owner, model: ModelDeployment) -> Ensured | None:
        """Make sure the per-model objects exist (once per ModelDeployment uid: None after the
        first time). Each is created, and read only if it existed (409): what this call
        created it knows already."""
        key = (owner.namespace, owner.name, owner.uid)
        if key in self._ensured:
            return None
        kube, ns = self._kube, owner.namespace
        chosen = secrets.token_urlsafe(32)
        token: str | None = chosen
        if not await kube.create_if_missing(control_token_secret(owner, chosen)):
            token = await kube.read_secret_key(ns, token_secret_name(owner.name), SECRET_TOKEN_KEY)
        demand = None
        if not await kube.create_if_missing(demand_lease(owner)):
            demand = await kube.read_lease_renew_time(ns, demand_lease_name(owner.name))
        await kube.create_if_missing(model_service(owner, model.spec))
        self._ensured.add(key)
        return Ensured(token, demand)
