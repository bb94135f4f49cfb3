"""One control loop per ModelDeployment, started and stopped by the object's watch events.

kopf's daemons would run these loops, but kopf blocks the deletion of every object with a daemon
by a finalizer until the daemon has stopped: a PATCH per model when it is created (one of the
fewest requests a model's start costs), another when it is deleted, and a ModelDeployment
deleted while the operator is not running waits until someone removes the finalizer by hand.
Nothing a loop does has to happen before its object is gone: the model's children go with it
(owner references, the garbage collector), and the loop's state is in memory only. So each loop
is a task of its own here, keyed by the object's uid: started by the first event that shows the
object (the watch's initial listing included), stopped by its deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class ModelRunners:
    def __init__(
        self,
        run: Run,
        kick: Callable[[Key], None],
        *,
        grace: float = STOP_GRACE_SECONDS,
        restart: float = RESTART_SECONDS,
    ) -> None:
        self._run = run
        self._kick = kick  # wakes a loop up, so it sees that it stops at once
        self._grace = grace
        self._restart = restart
        self._runners: dict[Key, _Runner] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def __contains__(self, key: Key) -> bool:
        return key in self._runners

    def observe(self, event_type: str | None, body: Body) -> None:
        """An event of the object (None: the watch's initial listing)."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        uid = meta.get("uid") or ""
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self.stop(key)
            return
        runner = self._runners.get(key)
        if runner is not None and runner.uid == uid:
            runner.body = body  # what its next pass reads
            return
        if runner is not None:  # deleted and made again under its name: a new object
            self.stop(key)
        self._start(key, uid, body)

    def stop(self, key: Key) -> None:
        runner = self._runners.pop(key, None)
        if runner is None or runner.task is None:
            return
        runner.stopped = True
        self._kick(key)
        ending = asyncio.create_task(self._end(runner.task), name=f"stop {key[0]}/{key[1]}")
        self._stopping.add(ending)
        ending.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Stop every loop and wait until all have ended (the operator stops acting)."""
        for key in list(self._runners):
            self.stop(key)
        while self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)

    def _start(self, key: Key, uid: str, body: Body) -> None:
        runner = _Runner(uid, body)
        runner.task = asyncio.create_task(self._loop(key, runner), name=f"model {key[0]}/{key[1]}")
        self._runners[key] = runner

    async def _loop(self, key: Key, runner: _Runner) -> None:
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

    async def _end(self, task: asyncio.Task[None]) -> None:
        """Let the loop end its pass, within the grace period, then cancel it."""
        done, _ = await asyncio.wait({task}, timeout=self._grace)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
