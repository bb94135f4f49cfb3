"""How the gateway asks for a model to be woken: the DemandSignal seam.

`LeaseDemand` renews the `<mdep>-demand` Lease the operator watches (create if missing, owned by
the ModelDeployment); `MemoryDemand` records calls for contract tests. The Router calls
`signal` at most once per model per interval, never per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from vllm_sleep.api.names import (
    API_VERSION,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    MANAGED_BY,
    MODEL_DEPLOYMENT_KIND,
    demand_lease_name,
)

from .routing import ModelSpec


class DemandSignal(Protocol):
    async def signal(self, spec: ModelSpec) -> None:
        """Ask for `spec`'s model to be woken. Raises on failure (the Router retries)."""
        ...

    async def close(self) -> None: ...


@dataclass
class MemoryDemand:
    """Records every signal; `on_signal` lets a test play the operator (e.g. flip awake)."""

    on_signal: Callable[[ModelSpec], None] | None = None
    calls: list[tuple[ModelSpec, float]] = field(default_factory=list)
    fail: bool = False

    async def signal(self, spec: ModelSpec) -> None:
        if self.fail:
            raise RuntimeError("demand signal failed (test)")
        self.calls.append((spec, time.monotonic()))
        if self.on_signal is not None:
            self.on_signal(spec)

    def count(self, name: str) -> int:
        return sum(1 for spec, _ in self.calls if spec.key.name == name)

    async def close(self) -> None:
        return None


def micro_time(now: datetime | None = None) -> str:
    """Kubernetes MicroTime, the format of Lease renewTime."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(spec: ModelSpec, holder: str, renew_time: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": demand_lease_name(spec.key.name),
        "namespace": spec.key.namespace,
        "labels": {
            LABEL_MODEL: spec.key.name,
            LABEL_COMPONENT: "demand-lease",
            LABEL_MANAGED_BY: MANAGED_BY,
        },
    }
    if spec.uid:  # garbage-collected with its ModelDeployment
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": MODEL_DEPLOYMENT_KIND,
                "name": spec.key.name,
                "uid": spec.uid,
            }
        ]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {"holderIdentity": holder, "renewTime": renew_time},
    }


LEASE_TIMEOUT = 10.0  # seconds for one renewal (patch, and create on 404)


class LeaseDemand:
    """Renews `<mdep>-demand` with a merge patch; creates it on 404."""

    def __init__(self, api_client: Any, holder: str, *, timeout: float = LEASE_TIMEOUT) -> None:
        from kubernetes_asyncio import client

        # Any: the generated client's stubs reject dict bodies and `_content_type`, both valid.
        self._api: Any = client.CoordinationV1Api(api_client)
        self._exc = client.ApiException
        self._holder = holder
        self._timeout = timeout
        # No lock: the Router sends one signal per model at a time, and two gateways racing
        # patch-then-create end in a 409 that is ignored below. A lock shared by all models
        # made one stalled write stop every model's demand behind it.

    async def signal(self, spec: ModelSpec) -> None:
        name, ns = demand_lease_name(spec.key.name), spec.key.namespace
        patch = {"spec": {"holderIdentity": self._holder, "renewTime": micro_time()}}
        # Bounded: the generated client sets no timeout of its own, and the Router keeps one
        # signal per model in flight, so a write that never returned (an apiserver that
        # stalled, a half-open connection) stopped this model's renewals for good. A timeout
        # raises, and the Router retries after DEMAND_RETRY.
        async with asyncio.timeout(self._timeout):
            try:
                await self._api.patch_namespaced_lease(
                    name, ns, patch, _content_type="application/merge-patch+json"
                )
                return
            except self._exc as e:
                if e.status != 404:
                    raise
            try:
                await self._api.create_namespaced_lease(
                    ns, lease_body(spec, self._holder, micro_time())
                )
            except self._exc as e:
                if e.status != 409:  # another gateway created it first: its renewal counts
                    raise

    async def close(self) -> None:
        return None
