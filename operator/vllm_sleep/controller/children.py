"""A ModelDeployment's per-model children (Secret, Lease, Service) and the GPUPools it names.

Manifests come from the pure builders (`reconcile.builders`); which pods to create or delete is
decided by the plan (`reconcile.plan`). This module only does I/O. It never patches what a user
may have changed by hand on a child other than through recreation.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
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

log = logging.getLogger(__name__)


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
        # (ns, name, uid) whose Secret and Lease exist; and whose Service does
        self._ensured: set[tuple[str, str, str]] = set()
        self._services: set[tuple[str, str, str]] = set()
        self._creating: dict[tuple[str, str, str], asyncio.Task[None]] = {}  # Services on the way
        self._refused: dict[tuple[str, str, str], str] = {}  # the last refusal said, per model
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

    async def ensure(self, owner: Owner) -> Ensured | None:
        """Make sure the Secret and the demand Lease exist (once per ModelDeployment uid: None
        after the first time), both at once. Each is created, and read only if it existed
        (409): what this call created it knows already. The pod mounts the Secret, and the
        first pass must see the demand a Lease already holds; the Service waits for
        `ensure_service`, after the pod (nothing needs it first, and in a fleet's bring-up
        every request queued ahead of a pod's create delays that pod's start; the Service waits
        for every other request, see `ensure_service`)."""
        key = (owner.namespace, owner.name, owner.uid)
        if key in self._ensured:
            return None
        token, demand = await asyncio.gather(self._secret(owner), self._lease(owner))
        self._ensured.add(key)
        return Ensured(token, demand)

    def ensure_service(
        self,
        owner: Owner,
        model: ModelDeployment,
        refused: Callable[[str], None] = lambda _message: None,
    ) -> None:
        """Make sure the model's Service exists (once per ModelDeployment uid), in a task of its
        own: its create is the operator's least urgent request (`lanes.Lane.BACKGROUND`), and
        the pass that asks for it goes on (the pre-warm order comes from the next one). A
        create that fails is tried again by the next pass that asks; `refused` is told why
        (an Event), once per distinct reason."""
        key = (owner.namespace, owner.name, owner.uid)
        if key in self._services or key in self._creating:
            return
        manifest = model_service(owner, model.spec)
        self._creating[key] = asyncio.create_task(
            self._create_service(key, manifest, refused),
            name=f"service {owner.namespace}/{owner.name}",
        )

    async def _create_service(
        self, key: tuple[str, str, str], manifest: dict[str, Any], refused: Callable[[str], None]
    ) -> None:
        try:
            await self._kube.create_if_missing(manifest)
            self._services.add(key)
            self._refused.pop(key, None)
        except Exception as e:
            log.warning(
                "creating Service %s/%s failed (%s); the next pass tries again", key[0], key[1], e
            )
            message = f"creating the Service {key[1]} failed: {type(e).__name__}: {e}"[:1000]
            if self._refused.get(key) != message:
                self._refused[key] = message
                refused(message)
        finally:
            if self._creating.get(key) is asyncio.current_task():
                del self._creating[key]

    async def drain(self) -> None:
        """Wait for the Services being created (tests; a clean shutdown)."""
        while self._creating:
            await asyncio.gather(*list(self._creating.values()), return_exceptions=True)

    def forget(self, namespace: str, name: str) -> None:
        """The model is gone: a new one of the same name (another uid) is ensured afresh."""
        for keys in (self._ensured, self._services):
            keys.difference_update({k for k in keys if k[:2] == (namespace, name)})
        for key in [k for k in self._refused if k[:2] == (namespace, name)]:
            del self._refused[key]
        for key in [k for k in self._creating if k[:2] == (namespace, name)]:
            self._creating.pop(key).cancel()

    async def _secret(self, owner: Owner) -> str | None:
        chosen = secrets.token_urlsafe(32)
        if await self._kube.create_if_missing(control_token_secret(owner, chosen)):
            return chosen
        name = token_secret_name(owner.name)
        return await self._kube.read_secret_key(owner.namespace, name, SECRET_TOKEN_KEY)

    async def _lease(self, owner: Owner) -> float | None:
        if await self._kube.create_if_missing(demand_lease(owner)):
            return None
        return await self._kube.read_lease_renew_time(
            owner.namespace, demand_lease_name(owner.name)
        )
