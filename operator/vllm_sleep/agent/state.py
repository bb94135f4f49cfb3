"""The agent's view of its engine, with a version number for the operator's long-poll.

Every change the operator must react to bumps `version` and wakes long-pollers: a state change,
held requests appearing (that is demand: the operator should wake the engine) or all leaving
unadmitted (their clients hung up or their holds timed out: the demand is gone), work starting
(in-flight leaving zero: the engine is no longer idle) and the engine going idle (in-flight back
to zero: the idle timer starts). Other activity and in-flight changes do not bump it; they
would turn the long-poll into a busy loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..api.agent_protocol import AgentState, WakeOrigin

_WOKEN = frozenset({AgentState.WAKING, AgentState.AWAKE})


class StateBoard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.state = AgentState.LOADING
        self.level: int | None = None  # sleep level while asleep (None: awake or unknown)
        self.since = clock()
        self.version = 1
        self.epoch = 0  # counts state changes only (version also counts demand signals)
        self.engine_alive = False
        self.engine_version: str | None = None
        self.last_error: str | None = None
        # The last measured sleep (agent/residual.py): what it freed, what stayed on the device.
        self.freed_bytes: int | None = None
        self.residual_bytes: int | None = None
        # The operator's grant of the current sleep: a held request may wake the engine. Only
        # while asleep: any other state drops it, so each wake consumes it.
        self.wake_grant = False
        # Who the wake behind WAKING/AWAKE is accounted to (its starter, or the operator once
        # its /wake joined it), and when it started (unix seconds, read once); else None.
        self.woken_by: WakeOrigin | None = None
        self.wake_started: float | None = None
        self._changed = asyncio.Event()

    def set(self, state: AgentState, *, level: int | None = None) -> None:
        if state is self.state and level == self.level:
            return
        if state is not AgentState.ASLEEP:
            self.wake_grant = False
        if state not in _WOKEN:
            self.woken_by = self.wake_started = None
        if state is not self.state:
            self.since = self._clock()
        self.state, self.level = state, level
        self.epoch += 1
        self.bump()

    def bump(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_change(self, version: int, timeout: float) -> None:
        """Return when `version` is stale, or after `timeout` seconds."""
        if version != self.version or timeout <= 0:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
