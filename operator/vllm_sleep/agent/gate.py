"""Admission of inference requests: forwarded, held until the engine is awake, or refused.

All bookkeeping is synchronous between awaits, so it is exact under asyncio: the sleep path
closes the gate and from that instant no request can start, and `inflight` is the number of
requests vLLM is working on for the public port. Held requests are released in arrival order,
and each release takes its in-flight slot *before* the waiter resumes, so a gate that closes
again in between cannot let one slip through uncounted.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from enum import Enum

from ..api.openai_errors import ErrorCode


class Mode(Enum):
    OPEN = "open"  # engine awake: admit
    HOLD = "hold"  # engine not awake (yet): wait for OPEN
    REFUSE = "refuse"  # engine failed: answer 503 at once


class Admission(Enum):
    ADMITTED = "admitted"  # the caller holds one in-flight slot and must release() it
    TIMEOUT = ErrorCode.HOLD_TIMEOUT.value
    FULL = ErrorCode.QUEUE_FULL.value
    REFUSED = ErrorCode.ENGINE_UNAVAILABLE.value


class Gate:
    def __init__(
        self,
        *,
        max_held: int,
        on_edge: Callable[[], None] = lambda: None,
        on_held: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_held = max_held
        # Called on each edge the operator must hear of at once (agent/state.py): the first
        # held request and the last one leaving unadmitted, the busy edge and the idle edge;
        # once per burst, not per request.
        self._on_edge = on_edge
        # Called for every request that starts to wait (after the demand edge): the agent's
        # own wake on request (agent/transitions.py) starts from here when the sleep granted it.
        self._on_held = on_held
        self._clock = clock
        self.mode = Mode.HOLD
        self.inflight = 0
        self._waiters: deque[asyncio.Future[Admission]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self.last_activity: float | None = None  # monotonic
        self.last_abandoned: float | None = None  # monotonic: a client left mid-response

    @property
    def held(self) -> int:
        return len(self._waiters)

    def touch(self) -> None:
        self.last_activity = self._clock()

    def note_abandoned(self) -> None:
        self.last_abandoned = self._clock()

    def open(self) -> None:
        self.mode = Mode.OPEN
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self._take_slot()
                fut.set_result(Admission.ADMITTED)

    def hold(self) -> None:
        self.mode = Mode.HOLD

    def refuse(self) -> None:
        self.mode = Mode.REFUSE
        self._fail_waiters(Admission.REFUSED)

    def shutdown(self) -> None:
        self.refuse()

    def try_admit(self) -> bool:
        """The awake engine's case without a coroutine: True when an in-flight slot was taken
        (the caller must release() it); False when `acquire` must decide (hold or refuse).
        While OPEN nobody waits (open() admitted every waiter), so no queue is jumped."""
        if self.mode is not Mode.OPEN:
            return False
        self.touch()
        self._take_slot()
        return True

    async def acquire(self, hold_timeout: float) -> Admission:
        self.touch()
        if self.mode is Mode.OPEN:
            self._take_slot()
            return Admission.ADMITTED
        if self.mode is Mode.REFUSE:
            return Admission.REFUSED
        if len(self._waiters) >= self._max_held:
            return Admission.FULL
        fut: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if len(self._waiters) == 1:
            self._on_edge()  # the demand edge: a request waits, the operator should wake us
        self._on_held()
        try:
            await asyncio.wait((fut,), timeout=hold_timeout)
        except asyncio.CancelledError:
            self._abandon(fut)
            raise
        if fut.done():
            return fut.result()
        self._abandon(fut)
        return Admission.TIMEOUT

    def release(self) -> None:
        self.inflight -= 1
        self.touch()
        if self.inflight == 0:
            self._idle.set()
            # The idle edge: the operator's idle timer starts here, so it must hear of it
            # (once per burst, not per request).
            self._on_edge()

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in flight; False if `timeout` passed first."""
        if self.inflight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return self.inflight == 0
        return True

    def _take_slot(self) -> None:
        self.inflight += 1
        self._idle.clear()
        if self.inflight == 1:
            # The busy edge, the idle edge's twin: an operator that last saw the engine idle
            # must hear at once that work started, or it may order an idle sleep under a
            # long request (once per burst, not per request).
            self._on_edge()

    def _abandon(self, fut: asyncio.Future[Admission]) -> None:
        if fut.done() and not fut.cancelled() and fut.result() is Admission.ADMITTED:
            self.release()  # released by open() but the waiter went away before running
            return
        fut.cancel()
        try:
            self._waiters.remove(fut)
        except ValueError:
            return
        if not self._waiters:
            # The demand edge's twin: the last held request left (its client hung up, or
            # its hold timed out). The operator must hear it at once, or it may still wake
            # (or evict for) a model nobody is waiting for any more.
            self._on_edge()

    def _fail_waiters(self, outcome: Admission) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(outcome)
