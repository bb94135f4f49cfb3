"""Leader election's Kubernetes edge: read the leader Lease, write what api.leader decides.

`acquire()` blocks a standby until it holds the Lease; `hold()` renews every retryPeriod and
returns only when leadership is lost (someone else holds the Lease). Independently, a watchdog
thread ends the process once renewDeadline has passed since the last successful renewal was
sent, even if the event loop is stuck: a holder that cannot renew stops acting before its Lease
can be taken (docs/reliability.md). Stopping is exiting: the process leaves no half-cancelled
handler behind, and Kubernetes restarts it as a standby (client-go's OnStoppedLeading).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..api import leader
from ..api.leader import Decision, Seen, Timings
from ..api.names import LABEL_MANAGED_BY, MANAGED_BY
from .kube import json_answer, unless_absent

log = logging.getLogger(__name__)

COMPONENT = "vllm-sleep-operator"
REASON = "LeaderElection"
EXIT_LOST = 1  # exit status of a replica that stopped leading without meaning to

# What a failed round looks like: the apiserver refusing, unreachable, or too slow.
_TRANSIENT = (ApiException, aiohttp.ClientError, OSError, asyncio.TimeoutError)


def _now_wall() -> datetime:
    return datetime.now(UTC)


def _exit_now(status: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class LeaderElector:
    def __init__(
        self,
        coord: client.CoordinationV1Api,
        core: client.CoreV1Api,
        namespace: str,
        name: str,
        identity: str,
        timings: Timings,
        *,
        on_leading: Callable[[bool], None] = lambda _leading: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _now_wall,
        exit_process: Callable[[int], None] = _exit_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.coord, self.core = coord, core
        self.namespace, self.name, self.identity = namespace, name, identity
        self.timings = timings
        self._on_leading = on_leading
        self._clock, self._wall, self._exit, self._sleep = clock, wall, exit_process, sleep
        self._seen: Seen | None = None
        self._uid = ""
        self._until: float | None = None  # acting until (local monotonic); None: not leading
        self._watchdog: threading.Thread | None = None

    async def acquire(self) -> None:
        """Wait as a standby until this replica holds the Lease."""
        log.info(
            "leader election: %s is a candidate for %s/%s", self.identity, self.namespace, self.name
        )
        while True:
            try:
                decision, previous = await self._round()
            except _TRANSIENT as e:
                log.warning(
                    "leader election: cannot read or write the Lease %s/%s (%s); retrying",
                    self.namespace,
                    self.name,
                    _brief(e),
                )
                await self._sleep(self.timings.retry_period)
                continue
            if decision is None:  # written: this replica leads
                self._start_watchdog()
                self._on_leading(True)
                took = f" (took over from {previous})" if previous else ""
                log.info("leader election: %s became leader%s", self.identity, took)
                await self._event(f"{self.identity} became leader{took}")
                return
            if decision.action == "wait":
                await self._sleep(decision.wait)
            # else a conflict: another candidate wrote first; read again at once

    async def hold(self) -> None:
        """Renew every retryPeriod; return when another replica holds the Lease or the renew
        deadline passed (the watchdog exits the process at that moment anyway)."""
        while True:
            await self._sleep(self.timings.retry_period)
            if self._until is None:
                return
            remaining = self._until - self._clock()
            if remaining <= 0:
                return
            try:
                decision, _ = await asyncio.wait_for(self._round(), remaining)
            except _TRANSIENT as e:
                log.warning("leader election: renewal failed (%s)", _brief(e))
                continue
            if decision is not None and decision.action == "wait":
                holder = self._seen.record.holder if self._seen else "?"
                log.error("leader election: %s lost the Lease to %s", self.identity, holder)
                return
            # None: renewed; a conflict is retried next period while the deadline allows

    async def release(self) -> None:
        """Give the Lease up on a clean stop (after the handlers stopped): a standby takes it
        at its next retry instead of waiting out the lease duration."""
        if self._until is None:
            return
        self._until = None
        self._on_leading(False)
        try:
            lease = await self._read()
            if lease is None:
                return
            rv, _, record = leader.read_lease(lease)
            if record.holder != self.identity:
                return
            body = leader.write_patch(rv, leader.release_spec(record, self._wall()))
            await self._patch(body)
            log.info("leader election: %s released the Lease", self.identity)
            await self._event(f"{self.identity} stopped leading and released the Lease")
        except _TRANSIENT as e:
            log.warning("leader election: could not release the Lease (%s)", _brief(e))

    def stop_acting(self, why: str) -> None:
        """Leadership is gone: end the process now (the handlers must not act on)."""
        self._on_leading(False)
        log.critical("leader election: %s stops acting: %s; exiting", self.identity, why)
        self._exit(EXIT_LOST)

    # --- one round: read, decide, write ----------------------------------------------------------

    async def _round(self) -> tuple[Decision | None, str]:
        """Read the Lease and write what `decide` says. (None, previous holder) when this
        replica wrote and so holds it; (the decision, previous holder) when it waited or lost a
        write conflict."""
        lease = await self._read()
        now = self._clock()  # after the read: the version it returned may be that recent
        if lease is None:
            self._seen = None
        else:
            rv, self._uid, record = leader.read_lease(lease)
            self._seen = leader.see(self._seen, rv, record, now)
        previous = self._seen.record.holder if self._seen else ""
        decision = leader.decide(self.identity, self._seen, now, self._wall(), self.timings)
        if decision.action == "wait":
            return decision, previous
        assert decision.spec is not None
        sent = self._clock()
        try:
            written = await self._write(decision.spec)
        except ApiException as e:
            if e.status == 409:
                return decision, previous
            raise
        rv, self._uid, record = leader.read_lease(written)
        self._seen = leader.see(None, rv, record, sent)
        self._until = leader.leading_until(sent, self.timings)
        return None, "" if previous == self.identity else previous

    async def _write(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create the Lease (none seen) or patch the version seen; the Lease as written."""
        if self._seen is None:
            body = leader.leader_lease(self.name, self.namespace, {LABEL_MANAGED_BY: MANAGED_BY})
            body["spec"] = spec
            create: Any = self.coord.create_namespaced_lease  # typed for V1Lease; a dict goes as is
            created: dict[str, Any] = await json_answer(
                create(self.namespace, body, _preload_content=False)
            )
            return created
        return await self._patch(leader.write_patch(self._seen.resource_version, spec))

    async def _patch(self, body: dict[str, Any]) -> dict[str, Any]:
        # A merge patch (the typed signature lacks _content_type; a dict would go as JSON patch).
        patch: Any = self.coord.patch_namespaced_lease
        answer: dict[str, Any] = await json_answer(
            patch(
                self.name,
                self.namespace,
                body,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
        )
        return answer

    async def _read(self) -> dict[str, Any] | None:
        read: Any = self.coord.read_namespaced_lease
        lease: dict[str, Any] | None = await unless_absent(
            json_answer(read(self.name, self.namespace, _preload_content=False))
        )
        return lease

    async def _event(self, message: str) -> None:
        body = leader.leader_event(
            self.name, self.namespace, self._uid, REASON, message, self._wall(), COMPONENT
        )
        try:
            post: Any = self.core.create_namespaced_event  # typed for CoreV1Event
            await post(self.namespace, body)
        except _TRANSIENT as e:  # an Event is a record, never a reason to stop
            log.warning("leader election: could not post an Event (%s)", _brief(e))

    # --- the deadline, kept by a thread ----------------------------------------------------------

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch_deadline, name="leader-deadline", daemon=True
            )
            self._watchdog.start()

    def _watch_deadline(self) -> None:
        while True:
            until = self._until
            if until is None:  # released on purpose
                return
            left = until - self._clock()
            if left <= 0:
                self.stop_acting(
                    f"no renewal within the renew deadline ({self.timings.renew_deadline:g}s)"
                )
                return
            time.sleep(min(left, 0.25))


def _brief(e: BaseException) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status} {e.reason}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
