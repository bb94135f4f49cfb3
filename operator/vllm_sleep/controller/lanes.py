"""Which of the operator's API requests go first when its connections are all busy.

The operator's client keeps a few connections to the apiserver (`kube.API_CONNECTIONS`); when
more requests than that are in flight, the rest wait. aiohttp serves its waiters first come,
first served, so in a fleet's bring-up a model's status write ("Asleep") waited behind every pod
and Service create issued before it: in a 1,000-model bring-up pod creates waited a median 35 s
for a connection and status writes up to 75 s, while the apiserver answered each in under a
second (docs/operator.md, "API requests under load"). The gate below hands a freed connection
to the waiter of the most urgent lane, first come first served within a lane. When nothing
waits, it costs a counter: a request goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator
from enum import IntEnum


class Lane(IntEnum):
    """Lower goes first."""

    # Pods' creates and deletes, and their ResourceClaims: an engine's load starts when its
    # pod is created, so these lead the longest chain of all. A model's pod create is its
    # pass's next request after its Secret and Lease, so pods going first keeps the apiserver's
    # slowest create busy from the first model on instead of after every model's Secret.
    PODS = 0
    # A model's Secret and Lease (created, or read after a 409): what its pods need.
    START = 1
    # Status writes, patches, reads: what users and the operator's own passes read next.
    NORMAL = 2
    # What nothing waits on: a model's Service (its endpoints are the awake replicas, and a
    # starting model has none; the gateway routes by its own pod watch).
    BACKGROUND = 3


class PriorityGate:
    """At most `capacity` holders at once; a freed slot goes to the most urgent waiter."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._free = capacity
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, f in self._waiters if not f.done())

    @contextlib.asynccontextmanager
    async def slot(self, lane: Lane) -> AsyncIterator[None]:
        await self._acquire(lane)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, lane: Lane) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (int(lane), next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed the slot as it was cancelled
                self._release()
            raise

    def _release(self) -> None:
        while self._waiters:
            *_, fut = heapq.heappop(self._waiters)
            if not fut.done():  # a cancelled waiter's future is done: skipped
                fut.set_result(None)  # the slot passes on without coming free
                return
        self._free += 1
