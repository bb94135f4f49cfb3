"""Requests inside one engine: waiting, running, frozen, aborted, and the pauses that hold them.

Mirrors vLLM's V1 scheduler where it matters for sleep: a pause is PAUSED_NEW (nothing new is
scheduled; running requests continue) or PAUSED_ALL (running requests freeze too). Sleep and
/pause are separate pause sources. Requests are poked (their event set) whenever something they
might wait for changes, so nobody polls.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from dataclasses import dataclass, field


class Pause(enum.IntEnum):
    NONE = 0
    NEW = 1  # PAUSED_NEW: abort / wait
    ALL = 2  # PAUSED_ALL: keep


class EngineDead(Exception):
    """The engine core died while this request was in it (vLLM's EngineDeadError)."""


@dataclass(eq=False)
class SimRequest:
    id: str
    prompt_tokens: int
    max_tokens: int
    state: str = "waiting"  # waiting | running | done
    generated: int = 0
    aborted: bool = False
    garbage: bool = False  # produced by discarded (level-2, not reloaded) weights
    draft_lost: bool = False  # speculated by a draft model that level 2 discarded
    signal: asyncio.Event = field(default_factory=asyncio.Event)


class Scheduler:
    def __init__(self, max_num_seqs: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.requests: dict[str, SimRequest] = {}
        self.sleep_pause = Pause.NONE
        self.api_pause = Pause.NONE
        self.reject_new = False  # 0.33 /pause abort|wait: new requests get 503
        self.dead = False
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        # vLLM's scheduler gauges only update while the core steps: frozen while paused (docs/vllm.md#metrics).
        self._frozen_stats: tuple[int, int] | None = None

    @property
    def pause(self) -> Pause:
        return max(self.sleep_pause, self.api_pause)

    @property
    def running(self) -> int:
        return sum(1 for r in self.requests.values() if r.state == "running")

    @property
    def waiting(self) -> int:
        return sum(1 for r in self.requests.values() if r.state == "waiting")

    def stats(self) -> tuple[int, int]:
        """(running, waiting) as the Prometheus gauges show them."""
        return self._frozen_stats or (self.running, self.waiting)

    def new_request(self, prompt_tokens: int, max_tokens: int) -> SimRequest:
        req = SimRequest(f"req-{next(self._ids)}", prompt_tokens, max_tokens)
        self.requests[req.id] = req
        return req

    def finish(self, req: SimRequest) -> None:
        req.state = "done"
        self.requests.pop(req.id, None)
        self.poke()

    def set_pause(self, source: str, pause: Pause) -> None:
        if pause and not self.pause:
            self._frozen_stats = (self.running, self.waiting)
        if source == "sleep":
            self.sleep_pause = pause
        else:
            self.api_pause = pause
        if not self.pause:
            self._frozen_stats = None
        self.poke()

    def abort(self, *, running: bool = True, waiting: bool = True) -> int:
        n = 0
        for r in self.requests.values():
            if (running and r.state == "running") or (waiting and r.state == "waiting"):
                r.aborted = True
                n += 1
        self.poke()
        return n

    def kill(self) -> None:
        self.dead = True
        self.poke()

    def poke(self) -> None:
        for r in self.requests.values():
            r.signal.set()
        self._changed.set()

    async def wait_admitted(self, req: SimRequest) -> None:
        """Wait until `req` may run: not paused, a free seat (max_num_seqs), or aborted/dead."""
        while True:
            if self.dead:
                raise EngineDead()
            if req.aborted:
                return
            if not self.pause and self.running < self.max_num_seqs:
                req.state = "running"
                return
            req.signal.clear()
            await req.signal.wait()

    async def wait_steppable(self, req: SimRequest) -> None:
        """Between tokens: frozen while PAUSED_ALL (sleep/pause mode=keep)."""
        while True:
            if self.dead:
                raise EngineDead()
            if req.aborted or self.pause < Pause.ALL:
                return
            req.signal.clear()
            await req.signal.wait()

    async def wait_no_running(self) -> None:
        """mode=wait: until every running request has finished (new ones stay queued)."""
        while self.running and not self.dead:
            self._changed.clear()
            await self._changed.wait()
