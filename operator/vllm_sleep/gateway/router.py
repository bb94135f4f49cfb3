"""The asyncio side of the core: feeds the ModelTable, wakes held requests, sends demand.

Implements BackendSink. Held requests wait on a per-model event that any change of that model
(pod or spec) sets; they then re-ask the table. Demand goes out from here only, throttled by
the table, one in flight per model, so N held requests cost one Lease write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from ..api.served_names import ExposurePolicy
from .demand import DemandSignal
from .metrics import GatewayMetrics
from .routing import ModelKey, ModelSpec, ModelTable, PodState

log = logging.getLogger(__name__)

DEMAND_RETRY = 1.0  # seconds before a failed Lease write is tried again


class ShuttingDown(Exception):
    """A held request's wait ended because the gateway is stopping (answered 503)."""


class Router:
    def __init__(
        self,
        demand: DemandSignal,
        metrics: GatewayMetrics,
        *,
        demand_interval: float,
        clock: Callable[[], float] = time.monotonic,
        exposure: ExposurePolicy | None = None,
    ) -> None:
        self.table = ModelTable(exposure)
        self._demand = demand
        self._metrics = metrics
        self._interval = demand_interval
        self._clock = clock
        self._changed: dict[ModelKey, asyncio.Event] = {}
        self._signalling: dict[ModelKey, asyncio.Task[None]] = {}
        self._pump: asyncio.Task[None] | None = None
        self._ending = False  # end_holds() was called
        # -> (served name, reason), as reported: the gauge's last two labels
        self._refused: dict[ModelKey, tuple[str, str]] = {}

    # -- BackendSink ---------------------------------------------------------------------------

    def upsert_model(self, spec: ModelSpec) -> None:
        self._report_conflicts(self.table.upsert_model(spec))
        self._notify(spec.key)

    def remove_model(self, key: ModelKey) -> None:
        self._report_conflicts(self.table.remove_model(key))
        self._notify(key)

    def upsert_pod(self, pod: PodState) -> None:
        self._notify(self.table.upsert_pod(pod))

    def remove_pod(self, namespace: str, name: str) -> None:
        key = self.table.remove_pod(namespace, name)
        if key is not None:
            self._notify(key)

    def replace_models(self, specs: Sequence[ModelSpec]) -> None:
        self.table.replace_all(specs, None)
        self._report_conflicts()
        self._notify_all()

    def _report_conflicts(self, keys: Iterable[ModelKey] | None = None) -> None:
        """Log and export each ModelDeployment refused its served name, once per change.

        `keys`: the models whose refusal may have changed (the table says which); None, all.
        """
        if keys is None:
            keys = self._refused.keys() | self.table.refused.keys()
        gauge = self._metrics.name_conflicts
        for key in keys:
            refusal = self.table.refused.get(key)
            spec = None if refusal is None else self.table.lookup_key(key)
            before = self._refused.get(key)
            now = (
                None
                if refusal is None or spec is None
                else (spec.served_name, refusal.reason.value)
            )
            if now == before:
                continue
            if before is not None:
                # 0 first: with several workers the series lives in a metrics file that
                # remove() does not touch (gateway/workers.py).
                gauge.labels(key.namespace, key.name, *before).set(0)
                gauge.remove(key.namespace, key.name, *before)
            if now is not None and refusal is not None:
                self._refused[key] = now
                gauge.labels(key.namespace, key.name, *now).set(1)
                log.warning("ModelDeployment %s/%s: %s", key.namespace, key.name, refusal.message)
            else:
                del self._refused[key]
                log.info(
                    "ModelDeployment %s/%s: its served name is no longer refused",
                    key.namespace,
                    key.name,
                )

    def replace_pods(self, pods: Sequence[PodState]) -> None:
        self.table.replace_all(None, pods)
        self._notify_all()

    def _notify(self, key: ModelKey) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    def _notify_all(self) -> None:
        for key in list(self._changed):
            self._notify(key)

    # -- held requests -------------------------------------------------------------------------

    def wait_change(self, key: ModelKey, timeout: float) -> Coroutine[Any, Any, bool]:
        """Wait until the model's pods or spec change; False on timeout; ShuttingDown once
        `end_holds` was called.

        The waiter is registered by this call, not when the returned coroutine first runs: the
        dispatcher wraps it in a task (racing its send), and a change notified between the
        caller's last look at the table and that task's first step was lost, so a request
        released at its agent kept its queue slot (and renewed demand) until its deadline.
        """
        if self._ending:
            raise ShuttingDown  # also ends a hold at an agent (its send is closed, unforwarded)
        return self._wait(self._changed.setdefault(key, asyncio.Event()), timeout)

    async def _wait(self, event: asyncio.Event, timeout: float) -> bool:
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await event.wait()
        except TimeoutError:
            return False
        if self._ending:
            raise ShuttingDown
        return True

    def end_holds(self) -> None:
        """Every held request's wait ends with ShuttingDown, now and from now on.

        At stop the Pod watch stops too, so a held request would wait for a wake nobody can
        report until the grace ran out and its connection was cut: no answer at all for a
        request that never reached an engine, and one the client could retry elsewhere.
        """
        self._ending = True
        self._notify_all()

    def request_demand(self, spec: ModelSpec) -> None:
        """Called by every held request; sends only when the table says one is due."""
        if spec.key in self._signalling:
            return
        if self.table.demand_due(spec.key, self._clock(), self._interval):
            task = asyncio.create_task(self._signal(spec), name=f"demand {spec.key}")
            self._signalling[spec.key] = task

    async def _signal(self, spec: ModelSpec) -> None:
        try:
            await self._demand.signal(spec)
            self._metrics.demand_signals.labels("ok").inc()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._metrics.demand_signals.labels("error").inc()
            log.warning("demand signal for %s/%s failed: %s", spec.key.namespace, spec.key.name, e)
            self.table.demand_failed(spec.key, self._clock(), self._interval, DEMAND_RETRY)
        finally:
            self._signalling.pop(spec.key, None)

    async def _pump_loop(self) -> None:
        # Held requests only call request_demand when they wake up; a model whose requests
        # wait the whole timeout still needs its Lease renewed every interval.
        while True:
            await asyncio.sleep(min(self._interval, DEMAND_RETRY))
            for key in self.table.held_models():
                spec = self.table.lookup_key(key)
                if spec is not None:
                    self.request_demand(spec)

    async def start(self) -> None:
        self._pump = asyncio.create_task(self._pump_loop(), name="demand pump")

    async def stop(self) -> None:
        tasks = [t for t in (self._pump, *self._signalling.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pump = None
