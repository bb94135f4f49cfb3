"""Writes of a latest-wins value per key (a model's status), at most one per window per key.

A model going through start-up changes its status several times within a second (its pod is
created, scheduled, its agent answers, its engine loads, it is pre-warmed asleep): each change
written as it happens is a write to the apiserver and a watch event to every watcher of the
object, the operator itself included, for a state the next write supersedes within
milliseconds. The first write of a quiet key goes out at once (a status change is seen without
delay); writes that follow within `window` seconds are coalesced, and the latest of them is
written when the window ends. So a transient state shorter than the window may never appear in
the status (the model's Events still say what happened), and the final state always does.

With `defer_first` (a predicate of the value), a first value it accepts of a
key this process never wrote is held until a value it does not accept follows (then written a
window after the first, or at once if that passed; values it accepts meanwhile replace the held
one) or, if none does, for `first_hold` seconds: a new model's first statuses ("Pending, no pods
yet", from the pass that creates its pod; "Starting", from the passes that see the pod scheduled
and its containers start) are superseded by the pass that hears its agent, which on a busy
operator comes later than one window; written on their own they were a write per model each for
nothing.

With `slot` (a connection's turn, `lanes.PriorityGate.slot`), a write waits for its turn
before it takes the key's latest value: a status queued behind a fleet's creates goes out as
the newest by the time it is sent (a model that went from Loading to Asleep meanwhile is written
once, Asleep), not as the value it queued with followed by each one after it.

A value submitted with `held=True` is known to be superseded already (the pass that computed
it started a transition that changes it): a quiet key does not write it at once but as if it had
just written, so a value that follows within the window replaces it and only the latest is
written when the window ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

PRUNE_EVERY = 1024  # submits between forgetting the write times of quiet keys


class Coalescer(Generic[K, V]):
    def __init__(
        self,
        write: Callable[[K, V], Awaitable[None]],
        window: float,
        clock: Callable[[], float] = time.monotonic,
        defer_first: Callable[[V], bool] | None = None,
        first_hold: float = 10.0,
        slot: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self._write = write
        self._slot = slot or contextlib.nullcontext
        # Told of a key whose write found no object (404): it may be gone unseen (a watch gap).
        self.gone: Callable[[K], None] | None = None
        self._window = window
        self._clock = clock
        self._defer_first = defer_first
        self._first_hold = max(first_hold, window)
        self._known: set[K] = set()  # keys submitted before: `defer_first`
        self._holding: dict[K, float] = {}  # new keys' first values, held: when submitted
        self._last: dict[K, float] = {}  # when the key's last write started
        self._pending: dict[K, V] = {}  # the value to write when the key's window ends
        self._flushers: dict[K, asyncio.Task[None]] = {}
        self._locks: dict[K, asyncio.Lock] = {}  # one write per key at a time, in order
        self._submits = 0

    async def submit(self, key: K, value: V, *, held: bool = False) -> None:
        """Keep `value` as the key's latest and return: its task writes it at once if the key
        was quiet for a window and it is not `held`, otherwise when the window ends (retried
        after each failed try until it lands or a newer value replaces it). The caller never
        waits for the write: a model's pass that waited for its status PATCH held back the
        pass that follows (a pre-warm's order, once its engine loaded) for as long as the
        operator's API connections were busy with other writes (14 s in a 500-model bring-up,
        while the pods were being created). With no window every value is written before
        `submit` returns."""
        self._submits += 1
        if self._submits % PRUNE_EVERY == 0:
            self._prune()
        now = self._clock()
        defers = self._defer_first
        first = defers is not None and key not in self._known
        if first:
            self._known.add(key)
        if first and self._window > 0 and defers is not None and defers(value):
            self._holding[key] = now
            # As if written so that its window ends `first_hold` from now.
            self._last[key] = now + self._first_hold - self._window
        elif key in self._holding:
            if defers is not None and defers(value):
                self._pending[key] = value  # no more worth a write than the first: held on
                return
            # A value worth writing: the hold ends a window after the first (a held flusher is
            # still asleep, never writing: it stops holding before its write).
            self._last[key] = self._holding.pop(key)
            self._pending.pop(key, None)  # superseded by this one
            holder = self._flushers.pop(key, None)
            if holder is not None:
                holder.cancel()
        if self._window <= 0:
            async with self._lock(key), self._slot():
                await self._write(key, value)
            return
        quiet = now - self._last.get(key, -math.inf) >= self._window
        if quiet and key not in self._flushers:
            # Due at once (its task writes it: the caller does not wait for the apiserver), or,
            # held, as if written now.
            self._last[key] = now if held else now - self._window
        self._pending[key] = value
        if key not in self._flushers:
            self._flushers[key] = asyncio.create_task(self._flush(key), name=f"write {key}")

    def forget(self, key: K) -> None:
        """The key's object is gone: a new one of the same name starts afresh, and nothing
        queued for the old one is written onto it."""
        self._known.discard(key)
        self._holding.pop(key, None)
        self._last.pop(key, None)
        self._pending.pop(key, None)
        flusher = self._flushers.pop(key, None)
        if flusher is not None:
            flusher.cancel()

    def pending(self, key: K) -> V | None:
        return self._pending.get(key)

    async def drain(self) -> None:
        """Wait until every coalesced value was written (tests; a clean shutdown)."""
        while self._flushers:
            await asyncio.gather(*list(self._flushers.values()), return_exceptions=True)

    def _lock(self, key: K) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _flush(self, key: K) -> None:
        try:
            while key in self._pending:
                delay = self._last.get(key, -math.inf) + self._window - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._holding.pop(key, None)  # no second value came: the first is written
                value = None
                try:
                    async with self._lock(key), self._slot():
                        # The window counts from the write, not from the wait for its turn.
                        self._last[key] = self._clock()
                        value = self._pending.pop(key)  # the latest, now that it is its turn
                        await self._write(key, value)
                except ApiException as e:
                    if e.status == 404:  # the object is gone: nothing to say about it
                        if self.gone is not None:
                            self.gone(key)
                        continue
                    log.warning("write of %s failed (%s); retrying", key, e.status)
                    if value is not None:
                        self._pending.setdefault(key, value)
                except Exception:
                    log.warning("write of %s failed; retrying", key, exc_info=True)
                    if value is not None:
                        self._pending.setdefault(key, value)
        finally:
            if self._flushers.get(key) is asyncio.current_task():
                del self._flushers[key]

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, t in self._last.items() if now - t >= self._window]:
            if key not in self._flushers:
                del self._last[key]
                lock = self._locks.get(key)
                if lock is not None and not lock.locked():
                    del self._locks[key]
