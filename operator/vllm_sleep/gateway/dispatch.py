"""One inference request: route, or hold until a replica is awake, then forward once.

The loop: pick the least-loaded awake replica; if there is none, join the model's bounded hold
queue (429 when full) and make sure demand is signalled. A model the operator reports no wake
can serve (`ModelSpec.cannot_wake`: replicas 0, no device for it) is answered 503 at once
instead, when no replica is awake and no pod can hold the request: checked where a hold would
start. When the problem is the whole model's (its GPUPool is gone: no replica wakes), a pod that
could hold is no reason to hold, and a request already held, in the queue or at an agent (whose
upstream request is then closed: the agent drops it), gets the same answer. Then, if a
pod's agent can hold the request (asleep or waking, agent and engine loaded), it is sent there
and waits at the agent, which releases it the instant its engine is confirmed awake: no wait
for the operator's awake condition and the pod watch. Otherwise it waits here for the model to
change. Either way the wake timeout (503) is the gateway's, and the request keeps its queue
slot until it is released. A `Retry` from the proxy (see proxy.py for the exact rule) excludes
that replica and loops, back into the queue without a second admission check (it keeps its
place); when every candidate has refused, the request waits briefly for the watch to catch up
and tries them again, still within the same deadline. A client that disconnects cancels the
handler (the h1 server cancels it), and `finally` frees its queue slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..api.openai_errors import ErrorCode
from ..h1 import Exchange, Reply, Response, UpstreamError, UpstreamPool
from .errors import error_response
from .metrics import GatewayMetrics
from .proxy import Failed, Retry, SendResult, send
from .router import Router, ShuttingDown
from .routing import CannotWake, ModelKey, ModelSpec, ModelTable, Replica

log = logging.getLogger(__name__)

REFUSED_PAUSE = 0.5  # seconds before replicas that refused are tried again
_NONE: frozenset[tuple[str, str]] = frozenset()
_RELAYED = object()  # _forward: the upstream's answer went to the client
_TIMED_OUT = object()  # _forward: held at an agent past the wake deadline


class _Slot:
    """A request's place in its model's hold queue (and the held gauge) while it waits.

    Admission is checked once: a request sent back to the queue (an agent refused it, never
    forwarding it) re-enters without the `maxQueued` check, so a newcomer that came in while
    it was out cannot turn it into a 429. Its hold is observed once, when the request is done,
    with the outcome and hold time of its last wait.
    """

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
        self.deadline: float | None = None  # set on admission, kept across re-holds
        self._outcome: tuple[str, float] | None = None

    def take(self, limit: int, timeout: float) -> bool:
        if self.deadline is None:
            if not self._table.try_enqueue(self._key, limit):
                return False
            self.deadline = self._started + timeout
        else:
            self._table.requeue(self._key)
        self.active = True
        self._metrics.held.labels(self._label).inc()
        return True

    def leave(self, outcome: str | None = None) -> None:
        if self.active:
            self.active = False
            self._table.dequeue(self._key)
            self._metrics.held.labels(self._label).dec()
        if outcome is not None and self.deadline is not None:
            self._outcome = (outcome, self._clock() - self._started)

    def close(self) -> None:
        """The request is done: its hold, if it had one, is observed (once)."""
        self.leave()
        if self._outcome is not None:
            outcome, seconds = self._outcome
            self._outcome = None
            self._metrics.hold_seconds.labels(outcome).observe(seconds)


class Dispatcher:
    def __init__(
        self,
        router: Router,
        pool: UpstreamPool,
        metrics: GatewayMetrics,
        *,
        retry_after: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._router, self._table = router, router.table
        self._pool, self._metrics = pool, metrics
        self._retry_after = retry_after
        self._clock = clock

    async def dispatch(
        self, reply: Reply, spec: ModelSpec, target: bytes, block: bytes, body: bytes
    ) -> Response | None:
        """Answer one request: a Response to send, or None when the upstream's was relayed."""
        started = self._clock()
        exclude: set[tuple[str, str]] = set()
        # The common case first, with no hold slot to set up and tear down: an awake replica.
        replica = self._table.choose(spec.key, _NONE)
        if replica is not None:
            result = await self._forward(reply, spec, replica, target, block, body)
            if not isinstance(result, Retry):
                return result if isinstance(result, Response) else None
            self._metrics.upstream_retries.labels(result.reason).inc()
            exclude.add(replica.pod)
        return await self._dispatch(reply, spec, target, block, body, started, exclude)

    async def utility(
        self, reply: Reply, spec: ModelSpec, target: bytes, block: bytes, body: bytes
    ) -> Response | None:
        """A per-pod utility (/tokenize, /detokenize, count_tokens): vLLM's frontend answers it
        asleep or awake, so it goes to any replica whose agent is up (awake preferred), and is
        never held, never counted in a hold queue and never asks for a wake. A replica that
        refuses the connection (or whose agent refuses it) is skipped; no replica up: 503."""
        exclude: set[tuple[str, str]] = set()
        while (replica := self._table.choose_up(spec.key, frozenset(exclude))) is not None:
            self._table.acquire(replica)
            try:
                result = await send(self._pool, replica.url, target, block, body, reply, whole=True)
                if isinstance(result, Retry):
                    self._metrics.upstream_retries.labels(result.reason).inc()
                    exclude.add(replica.pod)
                    continue
                if isinstance(result, Failed):
                    return result.response
                await _relay(replica, result, reply)
                return None
            finally:
                self._table.release(replica)
        return error_response(
            503,
            f"No replica of `{spec.served_name}` is running to answer this; it is answered by "
            "a running replica, asleep or awake, and does not wake the model. Retry later.",
            ErrorCode.MODEL_UNAVAILABLE,
            retry_after=self._retry_after,
        )

    async def _dispatch(
        self,
        reply: Reply,
        spec: ModelSpec,
        target: bytes,
        block: bytes,
        body: bytes,
        started: float,
        exclude: set[tuple[str, str]],
    ) -> Response | None:
        """`dispatch` past its first try: choose, hold, forward, until answered."""
        table, key = self._table, spec.key
        # The label is fixed: the spec may be refreshed while held.
        slot = _Slot(table, self._metrics, key, spec.served_name, started, self._clock)
        try:
            while True:
                replica = table.choose(key, frozenset(exclude) if exclude else _NONE)
                if replica is not None:
                    # Leave the queue before forwarding: the slot is for waiting, not running.
                    slot.leave("forwarded")
                    result = await self._forward(reply, spec, replica, target, block, body)
                else:
                    fresh = table.lookup_key(key)
                    if fresh is None:
                        slot.leave("rejected")  # deleted while held
                        return error_response(
                            404,
                            f"The model `{spec.served_name}` does not exist.",
                            ErrorCode.MODEL_NOT_FOUND,
                            param="model",
                        )
                    spec = fresh
                    why = self._refusal(spec)
                    if why is not None:
                        # The operator says no wake can serve it (replicas 0, no device):
                        # holding would only wait out wake.timeout for the same answer.
                        slot.leave("rejected")
                        return self._cannot_wake(spec, why)
                    if not spec.wake.on_request:
                        slot.leave("rejected")  # wake on request turned off while held
                        return self._unavailable(
                            spec, ErrorCode.MODEL_ASLEEP, "is asleep and is not woken by requests"
                        )
                    if not slot.active and not slot.take(spec.wake.max_queued, spec.wake.timeout):
                        return error_response(
                            429,
                            f"Too many requests are waiting for `{spec.served_name}` "
                            "to wake; retry later.",
                            ErrorCode.QUEUE_FULL,
                            retry_after=self._retry_after,
                        )
                    self._router.request_demand(spec)
                    deadline = slot.deadline
                    assert deadline is not None
                    if deadline - self._clock() <= 0:
                        return self._wake_timeout(spec, slot)
                    replica = table.choose_holder(key, frozenset(exclude))
                    if replica is None:
                        await self._wait(key, deadline, exclude)
                        continue
                    result = await self._forward(reply, spec, replica, target, block, body, slot)
                if result is _TIMED_OUT:  # held at an agent until the deadline
                    return self._wake_timeout(spec, slot)
                if isinstance(result, CannotWake):  # held at an agent when the status said so
                    slot.leave("rejected")
                    return self._cannot_wake(spec, result)
                if isinstance(result, Retry):
                    self._metrics.upstream_retries.labels(result.reason).inc()
                    exclude.add(replica.pod)
                    continue
                return result if isinstance(result, Response) else None
        except ShuttingDown:
            slot.leave("shutdown")  # answered 503 shutting_down by the handler
            raise
        finally:
            if slot.active and slot.deadline is not None and self._clock() < slot.deadline:
                slot.leave("abandoned")
            slot.close()

    def _refusal(self, spec: ModelSpec) -> CannotWake | None:
        """Why a request for `spec`'s model is refused rather than held, if it is: the operator
        says no wake can serve the model, no replica is awake, and no pod can hold the request
        or, when the problem is the whole model's, whatever the pods (none of them wakes)."""
        why, table = spec.cannot_wake, self._table
        if why is None or table.awake_replicas(spec.key):
            return None
        if not why.whole_model and table.holding_replicas(spec.key):
            return None  # a replica's problem: the placed ones still wake
        return why

    def _held_refusal(self, key: ModelKey) -> CannotWake | None:
        """`_refusal` for a request already held at an agent: only a problem of the whole
        model's ends that hold (for a replica's, the agent's pod is placed and may wake)."""
        spec = self._table.lookup_key(key)
        why = None if spec is None else self._refusal(spec)
        return why if why is not None and why.whole_model else None

    async def _wait(self, key: ModelKey, deadline: float, exclude: set[tuple[str, str]]) -> None:
        """Wait in the gateway's queue for the model's pods or spec to change.

        After refusals (some pod is awake or can hold, but every one refused), wait at most
        REFUSED_PAUSE for the watch and then try them all again: an agent that timed out its
        hold (or was full) before our deadline is asked again, not answered with an error.
        """
        table = self._table
        refused = bool(exclude) and bool(table.awake_replicas(key) or table.holding_replicas(key))
        remaining = deadline - self._clock()
        await self._router.wait_change(key, min(remaining, REFUSED_PAUSE) if refused else remaining)
        # Every replica is tried again after any change, not only after a quiet pause: the
        # change is usually the refusing pod itself (the watch caught up: asleep, its agent
        # now holds; or it woke).
        exclude.clear()

    async def _forward(
        self,
        reply: Reply,
        spec: ModelSpec,
        replica: Replica,
        target: bytes,
        block: bytes,
        body: bytes,
        slot: _Slot | None = None,
    ) -> Response | Retry | CannotWake | object:
        """Send and relay: a Response to send, a Retry, _RELAYED, or, for a request held at an
        agent (`slot`), _TIMED_OUT when it ran into its deadline and a CannotWake when the
        model's status said meanwhile that no replica of it wakes."""
        table = self._table
        table.acquire(replica)
        # The agent holds an inference request while its engine is not awake (every routed
        # request is one): no byte comes until it releases it, so the first byte may take
        # the hold on top of the read timeout; the reads after it, the read timeout.
        first = self._pool.read_timeout
        try:
            if slot is None:
                # Sent to a replica seen awake: its engine may have gone to sleep since (the
                # watch lags), and the agent then holds it for up to its hold timeout, which
                # is the model's wake timeout.
                if first is not None:
                    first += spec.wake.timeout
                sent_at = time.monotonic()  # Exchange.head_at's clock
                # `whole`: back once the answer was relayed (the handler wakes once, not at
                # the head and again at the end); the head's time is kept for the metric.
                result = await send(
                    self._pool, replica.url, target, block, body, reply, whole=True, first=first
                )
            else:
                # Held at the agent for the gateway: until the wake deadline (which the
                # gateway enforces itself, _until_released).
                if first is not None:
                    assert slot.deadline is not None
                    first += max(0.0, slot.deadline - self._clock())
                sent = send(self._pool, replica.url, target, block, body, reply, first=first)
                sending = asyncio.create_task(sent)
                try:
                    stopped = await self._until_released(spec.key, replica, sending, slot, reply)
                    sent_at = self._clock()  # for a held request: from its release, not the hold
                    if stopped is None:
                        result = await sending
                except BaseException:
                    await _cancel(sending)  # an answer that came in meanwhile is closed
                    raise
                if stopped is not None:
                    return stopped
            if isinstance(result, Retry):
                return result
            if slot is not None:
                slot.leave("forwarded")  # the agent answered: the request is no longer held
            if isinstance(result, Failed):
                return result.response
            latency = result.head_at - sent_at if slot is None else self._clock() - sent_at
            self._metrics.observe_upstream(spec.served_name, latency)
            await _relay(replica, result, reply)
            return _RELAYED
        finally:
            table.release(replica)

    async def _until_released(
        self,
        key: ModelKey,
        replica: Replica,
        sending: asyncio.Task[SendResult],
        slot: _Slot,
        reply: Reply,
    ) -> CannotWake | object | None:
        """Enforce the gateway's wake timeout on a request held at an agent.

        The request counts as held (queue slot, deadline) until the agent answers or the pod
        watch shows the pod awake, i.e. the agent has released it to its engine; from then on
        it is running, and a long answer is not cut by the wake deadline: None. _TIMED_OUT when
        the deadline passed first, and the operator's CannotWake when the model's status says
        no replica of it wakes (a problem of the whole model's) while none is awake: the
        connection is closed, and the agent drops the held request without forwarding it.
        """
        deadline = slot.deadline
        assert deadline is not None
        while not sending.done():
            if self._table.is_awake(key, replica.pod):
                slot.leave("forwarded")
                return None
            remaining = deadline - self._clock()
            stop = _TIMED_OUT if remaining <= 0 else self._held_refusal(key)
            if stop is not None:
                if reply.started:
                    # The agent's answer head is already spliced into the reply (from the
                    # upstream's callback; the send task finishes a loop turn later): the
                    # request is released and being answered. A started reply gets no
                    # second response.
                    slot.leave("forwarded")
                    return None
                await _cancel(sending)
                return stop
            change = asyncio.ensure_future(self._router.wait_change(key, remaining))
            try:
                await asyncio.wait((sending, change), return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _cancel(change)
        return None

    def _wake_timeout(self, spec: ModelSpec, slot: _Slot) -> Response:
        slot.leave("timeout")
        return self._unavailable(
            spec, ErrorCode.WAKE_TIMEOUT, f"did not wake within {spec.wake.timeout:g}s"
        )

    def _cannot_wake(self, spec: ModelSpec, why: CannotWake) -> Response:
        return error_response(
            503,
            f"The model `{spec.served_name}` cannot be woken ({why.reason}): {why.message}",
            ErrorCode.MODEL_UNAVAILABLE,
            retry_after=self._retry_after,
        )

    def _unavailable(self, spec: ModelSpec, code: str, why: str) -> Response:
        return error_response(
            503,
            f"The model `{spec.served_name}` {why}; retry later.",
            code,
            retry_after=self._retry_after,
        )


async def _relay(replica: Replica, result: Exchange, reply: Reply) -> None:
    """The rest of an answer whose head went to the client: its body is spliced into `reply`
    as it comes; a break after the status line cuts the reply (an incomplete response is the
    only honest signal), and an exchange left incomplete (the client left) is closed."""
    try:
        if not result.complete:  # else finished() would return at once
            await result.finished()
    except UpstreamError as e:
        log.warning("relay from %s broke off: %s", replica.url, e)
        reply.abort()
    finally:
        result.release()


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel and reap a task; a finished one keeps its result (a response is released)."""
    if task.done():
        if not task.cancelled() and task.exception() is None:
            result = task.result()
            if isinstance(result, Exchange):
                result.close()  # never relayed
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        # The task's own cancellation ends here; one aimed at us (the client left while we
        # reaped) must go on, or the handler answers a client that is gone.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
