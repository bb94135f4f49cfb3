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

from vllm_sleep.api.demand import demand_lease, demand_lease_name, renew_patch

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


LEASE_TIMEOUT = 10.0  # seconds for one renewal (patch, and create on 404)


class LeaseDemand:
    """Renews `<mdep>-demand` with a merge patch; creates it on 404."""

    def __init__(
        self,
        api_client: Any,
        holder: str,
        *,
        timeout: float = LEASE_TIMEOUT,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        from kubernetes_asyncio import client

        # Any: the generated client's stubs reject dict bodies and `_content_type`, both valid.
        self._api: Any = client.CoordinationV1Api(api_client)
        self._exc = client.ApiException
        self._holder = holder
        self._timeout = timeout
        self._wall_clock = wall_clock  # renewTime is wall-clock time the operator compares
        # No lock: the Router sends one signal per model at a time, two gateways racing
        # patch-then-create end in a 409 that is ignored below, and one model's stalled write
        # must not hold back any other model's demand.

    async def signal(self, spec: ModelSpec) -> None:
        name, ns = demand_lease_name(spec.key.name), spec.key.namespace
        # Bounded: the Router keeps one signal per model in flight and the generated client
        # has no timeout of its own, so an unbounded write (a stalled apiserver, a half-open
        # connection) would end this model's renewals. A timeout raises; the Router retries
        # after DEMAND_RETRY.
        async with asyncio.timeout(self._timeout):
            try:
                await self._api.patch_namespaced_lease(
                    name,
                    ns,
                    renew_patch(self._holder, self._wall_clock()),
                    _content_type="application/merge-patch+json",
                )
                return
            except self._exc as e:
                if e.status != 404:
                    raise
            try:
                body = demand_lease(
                    spec.key.name,
                    ns,
                    spec.uid or None,
                    holder=self._holder,
                    now=self._wall_clock(),
                    block_owner_deletion=False,
                )
                await self._api.create_namespaced_lease(ns, body)
            except self._exc as e:
                if e.status != 409:  # another gateway created it first: its renewal counts
                    raise

    async def close(self) -> None:
        return None
