"""One inference request: route, or hold until a replica is awake, then forward once.

The loop: pick the least-loaded awake replica; if there is none, join the model's bounded hold
queue (429 when full) and make sure demand is signalled. Then, if a pod's agent can hold the
request (asleep or waking, agent and engine loaded), the request is sent there and waits at the
agent, which releases it the instant its engine is confirmed awake: no wait for the operator's
awake condition and the pod watch. Otherwise it waits here for the model to change. Either way
the wake timeout (503) is the gateway's, and the request keeps its queue slot until it is
released. A `Retry` from the proxy (see proxy.py for the exact rule) excludes that replica and
loops; when every candidate has refused, the request waits briefly for the watch to catch up
and tries them again, still within the same deadline. A client that disconnects cancels the
handler (handler_cancellation), and `finally` frees its queue slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .errors import error_response
from .metrics import GatewayMetrics
from .proxy import Failed, Retry, SendResult, relay, send
from .router import Router
from .routing import ModelKey, ModelSpec, ModelTable, Replica

REFUSED_PAUSE = 0.5  # seconds before replicas that refused are tried again


class _Slot:
    """A request's place in its model's hold queue (and the held gauge) while it waits."""

    def __init__(
        self,
        table: ModelTable,
        metrics: GatewayMetrics,
        key: ModelKey,
        label: str,
        started: float,
        clock: Callable[[], float],
    ) -> None:
        self._table, self._metrics, self._key, self._label = table, metrics, key, label
        self._started, self._clock = started, clock
        self.active = False

    def take(self, limit: int) -> bool:
        if not self._table.try_enqueue(self._key, limit):
            return False
        self.active = True
        self._metrics.held.labels(self._label).inc()
        return True

    def leave(self, outcome: str | None) -> None:
        if not self.active:
            return
        self.active = False
        self._table.dequeue(self._key)
        self._metrics.held.labels(self._label).dec()
        if outcome is not None:
            self._metrics.hold_seconds.labels(outcome).observe(self._clock() - self._started)


class Dispatcher:
    def __init__(
        self,
        router: Router,
        session: aiohttp.ClientSession,
        metrics: GatewayMetrics,
        *,
        retry_after: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._router, self._table = router, router.table
        self._session, self._metrics = session, metrics
        self._retry_after = retry_after
        self._clock = clock

    async def dispatch(
        self,
        request: web.BaseRequest,
        spec: ModelSpec,
        path: str,
        headers: CIMultiDict[str],
        body: bytes,
    ) -> web.StreamResponse:
        table, key = self._table, spec.key
        label = spec.served_name  # fixed: the spec may be refreshed while held
        started = self._clock()
        deadline: float | None = None
        held = False
        exclude: set[tuple[str, str]] = set()
        try:
            while True:
                replica = table.choose(key, frozenset(exclude))
                if replica is None:
                    fresh = table.lookup_key(key)
                    if fresh is None:
                        return error_response(
                            404,
                            f"The model `{spec.served_name}` does not exist.",
                            "model_not_found",
                            param="model",
                        )
                    spec = fresh
                    if not spec.wake.on_request:
                        return self._unavailable(
                            spec, "model_asleep", "is asleep and is not woken by requests"
                        )
                    if not held:
                        if not table.try_enqueue(key, spec.wake.max_queued):
                            return error_response(
                                429,
                                f"Too many requests are waiting for `{spec.served_name}` "
                                "to wake; retry later.",
                                "queue_full",
                                retry_after=self._retry_after,
                            )
                        held = True
                        deadline = started + spec.wake.timeout
                        self._metrics.held.labels(label).inc()
                    self._router.request_demand(spec)
                    assert deadline is not None
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        self._observe_hold(started, "timeout")
                        return self._unavailable(
                            spec, "wake_timeout", f"did not wake within {spec.wake.timeout:g}s"
                        )
                    refused = bool(exclude) and bool(table.awake_replicas(key))
                    changed = await self._router.wait_change(
                        key, min(remaining, REFUSED_PAUSE) if refused else remaining
                    )
                    if refused and not changed:
                        exclude.clear()
                    continue
                if held:
                    # Leave the queue before forwarding: the slot is for waiting, not running.
                    held = False
                    table.dequeue(key)
                    self._metrics.held.labels(label).dec()
                    self._observe_hold(started, "forwarded")
                result = await self._forward(request, spec, replica, path, headers, body)
                if isinstance(result, Retry):
                    self._metrics.upstream_retries.labels(result.reason).inc()
                    exclude.add(replica.pod)
                    continue
                return result
        finally:
            if held:
                table.dequeue(key)
                self._metrics.held.labels(label).dec()
                if deadline is not None and self._clock() < deadline:
                    self._observe_hold(started, "abandoned")

    async def _forward(
        self,
        request: web.BaseRequest,
        spec: ModelSpec,
        replica: Replica,
        path: str,
        headers: CIMultiDict[str],
        body: bytes,
    ) -> web.StreamResponse | Retry:
        table = self._table
        table.acquire(replica)
        try:
            sent_at = self._clock()
            result = await send(self._session, replica.url + path, headers, body)
            if isinstance(result, Retry):
                return result
            if isinstance(result, Failed):
                return result.response
            self._metrics.upstream_latency.labels(spec.served_name).observe(self._clock() - sent_at)
            try:
                return await relay(request, result)
            finally:
                result.release()
        finally:
            table.release(replica)

    def _unavailable(self, spec: ModelSpec, code: str, why: str) -> web.Response:
        return error_response(
            503,
            f"The model `{spec.served_name}` {why}; retry later.",
            code,
            retry_after=self._retry_after,
        )

    def _observe_hold(self, started: float, outcome: str) -> None:
        self._metrics.hold_seconds.labels(outcome).observe(self._clock() - started)
