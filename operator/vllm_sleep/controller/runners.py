"""One control loop per ModelDeployment, started and stopped by the object's watch events.

kopf's daemons would run these loops, but kopf blocks the deletion of every object with a daemon
by a finalizer until the daemon has stopped: a PATCH per model when it is created (one of the
fewest requests a model's start costs), another when it is deleted, and a ModelDeployment
deleted while the operator is not running waits until someone removes the finalizer by hand.
Nothing a loop does has to happen before its object is gone: the model's children go with it
(owner references, the garbage collector), and the loop's state is in memory only. So each loop
is a task of its own here, for one object (uid): started by the first event that shows the
object (the watch's initial listing included), stopped by its deletion.

Without the finalizer three things are this module's to get right, which kopf's ordering gave:
- a loop's per-model state (kept by name elsewhere: status writes, caches, metric series) is
  dropped once the loop has ended (`ended`), not when the DELETED event comes: a pass may still
  be running then, and would put it back;
- a model deleted and made again under its name: the old object's events (its DELETED may come
  after the new object's first) stop only the old loop, and the new loop starts once the old
  one has ended and its state was dropped;
- a deletion whose event was never seen (a watch gap: kopf's re-list shows only what exists):
  a loop whose status write finds no object asks (`verify`), and stops if it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Body = Mapping[str, Any]
# (namespace, name, the latest body, whether to stop) -> the loop, until it returns
Run = Callable[[str, str, Callable[[], Body], Callable[[], bool]], Awaitable[None]]

STOP_GRACE_SECONDS = 15.0  # a stopping loop finishes its pass this long before it is cancelled
RESTART_SECONDS = 5.0  # after a loop died of an error it did not handle


@dataclass
class _Runner:
    uid: str
    body: Body
    stopped: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    ending: asyncio.Task[None] | None = field(default=None, repr=False)


class ModelRunners:
    def __init__(
        self,
        run: Run,
        kick: Callable[[Key], None],
        *,
        ended: Callable[[Key], None] = lambda _key: None,
        lookup: Callable[[Key], Awaitable[str | None]] | None = None,
        grace: float = STOP_GRACE_SECONDS,
        restart: float = RESTART_SECONDS,
    ) -> None:
        self._run = run
        self._kick = kick  # wakes a loop up, so it sees that it stops at once
        self._ended = ended  # drops a model's state kept by name, once its loop has ended
        self._lookup = lookup  # the uid of the object under a name now (None: there is none)
        self._grace = grace
        self._restart = restart
        self._runners: dict[Key, _Runner] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._endings: dict[Key, asyncio.Task[None]] = {}  # the last stopped loop's, per key
        self._verifying: set[Key] = set()

    def __contains__(self, key: Key) -> bool:
        return key in self._runners

    def observe(self, event_type: str | None, body: Body) -> None:
        """An event of the object (None: the watch's initial listing)."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        uid = meta.get("uid") or ""
        runner = self._runners.get(key)
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            if runner is None:
                if event_type == "DELETED" and not self._ending(key):
                    self._ended(key)  # no loop ran for it: nothing to wait for
            elif runner.uid == uid:
                self.stop(key)
            # else: the end of an older object of this name; a newer one runs under it
            return
        if runner is not None and runner.uid == uid:
            runner.body = body  # what its next pass reads
            return
        after = self.stop(key) if runner is not None else self._ending(key)
        self._start(key, uid, body, after)

    def stop(self, key: Key) -> asyncio.Task[None] | None:
        """Stop the key's loop: its end (a task), after which its state is dropped."""
        runner = self._runners.pop(key, None)
        if runner is None or runner.task is None:
            return None
        runner.stopped = True
        self._kick(key)
        runner.ending = asyncio.create_task(
            self._end(key, runner.task), name=f"stop {key[0]}/{key[1]}"
        )
        self._stopping.add(runner.ending)
        runner.ending.add_done_callback(self._stopping.discard)
        self._endings[key] = runner.ending
        runner.ending.add_done_callback(functools.partial(self._forget_ending, key))
        return runner.ending

    def _forget_ending(self, key: Key, done: asyncio.Task[None]) -> None:
        """An ended loop's end is not kept (a fleet's deleted models would pile up)."""
        if self._endings.get(key) is done:
            del self._endings[key]

    def verify(self, key: Key) -> None:
        """The key's object may be gone without an event saying so (its status write found
        none): ask the apiserver, and stop the loop if the object is gone or another one."""
        runner = self._runners.get(key)
        if runner is None or self._lookup is None or key in self._verifying:
            return
        self._verifying.add(key)
        lookup = self._lookup

        async def check(uid: str) -> None:
            try:
                now = await lookup(key)
            except Exception as e:  # asked again by the next write that finds nothing
                log.info("looking up %s/%s failed: %s", key[0], key[1], e)
                return
            finally:
                self._verifying.discard(key)
            current = self._runners.get(key)
            if now != uid and current is not None and current.uid == uid:
                log.info("%s/%s is gone (no event said so): stopping its loop", *key)
                self.stop(key)

        task = asyncio.create_task(check(runner.uid), name=f"verify {key[0]}/{key[1]}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Stop every loop and wait until all have ended (the operator stops acting)."""
        for key in list(self._runners):
            self.stop(key)
        while self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)

    def _ending(self, key: Key) -> asyncio.Task[None] | None:
        """The end of the key's last stopped loop, while it is still ending."""
        ending = self._endings.get(key)
        return None if ending is None or ending.done() else ending

    def _start(self, key: Key, uid: str, body: Body, after: asyncio.Task[None] | None) -> None:
        runner = _Runner(uid, body)
        runner.task = asyncio.create_task(
            self._loop(key, runner, after), name=f"model {key[0]}/{key[1]}"
        )
        self._runners[key] = runner

    async def _loop(self, key: Key, runner: _Runner, after: asyncio.Task[None] | None) -> None:
        if after is not None:  # the previous object of this name: its loop ends first
            await asyncio.wait({after})
        namespace, name = key
        while not runner.stopped:
            try:
                await self._run(namespace, name, lambda: runner.body, lambda: runner.stopped)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the control loop of %s/%s failed; restarting it", namespace, name)
            if not runner.stopped:
                await asyncio.sleep(self._restart)

    async def _end(self, key: Key, task: asyncio.Task[None]) -> None:
        """Let the loop end its pass, within the grace period, then cancel it; then drop the
        model's state (a newer object of its name waits for this before its loop starts)."""
        done, _ = await asyncio.wait({task}, timeout=self._grace)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        self._ended(key)
